// The command tree. The root command is the daemon itself (flanneld has no `run` verb, and a unit
// file says `flanneld-xdp --iface eth0`); the inspection and cleanup verbs are subcommands.

import ArgumentParser
import Dataplane
import Glibc
import RuntimeSupport
import Synchronization

public enum FlannelDaemonVersion {
    public static let string = "0.1.0"
}

public struct FlanneldXDP: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "flanneld-xdp",
        abstract: "flannel's node agent with a BPF VXLAN data path: same flags, files, etcd keys and wire as flanneld.",
        usage: """
            flanneld-xdp [<options>]
            flanneld-xdp <subcommand> [<options>]
            """,
        discussion: """
            Flags take flanneld's forms too: -iface=eth0, -iface eth0, --iface=eth0, --iface eth0; booleans as \
            --ip-masq or --ip-masq=true. Every flag can also come from FLANNELD_<NAME> (e.g. FLANNELD_IFACE, \
            FLANNELD_ETCD_ENDPOINTS); a flag on the command line beats its variable.
            """,
        version: FlannelDaemonVersion.string,
        subcommands: [Cleanup.self, Status.self, Peers.self, Stats.self, Monitor.self, DoctorCommand.self]
    )

    @OptionGroup public var options: FlannelOptions

    public init() {}

    public func run() async throws {
        try await Daemon.run(options)
    }

    /// What the Go-style normaliser must know: every long flag of each command and whether it takes a value.
    public static let flagNormalizer = GoFlagNormalizer(rootFlags: rootFlags, subcommandFlags: subcommandFlags)

    static let rootFlags: [GoFlagSpec] = [
            GoFlagSpec("iface"), GoFlagSpec("iface-regex"), GoFlagSpec("iface-can-reach"), GoFlagSpec("public-ip"),
            GoFlagSpec("public-ipv6"),
            GoFlagSpec("etcd-endpoints"), GoFlagSpec("etcd-prefix"), GoFlagSpec("etcd-keyfile"),
            GoFlagSpec("etcd-certfile"), GoFlagSpec("etcd-cafile"), GoFlagSpec("etcd-username"),
            GoFlagSpec("etcd-password"), GoFlagSpec("etcd-api"), GoFlagSpec("etcd-start-timeout", .integer),
            GoFlagSpec("subnet-file"), GoFlagSpec("subnet-lease-renew-margin", .integer), GoFlagSpec("subnet-lease-ttl", .integer),
            GoFlagSpec("ip-masq", .boolean), GoFlagSpec("last-known-state"),
            GoFlagSpec("dataplane"), GoFlagSpec("bpffs"), GoFlagSpec("bpf-object"), GoFlagSpec("reconcile-interval", .integer),
            GoFlagSpec("inner-source-check", .booleanDefaultTrue), GoFlagSpec("fast-path", .booleanDefaultTrue),
            GoFlagSpec("iptables-resync", .integer), GoFlagSpec("iptables-forward-rules", .booleanDefaultTrue),
            GoFlagSpec("ip-masq-fully-random-disable", .boolean), GoFlagSpec("ip-blackhole-route", .boolean),
            GoFlagSpec("healthz-ip"), GoFlagSpec("healthz-port", .integer), GoFlagSpec("metrics-port", .integer),
            GoFlagSpec("metrics-per-peer", .boolean),
            GoFlagSpec("log-level"), GoFlagSpec("log-format"),
            GoFlagSpec("v", .klogLevel), GoFlagSpec("vmodule", .klogModules), GoFlagSpec("log_backtrace_at", .klogTraceLocation),
            GoFlagSpec("kube-subnet-mgr", .boolean), GoFlagSpec("kube-api-url"), GoFlagSpec("kube-annotation-prefix"),
            GoFlagSpec("kubeconfig-file"), GoFlagSpec("net-config-path"),
            GoFlagSpec("set-node-network-unavailable", .booleanDefaultTrue),
            GoFlagSpec("version", .boolean, fromEnvironment: false), GoFlagSpec("help", .boolean, fromEnvironment: false),
        ]

    static let subcommandFlags: [String: [GoFlagSpec]] = [
            "cleanup": [
                GoFlagSpec("keep-kernel-path", .boolean), GoFlagSpec("bpffs"), GoFlagSpec("log-level"), GoFlagSpec("log-format"),
                GoFlagSpec("help", .boolean, fromEnvironment: false), GoFlagSpec("version", .boolean, fromEnvironment: false),
            ],
            "status": [
                GoFlagSpec("bpffs"), GoFlagSpec("subnet-file"), GoFlagSpec("state-file", fromEnvironment: false),
                GoFlagSpec("json", .boolean, fromEnvironment: false),
                GoFlagSpec("help", .boolean, fromEnvironment: false), GoFlagSpec("version", .boolean, fromEnvironment: false),
            ],
            "peers": [
                GoFlagSpec("bpffs"), GoFlagSpec("json", .boolean, fromEnvironment: false),
                GoFlagSpec("help", .boolean, fromEnvironment: false), GoFlagSpec("version", .boolean, fromEnvironment: false),
            ],
            // The daemon's own flags (and FLANNELD_* variables): doctor checks what the daemon will use.
            "doctor": rootFlags + [GoFlagSpec("json", .boolean, fromEnvironment: false)],
            "stats": [
                GoFlagSpec("bpffs"), GoFlagSpec("watch", .boolean, fromEnvironment: false),
                GoFlagSpec("interval", fromEnvironment: false), GoFlagSpec("count", fromEnvironment: false),
                GoFlagSpec("json", .boolean, fromEnvironment: false),
                GoFlagSpec("help", .boolean, fromEnvironment: false), GoFlagSpec("version", .boolean, fromEnvironment: false),
            ],
        ]

    /// The verbs besides the daemon itself. They are parsed on their own, not through the root: the
    /// root carries the daemon's flags, and argument-parser lets a parent's flags appear after a
    /// subcommand, so `cleanup --bpffs X` would fill the root's --bpffs and `cleanup --iface eth0`
    /// would pass silently.
    public static let verbs: [String: any AsyncParsableCommand.Type] = [
        "cleanup": Cleanup.self, "status": Status.self, "peers": Peers.self, "stats": Stats.self,
        "doctor": DoctorCommand.self, "monitor": Monitor.self,
    ]

    /// Parses Go-style arguments plus `FLANNELD_*` variables into a command (throws argument-parser errors).
    public static func parseGoStyle(_ arguments: [String], environment: [String: String]) throws -> any ParsableCommand {
        try parseGoStyleWithNotes(arguments, environment: environment).command
    }

    /// `parseGoStyle`, plus the FLANNELD_* values that were ignored (see GoFlagNormalizer).
    public static func parseGoStyleWithNotes(_ arguments: [String], environment: [String: String]) throws
        -> (command: any ParsableCommand, ignoredEnvironment: [String]) {
        let normalized = try flagNormalizer.normalizeWithNotes(arguments, environment: environment)
        if let first = normalized.arguments.first, let verb = verbs[first] {
            return (try verb.parseAsRoot(Array(normalized.arguments.dropFirst())), normalized.ignoredEnvironment)
        }
        return (try parseAsRoot(normalized.arguments), normalized.ignoredEnvironment)
    }

    /// The program's entry: normalise, parse, run, and exit non-zero with a message on any error.
    public static func entry() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        // argument-parser's own tooling requests (shell completion scripts, the help dump the man
        // page is made from) are not flags of flanneld's: they go to argument-parser as they are.
        if let first = arguments.first, toolingRequests.contains(where: { first == $0 || first.hasPrefix($0 + "=") }) {
            await main(arguments)
            return
        }
        let normalized: [String]
        do {
            let result = try flagNormalizer.normalizeWithNotes(arguments, environment: processEnvironment())
            normalized = result.arguments
            StartupNotes.ignoredEnvironment.withLock { $0 = result.ignoredEnvironment }
        } catch {
            exit(withError: error)
        }
        guard let first = normalized.first, let verb = verbs[first] else {
            // A bad value that came from FLANNELD_<NAME> is reported with the variable's name too:
            // argument-parser only knows the flag it was turned into.
            do {
                _ = try parseAsRoot(normalized)
            } catch {
                let code = exitCode(for: error)
                if code != .success, let variable = environmentSource(of: message(for: error), arguments: arguments,
                                                                      environment: processEnvironment()) {
                    var standardError = StandardError()
                    print("Error: \(message(for: error)) (the value comes from \(variable))", to: &standardError)
                    Glibc.exit(code.rawValue)
                }
            }
            await main(normalized)
            return
        }
        let rest = Array(normalized.dropFirst())
        if rest.contains("--help") || rest.contains("-h") {
            print(helpMessage(for: verb))
            Glibc.exit(0)
        }
        do {
            var command = try verb.parseAsRoot(rest)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let code as ExitCode {
            // A verb's answer, not a failure (`status` of a stopped daemon, `doctor` with findings):
            // it has printed what it has to say.
            Glibc.exit(code.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(verb.fullMessage(for: error))
            } else {
                var standardError = StandardError()
                let hint = code == .validationFailure ? "\nSee 'flanneld-xdp \(first) --help'." : ""
                print("Error: \(message(for: error))\(hint)", to: &standardError)
            }
            Glibc.exit(code.rawValue)
        }
    }

    /// argument-parser's built-in requests that `entry` passes through unnormalised.
    static let toolingRequests = ["--generate-completion-script", "--experimental-dump-help"]

    /// `FLANNELD_<NAME>="value"` when `message` is about a root flag that the command line did not give
    /// and the environment filled, else nil.
    static func environmentSource(of message: String, arguments: [String], environment: [String: String]) -> String? {
        for spec in flagNormalizer.rootFlags where spec.fromEnvironment && spec.kind.takesValue {
            guard let value = environment[spec.environmentName], !value.isEmpty else { continue }
            let onCommandLine = arguments.contains { arg in
                let bare = arg.drop { $0 == "-" }
                return bare == spec.name[...] || bare.hasPrefix(spec.name + "=")
            }
            if !onCommandLine && (message.contains("'--\(spec.name) ") || message.contains("--\(spec.name)=")
                                  || message.contains("'--\(spec.name)'")) {
                return "\(spec.environmentName)=\"\(value)\""
            }
        }
        return nil
    }

    /// The process environment without Foundation.
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") {
                result[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
            cursor += 1
        }
        return result
    }
}

/// What the command line's processing has to tell the daemon's log, which does not exist yet when
/// the arguments are parsed: the FLANNELD_* values that were ignored. Daemon.run logs them.
enum StartupNotes {
    static let ignoredEnvironment = Mutex<[String]>([])
}

struct StandardError: TextOutputStream {
    mutating func write(_ text: String) {
        _ = SystemCall.writeAll(STDERR_FILENO, Array(text.utf8))
    }
}

public struct CommonInspectionOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("bpffs"), help: "bpffs mount under which the BPF maps and programs are pinned.")
    public var bpffs: String = "/sys/fs/bpf"

    public init() {}
}

public struct Cleanup: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Remove what flanneld-xdp set up on this node (BPF programs, pins, the flannel.<VNI> device, its routes, the masquerade table, the FORWARD accepts, the blackhole route) and nothing else.",
        discussion: "The lease in etcd is left alone: it expires by its TTL or is reused when the node comes back. With --keep-kernel-path the FORWARD accepts and the blackhole route stay too: they are flanneld's own rules, spelled as it spells them.",
        version: FlannelDaemonVersion.string
    )

    @Flag(name: .customLong("keep-kernel-path"),
          help: "Detach the BPF programs and remove the pins, but keep flannel.<VNI> and the kernel routes so stock flanneld can take the node over without a gap.")
    public var keepKernelPath: Bool = false

    @OptionGroup public var inspection: CommonInspectionOptions
    @OptionGroup(title: "Logging") public var logging: LoggingOptions

    public init() {}

    public func run() async throws {
        // Our masquerade table goes too (--ip-masq); it is ours alone, so nothing else is touched.
        // The FORWARD accepts (iptables' FLANNEL-FWD and FORWARD's jump to it) and the blackhole
        // route go unless stock flanneld is to take over (--keep-kernel-path), which keeps and
        // adopts them: removing them first would drop forwarded traffic under Docker's DROP policy.
        var failures: [any Error] = []
        do { try Masquerade.remove() } catch { failures.append(error) }
        if !keepKernelPath {
            do { try ForwardRules.remove() } catch { failures.append(error) }
        }
        try await Daemon.cleanup(bpffs: inspection.bpffs, keepKernelPath: keepKernelPath, logLevel: logging.logLevel,
                                 logFormat: logging.logFormat)
        if let first = failures.first { throw first }
    }
}

public struct Status: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Show the data path in use and why, interface, subnet, lease, etcd, attached programs and maps.",
        discussion: """
            Reads the daemon's state file (next to --subnet-file) and the kernel: the pins under --bpffs and the \
            programs attached in flanneld-xdp's slots. Works while the daemon runs and after it stopped. Exit \
            status: 0 the daemon runs and is ready, 1 it runs but is not ready (degraded), 3 it does not run.
            """,
        version: FlannelDaemonVersion.string
    )
    @Option(name: .customLong("subnet-file"), help: "The daemon's --subnet-file; its state file sits beside it.")
    public var subnetFile: String = "/run/flannel/subnet.env"
    @Option(name: .customLong("state-file"), help: "Read this state file instead of the one beside --subnet-file.")
    public var stateFile: String?
    @Flag(name: .customLong("json"), help: "Print JSON for scripts.")
    public var json: Bool = false
    @OptionGroup public var inspection: CommonInspectionOptions
    public init() {}
    public func run() async throws {
        let (text, status) = InspectionCommands.statusWithExitStatus(bpffs: inspection.bpffs, subnetFile: subnetFile,
                                                                      stateFile: stateFile, json: json)
        print(text, terminator: "")
        if status != 0 { throw ExitCode(status) }
    }
}

public struct Peers: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "List the peers in the pinned BPF maps: subnet, node IP, VTEP MAC, decap acceptance, packets and bytes.",
        discussion: """
            Reads the maps pinned under --bpffs; works while the daemon runs and after it stopped. TX counts what \
            BPF encapsulated to a peer node, RX what decap accepted from it; packets left to the kernel path are \
            not included (see `flanneld-xdp stats`).
            """,
        version: FlannelDaemonVersion.string
    )
    @Flag(name: .customLong("json"), help: "Print JSON for scripts.")
    public var json: Bool = false
    @OptionGroup public var inspection: CommonInspectionOptions
    public init() {}
    public func run() async throws {
        print(try InspectionCommands.peers(bpffs: inspection.bpffs, json: json), terminator: "")
    }
}

public struct Stats: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Show the BPF data path counters, drop reasons by name.",
        discussion: "Counters are per-CPU in the pinned map fxdp_counters_v2, summed here; they survive daemon restarts.",
        version: FlannelDaemonVersion.string
    )
    @Flag(name: .customLong("watch"), help: "Redraw every --interval seconds with rates, like top (Ctrl-C stops).")
    public var watch: Bool = false
    @Option(name: .customLong("interval"), help: "Seconds between redraws with --watch.")
    public var interval: Double = 1
    @Option(name: .customLong("count"), help: "With --watch: stop after this many redraws (0: until interrupted).")
    public var count: Int = 0
    @Flag(name: .customLong("json"), help: "Print JSON for scripts.")
    public var json: Bool = false
    @OptionGroup public var inspection: CommonInspectionOptions
    public init() {}
    public func validate() throws {
        guard interval >= 0.1 && interval <= 3600 else { throw ValidationError("--interval=\(interval): give 0.1 to 3600 seconds") }
        guard count >= 0 else { throw ValidationError("--count=\(count): give 0 (forever) or more") }
        if watch && json { throw ValidationError("--watch and --json do not go together: run --json in a loop instead") }
    }
    public func run() async throws {
        if watch {
            try InspectionCommands.watchStats(bpffs: inspection.bpffs, interval: interval, count: count) { print($0, terminator: "") }
        } else {
            print(try InspectionCommands.stats(bpffs: inspection.bpffs, json: json), terminator: "")
        }
    }
}

public struct DoctorCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check that this host can run flanneld-xdp as configured, and say how to fix what is not.",
        discussion: """
            Takes the daemon's flags and FLANNELD_* variables (e.g. `flanneld-xdp doctor -etcd-endpoints=… \
            $FLANNEL_OPTIONS`) and checks, changing nothing: the kernel (version, BTF, BPF netfilter links, XDP and \
            TC program types), this process's capabilities, the bpffs mount, pins of another map layout, rp_filter, \
            the MTUs, nft and iptables, and each etcd endpoint (reachable, TLS, the network config). Exit status: \
            0 nothing to fix, 1 warnings, 2 errors.
            """,
        version: FlannelDaemonVersion.string
    )
    @OptionGroup public var options: FlannelOptions
    @Flag(name: .customLong("json"), help: "Print JSON for scripts.")
    public var json: Bool = false
    public init() {}
    public func run() async throws {
        let report = await Doctor.run(options)
        print(json ? report.json.text + "\n" : report.text, terminator: "")
        if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
    }
}

public struct Monitor: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Print packets the BPF data path drops, as they happen: time, reason, interface, addresses, VNI, inner addresses.",
        discussion: """
            The programs sample a dropped packet into a ring buffer only while a monitor runs (it renews their \
            deadline every second; a monitor that dies stops the sampling within 3 s) and at most --rate events \
            per second and CPU, so a flood costs little and nothing is sampled when nobody listens. Every drop is \
            counted either way (`flanneld-xdp stats`). One monitor at a time sees every event: two running \
            monitors split them. Ctrl-C stops.
            """,
        version: FlannelDaemonVersion.string
    )
    @Flag(name: .customLong("json"), help: "One JSON object per line.")
    public var json: Bool = false
    @Option(name: .customLong("rate"), help: "Events per second and CPU the programs write at most; the rest are only counted.")
    public var rate: Int = 100
    @Option(name: .customLong("count"), help: "Stop after this many events (0: until interrupted).")
    public var count: Int = 0
    @Option(name: .customLong("duration"), help: "Stop after this many seconds (0: until interrupted).")
    public var duration: Double = 0
    @OptionGroup public var inspection: CommonInspectionOptions
    public init() {}
    public func validate() throws {
        guard rate >= 1 && rate <= 100_000 else { throw ValidationError("--rate=\(rate): give 1 to 100000 events per second") }
        guard count >= 0 else { throw ValidationError("--count=\(count): give 0 (no limit) or more") }
        guard duration >= 0 else { throw ValidationError("--duration=\(duration): give 0 (no limit) or more seconds") }
    }
    public func run() async throws {
        // Straight to fd 1: each event is seen as it happens, also through a pipe (print buffers).
        try DropMonitor.run(bpffs: inspection.bpffs, json: json, eventsPerSecond: UInt32(rate), count: count,
                            duration: duration > 0 ? duration : nil) { _ = SystemCall.writeAll(STDOUT_FILENO, Array($0.utf8)) }
    }
}
