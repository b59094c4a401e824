// `flanneld-xdp doctor`: is this host ready to run the node agent, and if not, what to do. Every
// check reads kernel state through files and syscalls (uname, /proc, statfs, netlink, the BPF
// syscall's program-type probe) or asks etcd: nothing is started, nothing is changed. Each finding
// has a severity and, unless it is fine, the fix.
//
// It takes the daemon's own flags (and FLANNELD_* variables), so the unit's command line checks
// exactly what the daemon will use: `flanneld-xdp doctor -etcd-endpoints=… $FLANNEL_OPTIONS`.
// Capabilities are the doctor's own: run it the way the daemon runs.
//
// Exit status: 0 nothing to fix (only ok and info findings), 1 warnings (the node runs, with a
// reduced feature or a risk), 2 errors (the daemon cannot start as configured, or the BPF data
// path cannot run where --dataplane asks for it).

import Dataplane
import Glibc
import Leases
import NetTypes
import RuntimeSupport

public struct DoctorFinding: Sendable, Equatable {
    public enum Severity: String, Sendable, Comparable, CaseIterable {
        case ok, info, warning, error

        var rank: Int { Severity.allCases.firstIndex(of: self)! }
        public static func < (a: Severity, b: Severity) -> Bool { a.rank < b.rank }
    }

    /// Which check: "kernel", "btf", "netfilter-links", "xdp", "tc", "capabilities", "bpffs",
    /// "rp_filter", "mtu", "nft", "iptables", "etcd", "abi-pins".
    public var check: String
    public var severity: Severity
    public var summary: String
    /// What to do; empty for ok and for information that needs nothing.
    public var fix: String

    public init(_ check: String, _ severity: Severity, _ summary: String, fix: String = "") {
        self.check = check
        self.severity = severity
        self.summary = summary
        self.fix = fix
    }
}

public struct DoctorReport: Sendable {
    public var findings: [DoctorFinding]

    /// 0: nothing to fix; 1: warnings; 2: errors.
    public var exitStatus: Int32 {
        switch findings.map(\.severity).max() ?? .ok {
        case .ok, .info: 0
        case .warning: 1
        case .error: 2
        }
    }

    public var text: String {
        var lines: [String] = []
        for f in findings {
            lines.append("\(f.severity.rawValue.uppercased().padding(8))\(f.check.padding(16))\(f.summary)")
            if !f.fix.isEmpty { lines.append(String(repeating: " ", count: 24) + "fix: " + f.fix) }
        }
        let count = { (s: DoctorFinding.Severity) in findings.filter { $0.severity == s }.count }
        lines.append("\(count(.error)) error(s), \(count(.warning)) warning(s), \(count(.info)) note(s); exit status \(exitStatus)")
        return lines.joined(separator: "\n") + "\n"
    }

    public var json: JSONValue {
        .members([
            ("findings", .array(findings.map {
                .members([("check", .string($0.check)), ("severity", .string($0.severity.rawValue)),
                         ("summary", .string($0.summary)), ("fix", .string($0.fix))])
            })),
            ("exitStatus", .int(Int64(exitStatus))),
        ])
    }
}

public enum Doctor {
    /// Capability numbers (linux/capability.h).
    enum Capability: Int, CaseIterable {
        case netAdmin = 12, netRaw = 13, sysAdmin = 21, perfmon = 38, bpf = 39

        var name: String {
            switch self {
            case .netAdmin: "CAP_NET_ADMIN"
            case .netRaw: "CAP_NET_RAW"
            case .sysAdmin: "CAP_SYS_ADMIN"
            case .perfmon: "CAP_PERFMON"
            case .bpf: "CAP_BPF"
            }
        }
    }

    /// The first kernel with BPF netfilter links (the VXLAN door and the pod guard need them).
    static let netfilterLinkKernel = (major: 6, minor: 4)
    /// The first kernel with tcx links (every TC program of ours attaches through one).
    static let tcxLinkKernel = (major: 6, minor: 6)

    /// What the BPF data path needs of the kernel's version: (check, first version, what it gives).
    static let kernelFeatures: [(check: String, first: (major: Int, minor: Int), what: String, use: String)] = [
        ("netfilter-links", netfilterLinkKernel, "BPF netfilter links", "the VXLAN door and the pod guard"),
        ("tcx-links", tcxLinkKernel, "tcx links", "the encap, the decap check and the fast path's encap"),
    ]

    /// Every check, in the order an operator fixes things: kernel, privileges, bpffs, network, etcd.
    public static func run(_ options: FlannelOptions) async -> DoctorReport {
        var findings: [DoctorFinding] = []
        let choice = options.dataplane.dataplane
        let wantsBPF = choice != .userspace
        findings += kernel(release: unameRelease(), dataplane: choice)
        findings.append(btf(path: "/sys/kernel/btf/vmlinux"))
        let effective = effectiveCapabilities()
        if wantsBPF { findings += programTypes(dataplane: choice, canProbe: effective & (1 << UInt64(Capability.bpf.rawValue)) != 0) }
        let bpffsMounted = KernelProbe.isBPFFSMounted(at: options.dataplane.bpffs)
        findings += capabilities(effective: effective, dataplane: choice, bpffsMounted: bpffsMounted)
        if wantsBPF {
            findings.append(bpffs(path: options.dataplane.bpffs, mounted: bpffsMounted))
            findings.append(otherABIPins(bpffs: options.dataplane.bpffs))
        }
        let external: ExternalInterface?
        do {
            external = try InterfaceSelection.selectFromSystem(options.interface)
        } catch {
            external = nil
            findings.append(DoctorFinding("interface", .error, "\(error)",
                                          fix: "give --iface (a name or address) or --iface-regex/--iface-can-reach that matches an interface with IPv4"))
        }
        if let external { findings.append(rpFilter(interface: external.interface.name)) }
        findings += hostPrograms(options)
        let etcd = await etcd(options.etcd)
        findings += etcd.findings
        if let external {
            findings += mtu(external: external, config: etcd.config,
                            subnetEnv: try? SubnetEnv.read(from: options.subnet.subnetFile), subnetFile: options.subnet.subnetFile,
                            devices: KernelProbe.flannelDevices())
        }
        return DoctorReport(findings: findings)
    }

    // MARK: kernel

    static func unameRelease() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// (major, minor) of a release string such as "6.1.0-18-amd64"; nil when it does not start so.
    static func kernelVersion(_ release: String) -> (major: Int, minor: Int)? {
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2, release.first?.isNumber == true else { return nil }
        return (parts[0], parts[1])
    }

    static func kernel(release: String, dataplane: DataplaneChoice) -> [DoctorFinding] {
        guard let v = kernelVersion(release) else {
            return [DoctorFinding("kernel", .warning, "kernel release \"\(release)\" is not major.minor: versions not checked",
                                  fix: "check by hand that the kernel is Linux \(tcxLinkKernel.major).\(tcxLinkKernel.minor) or newer")]
        }
        var findings = [DoctorFinding("kernel", .ok, "Linux \(release)")]
        for feature in kernelFeatures {
            let first = "\(feature.first.major).\(feature.first.minor)"
            if (v.major, v.minor) >= feature.first {
                findings.append(DoctorFinding(feature.check, .ok, "\(feature.what) available (Linux ≥ \(first)): \(feature.use) can attach"))
            } else if dataplane != .userspace {
                let severity: DoctorFinding.Severity = dataplane == .auto ? .warning : .error
                let outcome = dataplane == .auto ? "--dataplane=auto falls back to the userspace path (slower)"
                    : "--dataplane=\(dataplane) will refuse to start"
                findings.append(DoctorFinding(feature.check, severity,
                                              "Linux \(v.major).\(v.minor) has no \(feature.what) (Linux ≥ \(first)), which the BPF data path's \(feature.use) need: \(outcome)",
                                              fix: "upgrade the kernel to \(first) or newer (Debian: bookworm-backports' linux-image), or run --dataplane=userspace"))
            }
        }
        return findings
    }

    static func btf(path: String) -> DoctorFinding {
        access(path, R_OK) == 0
            ? DoctorFinding("btf", .ok, "kernel BTF at \(path) (bpftool shows the maps' fields by name)")
            : DoctorFinding("btf", .info, "no kernel BTF at \(path): the programs do not need it; bpftool shows raw bytes",
                            fix: "a kernel built with CONFIG_DEBUG_INFO_BTF=y, for readable `bpftool map dump`")
    }

    /// Asks the kernel (BPF_PROG_LOAD of a trivial program) whether it takes XDP and TC programs.
    /// Without CAP_BPF every load is refused and the probe cannot tell "unsupported" from "not
    /// allowed": then it is not asked (the capabilities finding says what is missing).
    static func programTypes(dataplane: DataplaneChoice, canProbe: Bool) -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        for (check, type, what) in [("xdp", KernelProbe.ProgramType.xdp, "XDP (decap mode xdp)"),
                                    ("tc", .tc, "TC classifier programs (encap, decap check)")] {
            guard canProbe else {
                findings.append(DoctorFinding(check, .info, "\(what): not probed, this process lacks CAP_BPF",
                                              fix: "run doctor as root to ask the kernel"))
                continue
            }
            let result = KernelProbe.loads(type)
            if result == 1 {
                findings.append(DoctorFinding(check, .ok, "the kernel loads \(what)"))
            } else if result == -Int32(EPERM) {
                findings.append(DoctorFinding(check, .warning, "cannot probe \(what): the BPF syscall refused this process (EPERM)",
                                              fix: "run doctor as root (as the daemon runs) to check the program types"))
            } else {
                let severity: DoctorFinding.Severity = check == "xdp" && dataplane != .xdp ? .warning : .error
                findings.append(DoctorFinding(check, severity, "the kernel does not load \(what) (probe returned \(result))",
                                              fix: "a kernel with CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_BPF and CONFIG_XDP_SOCKETS/XDP support, or --dataplane=userspace"))
            }
        }
        return findings
    }

    // MARK: privileges

    /// CapEff of this process (/proc/self/status), as a bit set.
    static func effectiveCapabilities() -> UInt64 {
        let status = ProcessMetrics.readSmallFile("/proc/self/status") ?? ""
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
              let hex = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).last else { return 0 }
        return UInt64(hex, radix: 16) ?? 0
    }

    static func capabilities(effective: UInt64, dataplane: DataplaneChoice, bpffsMounted: Bool) -> [DoctorFinding] {
        func has(_ c: Capability) -> Bool { effective & (1 << UInt64(c.rawValue)) != 0 }
        let unit = "the unit's CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW, or root"
        var findings: [DoctorFinding] = []
        if !has(.netAdmin) {
            findings.append(DoctorFinding("capabilities", .error, "CAP_NET_ADMIN missing: no device, route or rule can be set up",
                                          fix: "run with \(unit)"))
        }
        let bpfMissing = [Capability.bpf, .perfmon].filter { !has($0) }.map(\.name)
        if !bpfMissing.isEmpty && dataplane != .userspace {
            let severity: DoctorFinding.Severity = dataplane == .auto ? .warning : .error
            let outcome = dataplane == .auto ? "--dataplane=auto falls back to the userspace path" : "--dataplane=\(dataplane) refuses to start"
            findings.append(DoctorFinding("capabilities", severity,
                                          "\(bpfMissing.joined(separator: " and ")) missing: the verifier refuses the programs (CAP_PERFMON: variable-offset packet access); \(outcome)",
                                          fix: "run with \(unit)"))
        }
        if !has(.sysAdmin) && !bpffsMounted && dataplane != .userspace {
            findings.append(DoctorFinding("capabilities", .error,
                                          "CAP_SYS_ADMIN missing and --bpffs is not mounted: the daemon cannot mount it",
                                          fix: "mount bpffs before the daemon starts (systemd mounts /sys/fs/bpf at boot: `mount -t bpf bpf /sys/fs/bpf`)"))
        }
        if !has(.netRaw) {
            findings.append(DoctorFinding("capabilities", .info,
                                          "CAP_NET_RAW missing: iptables-legacy cannot set the FORWARD accepts, and the userspace path sends no ICMP errors",
                                          fix: "add CAP_NET_RAW if iptables is iptables-legacy or the userspace path runs"))
        }
        if findings.isEmpty || findings.allSatisfy({ $0.severity == .info }) {
            let held = Capability.allCases.filter(has).map(\.name).joined(separator: " ")
            findings.insert(DoctorFinding("capabilities", .ok, "this process holds \(held.isEmpty ? "none of them" : held)"), at: 0)
        }
        return findings
    }

    // MARK: bpffs and pins

    static func bpffs(path: String, mounted: Bool) -> DoctorFinding {
        if mounted { return DoctorFinding("bpffs", .ok, "\(path) is a bpffs mount (pins survive restarts)") }
        return DoctorFinding("bpffs", .warning,
                             "\(path) is not a bpffs mount: the daemon mounts one there at start, which needs CAP_SYS_ADMIN (the unit does not give it) and is private to the unit's mount namespace",
                             fix: "mount it for the host: `mount -t bpf bpf \(path)` (systemd does at boot for /sys/fs/bpf), or give --bpffs a bpffs mount")
    }

    /// Map pins named fxdp_<name>_v<N> with N other than this build's FXDP_ABI_VERSION.
    static func otherABIPins(bpffs: String) -> DoctorFinding {
        let folder = PinnedDataplane.folder(bpffs: bpffs)
        let names = listDirectory(folder) ?? []
        let stale = names.filter { name in
            guard name.hasPrefix(KernelProbe.namePrefix), let v = name.lastIndex(of: "_"),
                  name[name.index(after: v)...].hasPrefix("v"),
                  let version = Int(name[name.index(v, offsetBy: 2)...]) else { return false }
            return version != KernelProbe.abiVersion
        }.sorted()
        if stale.isEmpty {
            return DoctorFinding("abi-pins", .ok, names.isEmpty ? "no pins under \(folder) yet"
                                 : "the pins under \(folder) are this build's map layout (v\(KernelProbe.abiVersion))")
        }
        return DoctorFinding("abi-pins", .info,
                             "pins of another map layout under \(folder): \(stale.joined(separator: ", ")) (this build uses v\(KernelProbe.abiVersion)); the daemon removes them when it attaches",
                             fix: "nothing if the daemon is about to start; to remove them now: rm \(stale.map { folder + "/" + $0 }.joined(separator: " "))")
    }

    static func listDirectory(_ path: String) -> [String]? {
        Directory.entryNames(at: path)
    }

    // MARK: network

    /// rp_filter of `all` and the interface (the kernel uses the higher). Information only: the
    /// data path works with 0, 1 and 2.
    static func rpFilter(interface: String, root: String = "/proc/sys/net/ipv4/conf") -> DoctorFinding {
        func value(_ name: String) -> Int? {
            ProcessMetrics.readSmallFile("\(root)/\(name)/rp_filter").flatMap { Int($0.trimmingSpacesAndNewlines()) }
        }
        let all = value("all")
        let own = value(interface)
        guard let effective = [all, own].compactMap({ $0 }).max() else {
            return DoctorFinding("rp_filter", .info, "rp_filter of \(interface) not readable under \(root)")
        }
        let meaning = effective == 0 ? "off" : effective == 1 ? "strict" : "loose"
        return DoctorFinding("rp_filter", .info,
                             "rp_filter all=\(all.map(String.init) ?? "?") \(interface)=\(own.map(String.init) ?? "?") (in effect: \(effective), \(meaning)); the data path works with 0, 1 and 2")
    }

    static func mtu(external: ExternalInterface, config: NetworkConfig?, subnetEnv: SubnetEnv?, subnetFile: String,
                    devices: [(name: String, mtu: Int)]) -> [DoctorFinding] {
        let interface = external.interface
        let backendMTU = config?.backend.mtu ?? 0
        let vxlan = config.map { $0.backend.type == "vxlan" } ?? true
        guard vxlan else {
            return [DoctorFinding("mtu", .ok, "\(interface.name) MTU \(interface.mtu); backend \(config?.backend.type ?? "?") (no VXLAN overhead check)")]
        }
        let underlay = backendMTU > 0 ? backendMTU : interface.mtu
        let expected = underlay - 50
        var findings: [DoctorFinding] = []
        if backendMTU > interface.mtu {
            findings.append(DoctorFinding("mtu", .warning,
                                          "Backend.MTU \(backendMTU) is above \(interface.name)'s MTU \(interface.mtu): the overlay's full-size packets do not fit the underlay and are dropped",
                                          fix: "set Backend.MTU to at most \(interface.mtu) in the network config (or raise \(interface.name)'s MTU)"))
        } else {
            findings.append(DoctorFinding("mtu", .ok, "\(interface.name) MTU \(interface.mtu)\(backendMTU > 0 ? ", Backend.MTU \(backendMTU)" : ""): overlay MTU \(expected) (50 bytes of VXLAN)"))
        }
        let vni = config.map { Int($0.backend.vni) }
        for device in devices where vni == nil || device.name == "flannel.\(vni!)" {
            if device.mtu != expected {
                findings.append(DoctorFinding("mtu", .warning,
                                              "\(device.name) has MTU \(device.mtu), \(expected) expected (\(underlay) − 50): packets between \(expected) and \(device.mtu) bytes get lost or fragmented",
                                              fix: "restart flanneld-xdp (it sets \(device.name)'s MTU), then restart the pods (or docker) so they take FLANNEL_MTU"))
            }
        }
        if let env = subnetEnv, env.mtu != expected {
            findings.append(DoctorFinding("mtu", .warning,
                                          "\(subnetFile) says FLANNEL_MTU=\(env.mtu), \(expected) expected: pods started from it use the wrong MTU",
                                          fix: "restart flanneld-xdp (it rewrites \(subnetFile)), then the pods (or docker) so they read the new MTU"))
        }
        return findings
    }

    static func hostPrograms(_ options: FlannelOptions) -> [DoctorFinding] {
        var findings: [DoctorFinding] = []
        for (program, needed, purpose, flag) in [
            (HostProgram.iptables, options.hostRules.iptablesForwardRules, "flannel's FORWARD accepts", "--iptables-forward-rules=false"),
            (HostProgram.nft, options.subnet.ipMasq, "--ip-masq's masquerade table", "no --ip-masq"),
        ] {
            if let path = program.path {
                findings.append(DoctorFinding(program.rawValue, .ok, "\(path) (\(purpose))"))
            } else if needed {
                findings.append(DoctorFinding(program.rawValue, .warning,
                                              "\(program.rawValue) not found (\(program.candidates.joined(separator: ", "))): \(purpose) cannot be set up",
                                              fix: "apt-get install \(program.package) (or run with \(flag))"))
            } else {
                findings.append(DoctorFinding(program.rawValue, .info, "\(program.rawValue) not found; not needed with \(flag)"))
            }
        }
        return findings
    }

    // MARK: etcd

    /// Each endpoint on its own: reachable, TLS, the network config. Returns the config when one
    /// endpoint served a valid one (the MTU check uses it).
    static func etcd(_ options: EtcdOptions) async -> (findings: [DoctorFinding], config: NetworkConfig?) {
        var findings: [DoctorFinding] = []
        var config: NetworkConfig?
        if let warning = EtcdEndpoint.plainTextWarning(options.endpointList) {
            findings.append(DoctorFinding("etcd", .warning, warning,
                                          fix: "use https:// endpoints with --etcd-cafile, --etcd-certfile and --etcd-keyfile"))
        }
        for endpoint in options.endpointList {
            var client = Startup.etcdClientOptions(options)
            client.endpoints = [endpoint]
            client.connectTimeout = .seconds(3)
            client.requestTimeout = .seconds(5)
            do {
                let (registry, detection) = try await EtcdRegistryFactory.detect(options: client)
                let text = try await registry.getConfigText()
                do {
                    let parsed = try NetworkConfig.parse(text)
                    config = config ?? parsed
                    let tls = endpoint.hasPrefix("https://") ? "TLS verified, " : ""
                    findings.append(DoctorFinding("etcd", .ok,
                                                  "\(endpoint): \(tls)API \(registry.apiVersion.rawValue) (\(detection.reason)), \(options.prefix)/config: Network \(parsed.network), backend \(parsed.backend.type)"))
                } catch {
                    findings.append(DoctorFinding("etcd", .error, "\(endpoint): \(options.prefix)/config is not usable: \(error)",
                                                  fix: "correct the network config in etcd (docs/OPERATIONS.md, the network config field by field)"))
                }
            } catch {
                findings.append(etcdFailure(endpoint: endpoint, prefix: options.prefix, error: error))
            }
        }
        return (findings, config)
    }

    static func etcdFailure(endpoint: String, prefix: String, error: any Error) -> DoctorFinding {
        var error = error
        if case EtcdClientError.allEndpointsFailed(let list)? = error as? EtcdClientError, let first = list.first { error = first }
        switch error {
        case EtcdClientError.tlsSetup(let file, let detail):
            return DoctorFinding("etcd", .error, "\(endpoint): TLS file \(file) cannot be loaded: \(detail)",
                                 fix: "check --etcd-cafile/--etcd-certfile/--etcd-keyfile: PEM files readable by root")
        case EtcdClientError.tls(_, let detail, let hint):
            return DoctorFinding("etcd", .error, "\(endpoint): TLS handshake failed: \(detail)", fix: hint)
        case EtcdClientError.connect, EtcdClientError.timeout, EtcdClientError.closed:
            return DoctorFinding("etcd", .error, "\(endpoint): not reachable: \(error)",
                                 fix: "check that etcd runs there and that this node can reach it (address, port, firewall); the daemon waits for it at start")
        case EtcdClientError.credentialsRejected, EtcdClientError.authentication:
            return DoctorFinding("etcd", .error, "\(endpoint): \(error)", fix: "check --etcd-username and --etcd-password")
        case RegistryError.configNotFound(let key, let api):
            return DoctorFinding("etcd", .error, "\(endpoint): answers, but \(key) does not exist (\(api))",
                                 fix: "write the network config: etcdctl put \(prefix)/config '{\"Network\":\"10.5.0.0/16\",\"Backend\":{\"Type\":\"vxlan\"}}' (v2: etcdctl set)")
        case let ambiguity as EtcdAPIAmbiguity:
            return DoctorFinding("etcd", .error, "\(endpoint): \(ambiguity)", fix: "pass --etcd-api=v2 or v3")
        default:
            return DoctorFinding("etcd", .error, "\(endpoint): \(error)", fix: "see the message; the daemon would retry this at start")
        }
    }
}
