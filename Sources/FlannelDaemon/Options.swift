// flanneld's flags, spelled as flanneld spells them, grouped by concern. The Go spellings
// (`-iface=eth0`, `-iface eth0`, `--ip-masq=true`) and the `FLANNELD_<NAME>` environment variables
// are turned into argument-parser's form by `GoFlagNormalizer` before parsing, so the types here
// only describe the flags and check their values (`validate()`), they never see Go syntax.

import ArgumentParser
import Dataplane
import Logging
import NetTypes

extension IPv4Address: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
    public var defaultValueDescription: String { description }
}

extension IPv6Address: ExpressibleByArgument {
    /// An IPv6 address in text form; an IPv4-mapped one (::ffff:a.b.c.d) is no IPv6 underlay address.
    public init?(argument: String) {
        guard let address = IPv6Address(argument), !address.isIPv4Mapped else { return nil }
        self = address
    }
    public var defaultValueDescription: String { description }
}

extension IPv4Subnet: ExpressibleByArgument {
    public init?(argument: String) { self.init(cidr: argument) }
    public var defaultValueDescription: String { description }
}

/// --dataplane (the choice is the Dataplane module's).
extension DataplaneChoice: ExpressibleByArgument {}

/// Which etcd API generation holds the leases (flannel ≤ 0.17 used v2, ≥ 0.18 uses v3).
public enum EtcdAPIChoice: String, CaseIterable, Sendable, ExpressibleByArgument {
    case auto, v2, v3
}

public enum LogLevelChoice: String, CaseIterable, Sendable, ExpressibleByArgument {
    case trace, debug, info, notice, warning, error, critical

    public var level: Logger.Level { Logger.Level(rawValue: rawValue) ?? .info }
}

public struct EtcdOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("etcd-endpoints"), help: "Comma-separated list of etcd endpoints.")
    public var endpoints: String = "http://127.0.0.1:4001,http://127.0.0.1:2379"

    @Option(name: .customLong("etcd-prefix"), help: "etcd prefix holding the network config and the subnet leases.")
    public var prefix: String = "/coreos.com/network"

    @Option(name: .customLong("etcd-keyfile"), help: "SSL key file used to secure etcd communication.")
    public var keyFile: String = ""

    @Option(name: .customLong("etcd-certfile"), help: "SSL certification file used to secure etcd communication.")
    public var certFile: String = ""

    @Option(name: .customLong("etcd-cafile"), help: "SSL Certificate Authority file used to secure etcd communication.")
    public var caFile: String = ""

    @Option(name: .customLong("etcd-username"), help: "Username for BasicAuth to etcd.")
    public var username: String = ""

    @Option(name: .customLong("etcd-password"), help: "Password for BasicAuth to etcd.")
    public var password: String = ""

    @Option(name: .customLong("etcd-api"), help: "etcd API generation holding the leases: auto, v2 (flannel <= 0.17) or v3.")
    public var api: EtcdAPIChoice = .auto

    @Option(name: .customLong("etcd-start-timeout"),
            help: "Seconds start-up waits for etcd before it starts from --last-known-state instead (only when that file holds a lease that has not expired).")
    public var startTimeout: Int = 10

    public init() {}

    /// The endpoints as a list, blanks dropped.
    public var endpointList: [String] {
        endpoints.split(separator: ",").map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
    }

    public func validate() throws {
        let list = endpointList
        guard !list.isEmpty else {
            throw ValidationError("--etcd-endpoints is empty: give at least one URL, e.g. --etcd-endpoints=http://127.0.0.1:2379")
        }
        for endpoint in list {
            guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"),
                  endpoint.split(separator: "/", omittingEmptySubsequences: true).count >= 2 else {
                throw ValidationError("--etcd-endpoints: \"\(endpoint)\" is not an http:// or https:// URL (e.g. http://127.0.0.1:2379)")
            }
        }
        guard prefix.hasPrefix("/") else {
            throw ValidationError("--etcd-prefix=\(prefix) must start with '/', e.g. /coreos.com/network")
        }
        if certFile.isEmpty != keyFile.isEmpty {
            throw ValidationError("--etcd-certfile and --etcd-keyfile go together: give both or neither")
        }
        guard (1...3600).contains(startTimeout) else {
            throw ValidationError("--etcd-start-timeout=\(startTimeout) is out of range: give seconds from 1 to 3600 (default 10)")
        }
        if !username.isEmpty && password.isEmpty || username.isEmpty && !password.isEmpty {
            throw ValidationError("--etcd-username and --etcd-password go together: give both or neither")
        }
    }
}

public struct InterfaceOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("iface"),
            help: "Interface to use (IP or name) for inter-host communication. Can be given several times to check each in order; the first found is used.")
    public var iface: [String] = []

    @Option(name: .customLong("iface-regex"),
            help: "Regex matching the first interface (IP or name) to use for inter-host communication. Can be given several times; skipped if --iface is given.")
    public var ifaceRegex: [String] = []

    @Option(name: .customLong("iface-can-reach"),
            help: "IPv4 address whose route picks the interface (the device of `ip route get <address>`) when no --iface or --iface-regex matches.")
    public var ifaceCanReach: String = ""

    @Option(name: .customLong("public-ip"), help: "IP accessible by other nodes for inter-host communication.")
    public var publicIP: IPv4Address?

    @Option(name: .customLong("public-ipv6"),
            help: "IPv6 accessible by other nodes for inter-host communication (dual-stack and IPv6-only networks).")
    public var publicIPv6: IPv6Address?

    public init() {}

    /// `--iface-can-reach` as an address (validate() has checked it), nil when not given.
    public var canReach: IPv4Address? { ifaceCanReach.isEmpty ? nil : IPv4Address(ifaceCanReach) }

    public func validate() throws {
        if !ifaceCanReach.isEmpty && IPv4Address(ifaceCanReach) == nil {
            throw ValidationError("--iface-can-reach=\(ifaceCanReach) is not an IPv4 address: give the address of a host the "
                + "interface must reach, e.g. --iface-can-reach=192.168.1.1")
        }
        for pattern in ifaceRegex {
            do { _ = try Regex(pattern) } catch {
                throw ValidationError("--iface-regex=\(pattern) is not a valid regular expression: \(error)")
            }
        }
        for name in iface where name.isEmpty {
            throw ValidationError("--iface is empty: give an interface name (eth0) or one of its IPv4 or IPv6 addresses")
        }
    }
}

public struct SubnetOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("subnet-file"), help: "Filename where env variables (subnet, MTU, ...) will be written to.")
    public var subnetFile: String = "/run/flannel/subnet.env"

    @Option(name: .customLong("subnet-lease-renew-margin"),
            help: "Subnet lease renewal margin, in minutes, ranging from 1 to 1439.")
    public var subnetLeaseRenewMargin: Int = 60

    /// Not a flanneld flag (flannel's TTL is fixed at 24 h): short TTLs let tests and small labs see
    /// expiry and renewal in seconds. The renewal margin is capped at half the TTL.
    @Option(name: .customLong("subnet-lease-ttl"),
            help: "Subnet lease TTL, in seconds, from 2 to 31536000 (flanneld-xdp extension, for tests and small labs; flannel uses 24 h).")
    public var subnetLeaseTTL: Int = SubnetOptions.defaultLeaseTTLSeconds

    @Flag(name: .customLong("ip-masq"), help: "Setup IP masquerade rule for traffic destined outside of overlay network.")
    public var ipMasq: Bool = false

    @Option(name: .customLong("last-known-state"),
            help: "File (on a disk that survives reboots) where the leases last confirmed by etcd are kept, to start from when etcd is unreachable at boot; empty to disable.")
    public var lastKnownState: String = "/var/lib/flanneld-xdp/last-known.json"

    /// flannel's fixed TTL.
    public static let defaultLeaseTTLSeconds = 24 * 3600
    /// etcd will not keep a lease shorter than 2 s (its minimum TTL with default timing), and a
    /// renewal needs a round trip or two inside TTL/2.
    public static let leaseTTLRange = 2...(365 * 24 * 3600)

    public init() {}

    public func validate() throws {
        // flannel's range (its TTL is 24 h); with a shorter --subnet-lease-ttl the margin is capped
        // at half the TTL.
        guard (1..<24 * 60).contains(subnetLeaseRenewMargin) else {
            throw ValidationError("--subnet-lease-renew-margin=\(subnetLeaseRenewMargin) is out of range: give minutes from 1 to 1439 (default 60)")
        }
        guard SubnetOptions.leaseTTLRange.contains(subnetLeaseTTL) else {
            throw ValidationError("--subnet-lease-ttl=\(subnetLeaseTTL) is out of range: give seconds from \(SubnetOptions.leaseTTLRange.lowerBound) "
                + "(shorter leases cannot be renewed in time) to \(SubnetOptions.leaseTTLRange.upperBound) (default \(SubnetOptions.defaultLeaseTTLSeconds), 24 h as flannel)")
        }
        guard !subnetFile.isEmpty else {
            throw ValidationError("--subnet-file is empty: give a path, default /run/flannel/subnet.env")
        }
        guard lastKnownState.isEmpty || lastKnownState.hasPrefix("/") else {
            throw ValidationError("--last-known-state=\(lastKnownState) must be an absolute path (default /var/lib/flanneld-xdp/last-known.json), or empty to disable")
        }
    }
}

public struct ServingOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("healthz-ip"), help: "The IP address for healthz server to listen.")
    public var healthzIP: IPv4Address = IPv4Address(0, 0, 0, 0)

    @Option(name: .customLong("healthz-port"), help: "The port for healthz server to listen (0 to disable).")
    public var healthzPort: Int = 0

    @Option(name: .customLong("metrics-port"), help: "Port for Prometheus metrics on --healthz-ip (0 to disable).")
    public var metricsPort: Int = 0

    @Flag(name: .customLong("metrics-per-peer"),
          help: "Also export packets and bytes per peer node on /metrics: 4 series per peer (20 000 per node in a 5000-node cluster).")
    public var metricsPerPeer: Bool = false

    public init() {}

    public func validate() throws {
        for (flag, port) in [("--healthz-port", healthzPort), ("--metrics-port", metricsPort)] {
            guard (0...65535).contains(port) else {
                throw ValidationError("\(flag)=\(port) is not a TCP port: give 1 to 65535, or 0 to disable")
            }
        }
    }
}

public struct DataplaneOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("dataplane"),
            help: "Data path: auto (BPF, falling back to userspace if BPF cannot load), xdp, tc or userspace.")
    public var dataplane: DataplaneChoice = .auto

    @Option(name: .customLong("bpffs"), help: "bpffs mount under which the BPF maps and programs are pinned.")
    public var bpffs: String = "/sys/fs/bpf"

    @Option(name: .customLong("bpf-object"),
            help: "Compiled BPF object to load instead of the built-in one (a program upgrade; its maps must match the pinned ones). If it cannot run, flanneld-xdp stops: no fallback.")
    public var bpfObject: String?

    @Option(name: .customLong("reconcile-interval"),
            help: "Seconds between full passes that compare the peer tables with the leases and repair drift.")
    public var reconcileInterval: Int = 60

    @Option(name: .customLong("inner-source-check"),
            help: "Accept a decapsulated packet only when its source lies in a subnet of the peer node that sent it (or is that node's own address). Turn off (=false) only where nodes forward traffic from outside their own subnet without masquerade (docs/SECURITY.md).")
    public var innerSourceCheck: Bool = true

    @Option(name: .customLong("fast-path"),
            help: "BPF data path: let established pod-to-pod flows skip both nodes' network stacks (encapsulated where the pod's packet enters the host, handed straight to the receiving pod). Sets net.netfilter.nf_conntrack_tcp_be_liberal=1. =false keeps every packet on the kernel's forwarding path (docs/BPF-DATAPATH.md).")
    public var fastPath: Bool = true

    public init() {}

    public func validate() throws {
        guard (1...3600).contains(reconcileInterval) else {
            throw ValidationError("--reconcile-interval=\(reconcileInterval) is out of range: give seconds from 1 to 3600 (default 60)")
        }
        guard bpffs.hasPrefix("/") else {
            throw ValidationError("--bpffs=\(bpffs) must be an absolute path, e.g. /sys/fs/bpf")
        }
        if let bpfObject, bpfObject.isEmpty {
            throw ValidationError("--bpf-object is empty: give the path of a compiled object, or leave the flag out to load the built-in one")
        }
        if bpfObject != nil && dataplane == .userspace {
            throw ValidationError("--bpf-object=\(bpfObject!) has no use with --dataplane=userspace (no BPF is loaded): drop one of them")
        }
    }
}

extension LogFormat: ExpressibleByArgument {}

public struct LoggingOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("log-level"), help: "Log level: trace, debug, info, notice, warning, error or critical.")
    public var logLevel: LogLevelChoice = .info

    @Option(name: .customLong("log-format"),
            help: "Log line format: text, or json (one object per line). Under systemd each line also gets journald's priority prefix.")
    public var logFormat: LogFormat = .text

    public init() {}
}

/// flanneld's klog flags, mapped onto our log levels: klog's verbosity only ever adds detail, so
/// `-v` (or the highest level in `-vmodule`) can make the log more detailed than --log-level, never
/// less. flannel logs at V(1) to V(6); 1–3 become debug, 4 and more trace.
public struct KlogOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("v"), help: "flanneld's klog verbosity: 0 leaves --log-level as it is, 1-3 log at debug, 4 and more at trace.")
    public var verbosity: Int = 0

    @Option(name: .customLong("vmodule"),
            help: "flanneld's per-file klog verbosity (pattern=N,...): files are Go's, so the highest N applies to the whole log, as -v.")
    public var vmodule: String = ""

    @Option(name: .customLong("log_backtrace_at"),
            help: "flanneld's klog flag (file.go:N): accepted for compatibility; there are no Go files to trace here.")
    public var logBacktraceAt: String = ""

    public init() {}

    public func validate() throws {
        if let problem = KlogSyntax.levelProblem("\(verbosity)") {
            throw ValidationError("--v=\(verbosity): \(problem)")
        }
        if let problem = KlogSyntax.moduleProblem(vmodule) {
            throw ValidationError("--vmodule=\(vmodule): \(problem)")
        }
        if let problem = KlogSyntax.traceLocationProblem(logBacktraceAt) {
            throw ValidationError("--log_backtrace_at=\(logBacktraceAt): \(problem)")
        }
    }

    /// The klog verbosity asked for: -v, or the highest -vmodule level if that is higher.
    public var effectiveVerbosity: Int {
        max(verbosity, KlogSyntax.moduleLevels(vmodule).max() ?? 0)
    }

    /// The level the klog verbosity asks for, nil for 0 (or less): then --log-level decides alone.
    public var requestedLevel: Logger.Level? {
        switch effectiveVerbosity {
        case ...0: nil
        case 1...3: .debug
        default: .trace
        }
    }
}

/// klog's own value checks (its flag.Value Set methods), shared by the options' validate() and the
/// FLANNELD_* environment check (where a bad value is logged and ignored, as flanneld does).
public enum KlogSyntax {
    /// klog's Level: a decimal 32-bit integer.
    public static func levelProblem(_ text: String) -> String? {
        Int32(text) == nil ? "not a decimal number (klog's verbosity level, e.g. 2)" : nil
    }

    /// klog's -vmodule: comma-separated `pattern=N`, N a non-negative decimal; empty is allowed.
    public static func moduleProblem(_ text: String) -> String? {
        guard !text.isEmpty else { return nil }
        for entry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = entry.split(separator: "=", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, let level = Int32(parts[1]) else {
                return "expected a comma-separated list of pattern=N (e.g. main=2,network=4)"
            }
            if level < 0 { return "negative level \(level) for pattern \(parts[0])" }
        }
        return nil
    }

    /// The levels of a valid -vmodule value.
    public static func moduleLevels(_ text: String) -> [Int] {
        guard moduleProblem(text) == nil, !text.isEmpty else { return [] }
        return text.split(separator: ",").compactMap { $0.split(separator: "=").last.flatMap { Int($0) } }
    }

    /// klog's -log_backtrace_at: `file.go:N` with N > 0; empty is allowed.
    public static func traceLocationProblem(_ text: String) -> String? {
        guard !text.isEmpty else { return nil }
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].contains("."), let line = Int(parts[1]) else {
            return "expected file.go:N (e.g. main.go:120)"
        }
        return line > 0 ? nil : "line \(line) must be above 0"
    }
}

/// The host rules flanneld keeps in place besides the overlay: FORWARD accepts, masquerade, the
/// blackhole route, all re-checked every --iptables-resync seconds (HostRules.swift).
public struct HostRuleOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("iptables-resync"),
            help: "Seconds between the checks that re-add missing FORWARD, masquerade and blackhole rules.")
    public var iptablesResync: Int = 5

    @Option(name: .customLong("iptables-forward-rules"),
            help: "Accept forwarding to and from the flannel network in iptables' filter FORWARD chain (where Docker sets a DROP policy); =false to leave FORWARD alone.")
    public var iptablesForwardRules: Bool = true

    @Flag(name: .customLong("ip-masq-fully-random-disable"), help: "Masquerade without fully-random source ports (with --ip-masq).")
    public var ipMasqFullyRandomDisable: Bool = false

    @Flag(name: .customLong("ip-blackhole-route"),
          help: "Keep a blackhole route for this node's subnet, for nodes whose pods have no bridge route of their own.")
    public var ipBlackholeRoute: Bool = false

    public init() {}

    public func validate() throws {
        guard (1...3600).contains(iptablesResync) else {
            throw ValidationError("--iptables-resync=\(iptablesResync) is out of range: give seconds from 1 to 3600 (default 5)")
        }
    }
}

/// flanneld's Kubernetes subnet manager flags. This build runs the etcd subnet manager only: asking
/// for the Kubernetes one is refused with one error; the flags that only configure it are accepted
/// and, as flanneld does without --kube-subnet-mgr, not used (the daemon says so when they are set).
public struct KubeOptions: ParsableArguments, Sendable {
    @Flag(name: .customLong("kube-subnet-mgr"), help: "flanneld's Kubernetes subnet manager: not supported by this build (etcd only); refused.")
    public var kubeSubnetMgr: Bool = false

    @Option(name: .customLong("kube-api-url"), help: "Used only by the Kubernetes subnet manager (ignored here).")
    public var kubeAPIURL: String = ""

    @Option(name: .customLong("kube-annotation-prefix"), help: "Used only by the Kubernetes subnet manager (ignored here).")
    public var kubeAnnotationPrefix: String = KubeOptions.defaultAnnotationPrefix

    @Option(name: .customLong("kubeconfig-file"), help: "Used only by the Kubernetes subnet manager (ignored here).")
    public var kubeconfigFile: String = ""

    @Option(name: .customLong("net-config-path"),
            help: "Network config file of the Kubernetes subnet manager (ignored here: the etcd subnet manager reads <etcd-prefix>/config, as flanneld does).")
    public var netConfigPath: String = KubeOptions.defaultNetConfigPath

    @Option(name: .customLong("set-node-network-unavailable"), help: "Used only by the Kubernetes subnet manager (ignored here).")
    public var setNodeNetworkUnavailable: Bool = true

    public static let defaultAnnotationPrefix = "flannel.alpha.coreos.com"
    public static let defaultNetConfigPath = "/etc/kube-flannel/net-conf.json"

    public static let unsupportedMessage = "--kube-subnet-mgr: this build of flanneld-xdp runs the etcd subnet manager only "
        + "(leases in etcd, as flanneld without --kube-subnet-mgr). Run it with --etcd-endpoints=<your etcd> and "
        + "--etcd-prefix=<prefix> instead, or keep stock flanneld on nodes whose subnets Kubernetes assigns"

    public init() {}

    public func validate() throws {
        if kubeSubnetMgr { throw ValidationError(Self.unsupportedMessage) }
    }

    /// The flags given with a non-default value that only the Kubernetes subnet manager reads.
    public var ignoredSettings: [String] {
        var ignored: [String] = []
        if !kubeAPIURL.isEmpty { ignored.append("--kube-api-url=\(kubeAPIURL)") }
        if kubeAnnotationPrefix != Self.defaultAnnotationPrefix { ignored.append("--kube-annotation-prefix=\(kubeAnnotationPrefix)") }
        if !kubeconfigFile.isEmpty { ignored.append("--kubeconfig-file=\(kubeconfigFile)") }
        if netConfigPath != Self.defaultNetConfigPath { ignored.append("--net-config-path=\(netConfigPath)") }
        if !setNodeNetworkUnavailable { ignored.append("--set-node-network-unavailable=false") }
        return ignored
    }
}

/// Every flag of the daemon itself (the `run` form of the command).
public struct FlannelOptions: ParsableArguments, Sendable {
    @OptionGroup(title: "Interface") public var interface: InterfaceOptions
    @OptionGroup(title: "etcd") public var etcd: EtcdOptions
    @OptionGroup(title: "Subnet lease") public var subnet: SubnetOptions
    @OptionGroup(title: "Data path") public var dataplane: DataplaneOptions
    @OptionGroup(title: "Host rules") public var hostRules: HostRuleOptions
    @OptionGroup(title: "Health and metrics") public var serving: ServingOptions
    @OptionGroup(title: "Logging") public var logging: LoggingOptions
    @OptionGroup(title: "flanneld's klog flags") public var klog: KlogOptions
    @OptionGroup(title: "Kubernetes subnet manager (not in this build)") public var kube: KubeOptions

    public init() {}

    /// The log level: --log-level, made more detailed by -v/-vmodule when they ask for more.
    public var effectiveLogLevel: Logger.Level {
        guard let requested = klog.requestedLevel else { return logging.logLevel.level }
        return min(requested, logging.logLevel.level)
    }
}

extension Substring {
    func trimmingSpaces() -> String {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
