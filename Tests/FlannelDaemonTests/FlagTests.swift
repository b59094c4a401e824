import ArgumentParser
import Dataplane
import FlannelDaemon
import Glibc
import NetTypes
import Testing

/// Parses like the binary does (Go forms + env) and returns the root command's options.
private func parseRun(_ arguments: [String], env: [String: String] = [:]) throws -> FlannelOptions {
    let command = try FlanneldXDP.parseGoStyle(arguments, environment: env)
    let root = try #require(command as? FlanneldXDP, "parsed \(type(of: command)), expected the root command")
    return root.options
}

/// The message and exit code argument-parser would print for arguments that must fail.
private func failure(_ arguments: [String], env: [String: String] = [:]) -> (message: String, code: Int32) {
    do {
        _ = try FlanneldXDP.parseGoStyle(arguments, environment: env)
        return ("parsed without error", 0)
    } catch {
        return (FlanneldXDP.fullMessage(for: error), FlanneldXDP.exitCode(for: error).rawValue)
    }
}

extension DaemonSuite {
@Suite("Flags: flanneld's spellings, Go forms and FLANNELD_* environment")
struct FlagTests {
    @Test("defaults match flanneld's")
    func defaults() throws {
        let o = try parseRun([])
        #expect(o.interface.iface.isEmpty)
        #expect(o.interface.ifaceRegex.isEmpty)
        #expect(o.interface.publicIP == nil)
        #expect(o.interface.publicIPv6 == nil)
        #expect(o.etcd.endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379")
        #expect(o.etcd.endpointList == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"])
        #expect(o.etcd.prefix == "/coreos.com/network")
        #expect(o.etcd.api == .auto)
        #expect(o.subnet.subnetFile == "/run/flannel/subnet.env")
        #expect(o.subnet.subnetLeaseRenewMargin == 60)
        #expect(o.subnet.subnetLeaseTTL == 24 * 3600)
        #expect(o.subnet.ipMasq == false)
        #expect(o.serving.healthzIP == IPv4Address(0, 0, 0, 0))
        #expect(o.serving.healthzPort == 0)
        #expect(o.serving.metricsPort == 0)
        #expect(o.dataplane.dataplane == .auto)
        #expect(o.dataplane.bpffs == "/sys/fs/bpf")
        #expect(o.logging.logLevel == .info)
    }

    @Test("all four Go forms of a value flag", arguments: [
        ["-iface=eth0"], ["-iface", "eth0"], ["--iface=eth0"], ["--iface", "eth0"],
    ])
    func goForms(_ arguments: [String]) throws {
        #expect(try parseRun(arguments).interface.iface == ["eth0"])
    }

    @Test("boolean forms", arguments: [
        (["-ip-masq"], true), (["--ip-masq"], true), (["--ip-masq=true"], true), (["-ip-masq=1"], true),
        (["--ip-masq=false"], false), (["-ip-masq=F"], false), ([], false), (["--ip-masq", "--ip-masq=false"], false),
    ])
    func booleans(_ arguments: [String], _ expected: Bool) throws {
        #expect(try parseRun(arguments).subnet.ipMasq == expected)
    }

    @Test("repeatable --iface and --iface-regex keep their order")
    func repeatable() throws {
        let o = try parseRun(["-iface", "eth1", "--iface=10.0.0.5", "-iface-regex=^en", "--iface-regex", "eth[0-9]"])
        #expect(o.interface.iface == ["eth1", "10.0.0.5"])
        #expect(o.interface.ifaceRegex == ["^en", "eth[0-9]"])
    }

    @Test("every flag, typed values")
    func everyFlag() throws {
        let o = try parseRun([
            "-public-ip=192.0.2.7", "-public-ipv6=FD00:0:0:0::7", "-etcd-endpoints=https://10.0.0.1:2379", "-etcd-prefix", "/kube-centos/network",
            "-etcd-cafile=/ca.pem", "-etcd-certfile=/c.pem", "-etcd-keyfile=/k.pem", "-etcd-username=u", "-etcd-password=p",
            "-etcd-api=v2", "-subnet-file=/tmp/s.env", "-subnet-lease-renew-margin=30", "-healthz-ip=127.0.0.1",
            "-healthz-port=8471", "-metrics-port", "9101", "-dataplane=userspace", "-bpffs=/run/x/bpf", "-log-level=debug",
        ])
        #expect(o.interface.publicIP == IPv4Address(192, 0, 2, 7))
        #expect(o.interface.publicIPv6 == IPv6Address("fd00::7"))
        #expect(o.etcd.endpointList == ["https://10.0.0.1:2379"])
        #expect(o.etcd.prefix == "/kube-centos/network")
        #expect(o.etcd.caFile == "/ca.pem" && o.etcd.certFile == "/c.pem" && o.etcd.keyFile == "/k.pem")
        #expect(o.etcd.username == "u" && o.etcd.password == "p")
        #expect(o.etcd.api == .v2)
        #expect(o.subnet.subnetFile == "/tmp/s.env")
        #expect(o.subnet.subnetLeaseRenewMargin == 30)
        #expect(o.serving.healthzIP == IPv4Address(127, 0, 0, 1))
        #expect(o.serving.healthzPort == 8471)
        #expect(o.serving.metricsPort == 9101)
        #expect(o.dataplane.dataplane == .userspace)
        #expect(o.dataplane.bpffs == "/run/x/bpf")
        #expect(o.logging.logLevel == .debug)
    }

    @Test("FLANNELD_* environment fills unset flags; a flag beats its variable")
    func environment() throws {
        let env = [
            "FLANNELD_IFACE": "eth7", "FLANNELD_ETCD_ENDPOINTS": "http://10.1.1.1:2379",
            "FLANNELD_IP_MASQ": "true", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "15", "FLANNELD_ETCD_PREFIX": "/env/prefix",
            "FLANNELD_DATAPLANE": "tc", "FLANNELD_HEALTHZ_PORT": "", // empty: ignored, like unset
        ]
        let fromEnv = try parseRun([], env: env)
        #expect(fromEnv.interface.iface == ["eth7"])
        #expect(fromEnv.etcd.endpointList == ["http://10.1.1.1:2379"])
        #expect(fromEnv.subnet.ipMasq)
        #expect(fromEnv.subnet.subnetLeaseRenewMargin == 15)
        #expect(fromEnv.dataplane.dataplane == .tc)
        #expect(fromEnv.serving.healthzPort == 0)

        let flagsWin = try parseRun(["-iface=eth0", "--ip-masq=false", "--etcd-prefix", "/flag/prefix"], env: env)
        #expect(flagsWin.interface.iface == ["eth0"])
        #expect(flagsWin.subnet.ipMasq == false)
        #expect(flagsWin.etcd.prefix == "/flag/prefix")
        #expect(flagsWin.etcd.endpointList == ["http://10.1.1.1:2379"])
    }

    @Test("--subnet-lease-ttl (ours, not flanneld's): seconds, its variable, the shortest renewable TTL")
    func subnetLeaseTTL() throws {
        #expect(try parseRun(["--subnet-lease-ttl=4"]).subnet.subnetLeaseTTL == 4)
        #expect(try parseRun(["-subnet-lease-ttl", "2"]).subnet.subnetLeaseTTL == 2)
        #expect(try parseRun([], env: ["FLANNELD_SUBNET_LEASE_TTL": "30"]).subnet.subnetLeaseTTL == 30)
        #expect(try parseRun(["--subnet-lease-ttl=7"], env: ["FLANNELD_SUBNET_LEASE_TTL": "30"]).subnet.subnetLeaseTTL == 7)
        for bad in ["1", "0", "-5", "31536001", "4s", "24h", ""] {
            let (message, code) = failure(["--subnet-lease-ttl=\(bad)"])
            #expect(code != 0, "--subnet-lease-ttl=\(bad) must fail")
            #expect(message.contains("subnet-lease-ttl"), "\(bad): \(message)")
        }
        // (The binary adds the variable's name: FlagErrorTests.)
        let (message, code) = failure([], env: ["FLANNELD_SUBNET_LEASE_TTL": "1"])
        #expect(code != 0 && message.contains("--subnet-lease-ttl=1"), "\(message)")
    }

    @Test("env names are FLANNELD_ + upper case with underscores")
    func environmentNames() {
        #expect(GoFlagSpec("iface-regex").environmentName == "FLANNELD_IFACE_REGEX")
        #expect(GoFlagSpec("subnet-lease-renew-margin").environmentName == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN")
    }

    @Test("a value that starts with '-' is still the flag's value, as in Go")
    func dashValue() throws {
        #expect(try parseRun(["--iface-regex", "-x"]).interface.ifaceRegex == ["-x"])
    }

    @Test("unknown and malformed flags fail with the flag and the value named", arguments: [
        (["--bogus"], "--bogus"),
        (["-bogus=1"], "--bogus"),
        (["--healthz-port=abc"], "abc"),
        (["--healthz-port=70000"], "--healthz-port=70000"),
        (["--public-ip=1.2.3"], "1.2.3"),
        (["--dataplane=ebpf"], "ebpf"),
        (["--etcd-api", "v4"], "v4"),
        (["--ip-masq=yes"], "\"yes\" for --ip-masq"),
        (["--iface"], "flag needs an argument: --iface"),
        (["--subnet-lease-renew-margin=0"], "--subnet-lease-renew-margin=0"),
        (["--subnet-lease-renew-margin=1440"], "--subnet-lease-renew-margin=1440"),
        (["--etcd-endpoints=127.0.0.1:2379"], "127.0.0.1:2379"),
        (["--etcd-certfile=/c.pem"], "--etcd-keyfile"),
        (["--iface-regex=("], "--iface-regex=("),
        (["--iface-can-reach=eth0"], "--iface-can-reach=eth0"),
        (["--iptables-resync=0"], "--iptables-resync=0"),
        (["--iptables-forward-rules=maybe"], "\"maybe\" for --iptables-forward-rules"),
        (["-v=x"], "x"),
        (["-vmodule=main"], "--vmodule=main"),
        (["-log_backtrace_at=main:10"], "--log_backtrace_at=main:10"),
        (["--bpffs=relative/path"], "relative/path"),
        (["stray"], "stray"),
    ])
    func malformed(_ arguments: [String], _ mentions: String) {
        let (message, code) = failure(arguments)
        #expect(code != 0, "\(arguments) must fail")
        #expect(message.contains(mentions), "message for \(arguments): \(message)")
    }

    @Test("FLANNELD_* values Go cannot parse are ignored with a note, as flanneld logs and ignores them")
    func unparsableEnvironmentIsIgnored() throws {
        let env = ["FLANNELD_IP_MASQ": "maybe", "FLANNELD_HEALTHZ_PORT": "http", "FLANNELD_IPTABLES_FORWARD_RULES": "nope",
                   "FLANNELD_V": "loud", "FLANNELD_VMODULE": "x", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30"]
        let (command, notes) = try FlanneldXDP.parseGoStyleWithNotes([], environment: env)
        let o = try #require(command as? FlanneldXDP).options
        #expect(o.subnet.ipMasq == false)
        #expect(o.serving.healthzPort == 0)
        #expect(o.hostRules.iptablesForwardRules)
        #expect(o.klog.verbosity == 0 && o.klog.vmodule.isEmpty)
        #expect(o.subnet.subnetLeaseRenewMargin == 30, "a good value next to bad ones still applies")
        #expect(notes.count == 5, "\(notes)")
        for variable in ["FLANNELD_IP_MASQ=\"maybe\"", "FLANNELD_HEALTHZ_PORT=\"http\"", "FLANNELD_IPTABLES_FORWARD_RULES=\"nope\"",
                         "FLANNELD_V=\"loud\"", "FLANNELD_VMODULE=\"x\""] {
            #expect(notes.contains { $0.hasPrefix(variable) && $0.contains("ignored") }, "\(variable): \(notes)")
        }
        // A value that parses but is out of range stops the daemon, as flanneld's own checks do.
        let (message, code) = failure([], env: ["FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0"])
        #expect(code != 0 && message.contains("subnet-lease-renew-margin"), "\(message)")
        // On the command line a bad boolean is still an error naming it.
        #expect(failure(["--ip-masq=maybe"]).message.contains("\"maybe\" for --ip-masq"))
    }

    @Test("Go's integer spellings", arguments: [("0x10", 16), ("010", 8), ("0o17", 15), ("0b101", 5), ("1_000", 1000), ("+7", 7), ("-3", -3)])
    func goIntegers(_ text: String, _ value: Int) throws {
        #expect(GoFlagNormalizer.parseGoInt(text) == value)
    }

    @Test("not Go integers", arguments: ["", "x", "0x", "_1", "1_", "1__0", "09", "1e3", "99999999999999999999"])
    func notGoIntegers(_ text: String) {
        #expect(GoFlagNormalizer.parseGoInt(text) == nil)
    }

    @Test("every flag of flanneld v0.17.0 and of current flannel: accepted in every Go form and as FLANNELD_*, or the one documented error",
          arguments: FlanneldFlag.all)
    func everyFlanneldFlag(_ flag: FlanneldFlag) throws {
        for arguments in flag.goForms {
            // A refused boolean turned off is flanneld's default: accepted.
            let outcome: FlanneldFlag.Outcome = arguments.contains { $0.hasSuffix("=false") } ? .accepted : flag.outcome
            switch outcome {
            case .accepted:
                #expect(throws: Never.self, "\(arguments)") { _ = try parseRun(arguments) }
            case .refused(let mentions):
                let (message, code) = failure(arguments)
                #expect(code == 64 && message.contains(mentions), "\(arguments): \(message)")
                #expect(!message.contains("Unknown option"), "\(arguments): \(message)")
            case .printsVersion:
                do {
                    _ = try FlanneldXDP.parseGoStyle(arguments, environment: [:])
                    Issue.record("\(arguments) parsed without printing the version")
                } catch {
                    #expect(FlanneldXDP.exitCode(for: error) == .success, "\(arguments): \(error)")
                }
            }
        }
        guard flag.name != "version" else { return }
        let env = flag.environment
        switch flag.outcome {
        case .accepted:
            let (_, notes) = try FlanneldXDP.parseGoStyleWithNotes([], environment: env)
            #expect(notes.isEmpty, "\(env): \(notes)")
        case .refused(let mentions):
            let (message, code) = failure([], env: env)
            #expect(code == 64 && message.contains(mentions), "\(env): \(message)")
        case .printsVersion:
            break
        }
    }

    @Test("flanneld's flags with meaning here land where they should")
    func flanneldFlagValues() throws {
        let o = try parseRun(["-iptables-resync=10", "-iptables-forward-rules=false", "-ip-masq-fully-random-disable",
                              "-ip-blackhole-route", "-iface-can-reach=192.0.2.9", "-v=4", "-kube-api-url", "https://k:6443",
                              "-net-config-path=/etc/x.json", "-set-node-network-unavailable=false"])
        #expect(o.hostRules.iptablesResync == 10)
        #expect(o.hostRules.iptablesForwardRules == false)
        #expect(o.hostRules.ipMasqFullyRandomDisable && o.hostRules.ipBlackholeRoute)
        #expect(o.interface.canReach == IPv4Address(192, 0, 2, 9))
        #expect(o.effectiveLogLevel == .trace)
        #expect(o.kube.ignoredSettings == ["--kube-api-url=https://k:6443", "--net-config-path=/etc/x.json",
                                           "--set-node-network-unavailable=false"])
        let defaults = try parseRun([])
        #expect(defaults.hostRules.iptablesResync == 5 && defaults.hostRules.iptablesForwardRules)
        #expect(!defaults.hostRules.ipMasqFullyRandomDisable && !defaults.hostRules.ipBlackholeRoute)
        #expect(defaults.kube.ignoredSettings.isEmpty)
        #expect(defaults.effectiveLogLevel == .info)
        // -v only ever adds detail: --log-level=trace stays trace, 1-3 is debug, -vmodule's highest counts.
        #expect(try parseRun(["-v=1"]).effectiveLogLevel == .debug)
        #expect(try parseRun(["-v=2", "--log-level=trace"]).effectiveLogLevel == .trace)
        #expect(try parseRun(["-v=0", "--log-level=warning"]).effectiveLogLevel == .warning)
        #expect(try parseRun(["-vmodule=main=1,network=5"]).effectiveLogLevel == .trace)
        // A true default that the environment turns off, and the command line back on.
        #expect(try parseRun([], env: ["FLANNELD_IPTABLES_FORWARD_RULES": "false"]).hostRules.iptablesForwardRules == false)
        #expect(try parseRun(["-iptables-forward-rules"], env: ["FLANNELD_IPTABLES_FORWARD_RULES": "false"]).hostRules.iptablesForwardRules)
    }

    @Test("--fast-path: on by default; =false, the environment and Go's single dash turn it off")
    func fastPathFlag() throws {
        #expect(try parseRun([]).dataplane.fastPath)
        #expect(try parseRun(["--fast-path=false"]).dataplane.fastPath == false)
        #expect(try parseRun(["-fast-path=false"]).dataplane.fastPath == false)
        #expect(try parseRun([], env: ["FLANNELD_FAST_PATH": "false"]).dataplane.fastPath == false)
        #expect(try parseRun(["-fast-path"], env: ["FLANNELD_FAST_PATH": "false"]).dataplane.fastPath)
        #expect(throws: (any Error).self) { try parseRun(["--fast-path=maybe"]) }
    }

    @Test("subcommands and their flags")
    func subcommands() throws {
        let cleanup = try FlanneldXDP.parseGoStyle(["cleanup", "-keep-kernel-path", "-bpffs", "/run/b"], environment: [:])
        let c = try #require(cleanup as? Cleanup)
        #expect(c.keepKernelPath)
        #expect(c.inspection.bpffs == "/run/b")
        let plain = try #require(try FlanneldXDP.parseGoStyle(["cleanup"], environment: ["FLANNELD_BPFFS": "/run/e"]) as? Cleanup)
        #expect(!plain.keepKernelPath)
        #expect(plain.inspection.bpffs == "/run/e")
        let peers = try #require(try FlanneldXDP.parseGoStyle(["peers", "--json"], environment: [:]) as? Peers)
        #expect(peers.json)
        #expect(try FlanneldXDP.parseGoStyle(["status"], environment: [:]) is Status)
        #expect(try FlanneldXDP.parseGoStyle(["stats"], environment: [:]) is Stats)
        // A daemon flag is not a cleanup flag.
        #expect(failure(["cleanup", "--iface=eth0"]).code != 0)
    }

    @Test("the normaliser table and the help text name the same flags")
    func normalizerMatchesHelp() {
        func longFlags(_ help: String) -> Set<String> {
            var names: Set<String> = []
            for word in help.split(whereSeparator: { " ,[]<>()\n".contains($0) }) where word.hasPrefix("--") {
                let name = word.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
                if !name.isEmpty && name.first!.isLetter { names.insert(String(name)) }
            }
            return names
        }
        let normalizer = FlanneldXDP.flagNormalizer
        let rootHelp = FlanneldXDP.helpMessage(columns: 200)
        let rootFromHelp = longFlags(rootHelp)
        #expect(Set(normalizer.rootFlags.map(\.name)) == rootFromHelp, "\(rootHelp)")
        for (name, command) in [("cleanup", Cleanup.self), ("status", Status.self), ("peers", Peers.self), ("stats", Stats.self)] as [(String, any ParsableCommand.Type)] {
            let help = FlanneldXDP.helpMessage(for: command, columns: 200)
            #expect(Set(normalizer.subcommandFlags[name]?.map(\.name) ?? []) == longFlags(help), "\(name): \(help)")
        }
    }
}
}

/// A flag of flanneld's main.go (v0.17.0 and current flannel; klog's three are copied onto its flag
/// set), with a value to pass and what this build does with it.
struct FlanneldFlag: Sendable, CustomStringConvertible {
    enum Outcome: Sendable { case accepted, refused(mentions: String), printsVersion }
    var name: String
    /// nil: a boolean.
    var value: String?
    var outcome: Outcome = .accepted
    /// A flag that must come with this one (--etcd-certfile needs --etcd-keyfile), as flag and value.
    var companion: (name: String, value: String)? = nil

    var description: String { "-\(name)" + (value.map { "=\($0)" } ?? "") }

    /// -name=value, -name value, --name=value, --name value; booleans: -name, -name=true, --name=false.
    var goForms: [[String]] {
        let with = companion.map { ["-\($0.name)=\($0.value)"] } ?? []
        guard let value else {
            if case .printsVersion = outcome { return [["-\(name)"], ["--\(name)"]] }
            return [["-\(name)"], ["-\(name)=true"], ["--\(name)=false"], ["--\(name)"]].map { $0 + with }
        }
        return [["-\(name)=\(value)"], ["-\(name)", value], ["--\(name)=\(value)"], ["--\(name)", value]].map { $0 + with }
    }

    /// FLANNELD_<NAME> (and the companion's variable).
    var environment: [String: String] {
        var env = [GoFlagSpec(name).environmentName: value ?? "true"]
        if let companion { env[GoFlagSpec(companion.name).environmentName] = companion.value }
        return env
    }

    static let all: [FlanneldFlag] = v0_17_0 + addedSince
    static let v0_17_0: [FlanneldFlag] = [
        .init(name: "etcd-endpoints", value: "https://10.0.0.1:2379,https://10.0.0.2:2379"),
        .init(name: "etcd-prefix", value: "/kube-centos/network"),
        .init(name: "etcd-keyfile", value: "/etc/etcd/ssl/client-key.pem", companion: ("etcd-certfile", "/etc/etcd/ssl/client.pem")),
        .init(name: "etcd-certfile", value: "/etc/etcd/ssl/client.pem", companion: ("etcd-keyfile", "/etc/etcd/ssl/client-key.pem")),
        .init(name: "etcd-cafile", value: "/etc/etcd/ssl/ca.pem"),
        .init(name: "etcd-username", value: "flannel", companion: ("etcd-password", "secret")),
        .init(name: "etcd-password", value: "secret", companion: ("etcd-username", "flannel")),
        .init(name: "iface", value: "eth0"),
        .init(name: "iface-regex", value: "^eth[0-9]"),
        .init(name: "subnet-file", value: "/run/flannel/subnet.env"),
        .init(name: "public-ip", value: "192.0.2.10"),
        .init(name: "public-ipv6", value: "fd00::10"),
        .init(name: "subnet-lease-renew-margin", value: "30"),
        .init(name: "ip-masq"),
        .init(name: "kube-subnet-mgr", outcome: .refused(mentions: "runs the etcd subnet manager")),
        .init(name: "kube-api-url", value: "https://10.0.0.1:6443"),
        .init(name: "kube-annotation-prefix", value: "example.com/flannel"),
        .init(name: "kubeconfig-file", value: "/etc/kubernetes/kubelet.conf"),
        .init(name: "version", outcome: .printsVersion),
        .init(name: "healthz-ip", value: "127.0.0.1"),
        .init(name: "healthz-port", value: "8471"),
        .init(name: "iptables-resync", value: "10"),
        .init(name: "iptables-forward-rules"),
        .init(name: "net-config-path", value: "/etc/kube-flannel/net-conf.json"),
        .init(name: "set-node-network-unavailable"),
        .init(name: "v", value: "2"),
        .init(name: "vmodule", value: "main=2,iptables=4"),
        .init(name: "log_backtrace_at", value: "main.go:120"),
    ]
    static let addedSince: [FlanneldFlag] = [
        .init(name: "iface-can-reach", value: "192.0.2.1"),
        .init(name: "ip-masq-fully-random-disable"),
        .init(name: "ip-blackhole-route"),
    ]
}
