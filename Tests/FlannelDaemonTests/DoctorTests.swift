// `flanneld-xdp doctor`: each finding made true in a lab node's network namespace (and, where the
// condition is a file or a capability, in a mount namespace or under a bounding set of the test's
// own), checked through the binary's --json output and exit status; the pure judgments (kernel
// versions, MTU arithmetic, exit statuses) without a node.

import CBPF
import Dataplane
@testable import FlannelDaemon
import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import TestSupport
import TestTraits
import Testing

/// One finding of `doctor --json`.
struct Finding: CustomStringConvertible {
    var check: String
    var severity: String
    var summary: String
    var fix: String
    var description: String { "\(severity) \(check): \(summary)\(fix.isEmpty ? "" : " [fix: \(fix)]")" }
}

extension DaemonSuite {
@Suite("doctor (root, netns, real etcd with TLS)", .serialized, .needsRoot)
struct DoctorTests {
    /// Runs `doctor --json` in `node`'s namespace, wrapped by `wrapper` (setpriv, unshare); returns
    /// the exit status and the findings.
    static func doctor(_ cluster: FlannelCluster, _ node: LabNode, _ arguments: [String], wrapper: [String] = []) throws
        -> (status: Int32, findings: [Finding], output: String) {
        let command = wrapper + [TestBinaries.flanneldXDP(), "doctor", "--json"] + arguments
        let result = try cluster.lab.run(node.name, command)
        guard let json = try? JSONValue.parse(result.stdout) else {
            Issue.record("doctor printed no JSON (exit \(result.status)): \(result.stdout)\(result.stderr)")
            return (result.status, [], result.stdout + result.stderr)
        }
        let findings = (json["findings"]?.arrayValue ?? []).map {
            Finding(check: $0["check"]?.stringValue ?? "", severity: $0["severity"]?.stringValue ?? "",
                    summary: $0["summary"]?.stringValue ?? "", fix: $0["fix"]?.stringValue ?? "")
        }
        #expect(json["exitStatus"]?.int64Value == Int64(result.status), "the JSON's exitStatus is the process's")
        return (result.status, findings, result.stdout + result.stderr)
    }

    @Test("a ready node is fine; then each problem made true in turn is found, with its fix and the exit status")
    func findings() async throws {
        let certs = try await TLSTestCerts.generate(tag: "doc", serverIPs: [FlannelCluster.etcdAddress.description])
        defer { certs.remove() }
        let cluster = try FlannelCluster(tag: "doc", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 1, tls: certs)
        defer { cluster.cleanup() }
        let node = cluster.nodes[0]
        let tls = ["--etcd-cafile", certs.caCert, "--etcd-certfile", certs.clientCert, "--etcd-keyfile", certs.clientKey]
        let base = ["--iface", node.underlayIfname, "--etcd-endpoints", cluster.etcdEndpoint, "--bpffs", cluster.bpffs(node),
                    "--subnet-file", cluster.subnetFile(node)]
        try cluster.lab.sh(nil, ["/bin/mkdir", "-p", cluster.bpffs(node)])

        // All well: every check ok (rp_filter is information), exit 0.
        let good = try Self.doctor(cluster, node, base + tls)
        #expect(good.status == 0, "\(good.findings)")
        let bySeverity = { (r: (status: Int32, findings: [Finding], output: String), check: String) in
            r.findings.filter { $0.check == check }.map(\.severity)
        }
        for check in ["kernel", "netfilter-links", "tcx-links", "xdp", "tc", "capabilities", "bpffs", "abi-pins", "etcd", "mtu", "nft", "iptables"] {
            #expect(bySeverity(good, check) == ["ok"], "\(check): \(good.findings.filter { $0.check == check })")
        }
        #expect(good.findings.contains { $0.check == "etcd" && $0.summary.contains("TLS verified, API v3") && $0.summary.contains("Network 10.5.0.0/16") },
                "\(good.findings)")
        #expect(good.findings.contains { $0.check == "rp_filter" && $0.severity == "info" })

        // etcd: a certificate authority that did not sign the server's certificate; nothing listening.
        var wrongCA = tls
        wrongCA[1] = certs.otherCACert
        let badTLS = try Self.doctor(cluster, node, base + wrongCA)
        #expect(badTLS.status == 2)
        #expect(badTLS.findings.contains { $0.check == "etcd" && $0.severity == "error" && $0.summary.contains("TLS") && !$0.fix.isEmpty },
                "\(badTLS.findings)")
        var closed = base
        closed[3] = "https://\(FlannelCluster.etcdAddress):2"
        let unreachable = try Self.doctor(cluster, node, closed + tls)
        #expect(unreachable.status == 2)
        #expect(unreachable.findings.contains { $0.check == "etcd" && $0.severity == "error" && $0.summary.contains("not reachable") },
                "\(unreachable.findings)")

        // Capabilities: only CAP_NET_ADMIN. auto falls back (warning); --dataplane=xdp cannot run (error).
        let setpriv = ["/usr/bin/setpriv", "--bounding-set=-all,+net_admin", "--"]
        let fewCaps = try Self.doctor(cluster, node, base + tls, wrapper: setpriv)
        #expect(fewCaps.findings.contains { $0.check == "capabilities" && $0.severity == "warning"
                && $0.summary.contains("CAP_BPF and CAP_PERFMON missing") && $0.fix.contains("CapabilityBoundingSet") }, "\(fewCaps.findings)")
        #expect(fewCaps.status == 1, "\(fewCaps.findings)")
        // Without CAP_BPF the kernel cannot be asked about program types: said, not guessed.
        #expect(fewCaps.findings.contains { $0.check == "xdp" && $0.severity == "info" && $0.summary.contains("not probed") }, "\(fewCaps.findings)")
        let strict = try Self.doctor(cluster, node, base + tls + ["--dataplane", "xdp"], wrapper: setpriv)
        #expect(strict.status == 2 && strict.findings.contains { $0.check == "capabilities" && $0.severity == "error" }, "\(strict.findings)")

        // bpffs: a plain folder where the pins would go.
        let plain = "\(cluster.workDir)/not-bpffs"
        try cluster.lab.sh(nil, ["/bin/mkdir", "-p", plain])
        var notMounted = base
        notMounted[5] = plain
        let noBPFFS = try Self.doctor(cluster, node, notMounted + tls)
        #expect(noBPFFS.findings.contains { $0.check == "bpffs" && $0.severity == "warning" && $0.fix.contains("mount -t bpf bpf \(plain)") },
                "\(noBPFFS.findings)")

        // Pins of another map layout (an earlier version's), named with their paths.
        let pinFolder = cluster.pinFolder(node)
        try cluster.lab.sh(nil, ["/bin/mkdir", "-p", pinFolder])
        let stale = "fxdp_peers_v\(Int(FXDP_ABI_VERSION) + 7)"
        try cluster.lab.sh(nil, ["/usr/sbin/bpftool", "map", "create", "\(pinFolder)/\(stale)", "type", "hash", "key", "4", "value", "4",
                                 "entries", "1", "name", "fxdp_old"])
        let pins = try Self.doctor(cluster, node, base + tls)
        #expect(pins.findings.contains { $0.check == "abi-pins" && $0.severity == "info" && $0.summary.contains(stale)
                && $0.fix.contains("\(pinFolder)/\(stale)") }, "\(pins.findings)")
        _ = try? cluster.lab.sh(nil, ["/bin/rm", "-f", "\(pinFolder)/\(stale)"])

        // rp_filter 2 (loose) on all: reported as information, never a problem.
        try cluster.lab.sysctl(node.name, ["net.ipv4.conf.all.rp_filter=2"])
        let rp = try Self.doctor(cluster, node, base + tls)
        #expect(rp.findings.contains { $0.check == "rp_filter" && $0.severity == "info" && $0.summary.contains("in effect: 2, loose") },
                "\(rp.findings)")
        #expect(rp.status == 0)

        // MTUs: a flannel.1 with the wrong MTU, and a subnet.env written for another one.
        try cluster.lab.sh(node.name, ["link", "add", "flannel.1", "mtu", "1300", "type", "vxlan", "id", "1", "dstport", "8472",
                                       "dev", node.underlayIfname])
        let env = readFile(cluster.subnetFile(node))
        try writeFile(cluster.subnetFile(node), env.replacingMTU(with: 1400))
        let mtu = try Self.doctor(cluster, node, base + tls)
        #expect(mtu.findings.contains { $0.check == "mtu" && $0.severity == "warning" && $0.summary.contains("flannel.1 has MTU 1300, 1450 expected") },
                "\(mtu.findings)")
        #expect(mtu.findings.contains { $0.check == "mtu" && $0.severity == "warning" && $0.summary.contains("FLANNEL_MTU=1400, 1450 expected") },
                "\(mtu.findings)")
        #expect(mtu.status == 1)
        try cluster.lab.sh(node.name, ["link", "del", "flannel.1"])
        try writeFile(cluster.subnetFile(node), env)

        // nft and iptables missing (hidden in a mount namespace of this run only): warnings with
        // --ip-masq and the FORWARD accepts on; without --ip-masq nft is only a note.
        let placeholder = "\(cluster.workDir)/not-a-program"
        try writeFile(placeholder, "")
        let hide = HostProgramPaths.hidingScript(placeholder: placeholder)
        let missing = try Self.doctor(cluster, node, base + tls + ["--ip-masq"], wrapper: hide)
        #expect(missing.findings.contains { $0.check == "nft" && $0.severity == "warning" && $0.fix.contains("apt-get install nftables") },
                "\(missing.findings)")
        #expect(missing.findings.contains { $0.check == "iptables" && $0.severity == "warning" && $0.fix.contains("apt-get install iptables") },
                "\(missing.findings)")
        let noMasq = try Self.doctor(cluster, node, base + tls, wrapper: hide)
        #expect(noMasq.findings.contains { $0.check == "nft" && $0.severity == "info" }, "\(noMasq.findings)")
    }
}
}

/// Hides nft and iptables (every path HostProgram looks at) for one command: a private mount
/// namespace where each is covered by an empty, non-executable file.
enum HostProgramPaths {
    /// `placeholder`: an empty file of mode 0644 (the caller's, removed with its folder).
    static func hidingScript(placeholder: String) -> [String] {
        let script = """
            set -e
            for p in /usr/sbin/nft /sbin/nft /usr/bin/nft /usr/sbin/iptables /sbin/iptables /usr/bin/iptables; do
              if [ -e "$p" ]; then mount --bind '\(placeholder)' "$p"; fi
            done
            exec "$@"
            """
        return ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "hide"]
    }
}

private extension String {
    func replacingMTU(with mtu: Int) -> String {
        split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("FLANNEL_MTU=") ? "FLANNEL_MTU=\(mtu)" : String($0) }
            .joined(separator: "\n")
    }
}

@Suite("doctor's judgments")
struct DoctorJudgmentTests {
    @Test("kernel versions: netfilter links from 6.4, tcx from 6.6; older is a warning with auto, an error with xdp/tc, nothing with userspace")
    func kernels() {
        for (release, major, minor) in [("6.1.0-18-amd64", 6, 1), ("6.18.44-fc-v1147", 6, 18), ("5.10.0", 5, 10)] {
            let version = Doctor.kernelVersion(release)
            #expect(version?.major == major && version?.minor == minor, "\(release)")
        }
        #expect(Doctor.kernelVersion("weird") == nil)
        #expect(Doctor.kernel(release: "6.1.0-18-amd64", dataplane: .auto).contains { $0.check == "netfilter-links" && $0.severity == .warning })
        #expect(Doctor.kernel(release: "6.1.0-18-amd64", dataplane: .tc).contains { $0.check == "netfilter-links" && $0.severity == .error })
        #expect(!Doctor.kernel(release: "6.1.0-18-amd64", dataplane: .userspace).contains { $0.check == "netfilter-links" })
        // 6.5: netfilter links, no tcx.
        #expect(Doctor.kernel(release: "6.5.0-1-amd64", dataplane: .auto).contains { $0.check == "netfilter-links" && $0.severity == .ok })
        #expect(Doctor.kernel(release: "6.5.0-1-amd64", dataplane: .xdp).contains { $0.check == "tcx-links" && $0.severity == .error })
        #expect(Doctor.kernel(release: "6.6.0", dataplane: .xdp).allSatisfy { $0.severity == .ok })
        #expect(Doctor.kernel(release: "weird", dataplane: .auto).first?.severity == .warning)
    }

    @Test("BTF missing is a note; exit status follows the worst finding")
    func btfAndExitStatus() {
        #expect(Doctor.btf(path: "/nonexistent/vmlinux").severity == .info)
        #expect(DoctorReport(findings: [DoctorFinding("a", .ok, "x"), DoctorFinding("b", .info, "y")]).exitStatus == 0)
        #expect(DoctorReport(findings: [DoctorFinding("a", .warning, "x", fix: "f")]).exitStatus == 1)
        #expect(DoctorReport(findings: [DoctorFinding("a", .warning, "x", fix: "f"), DoctorFinding("b", .error, "y", fix: "g")]).exitStatus == 2)
        let text = DoctorReport(findings: [DoctorFinding("etcd", .error, "down", fix: "start it")]).text
        #expect(text == "ERROR   etcd            down\n                        fix: start it\n1 error(s), 0 warning(s), 0 note(s); exit status 2\n")
    }

    @Test("MTU arithmetic: Backend.MTU is the underlay's, overlay = MTU − 50; a Backend.MTU above the interface's is a warning")
    func mtuArithmetic() throws {
        let external = ExternalInterface(interface: NetworkInterface(name: "eth0", index: 2, mtu: 1500, ipv4: []),
                                         interfaceAddress: IPv4Address(192, 168, 1, 2), publicIP: IPv4Address(192, 168, 1, 2),
                                         underlaySubnet: IPv4Subnet(cidr: "192.168.1.0/24")!)
        let plain = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
        #expect(Doctor.mtu(external: external, config: plain, subnetEnv: nil, subnetFile: "s", devices: []).map(\.summary)
                == ["eth0 MTU 1500: overlay MTU 1450 (50 bytes of VXLAN)"])
        let jumbo = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":9000}}"#)
        #expect(Doctor.mtu(external: external, config: jumbo, subnetEnv: nil, subnetFile: "s", devices: []).first?.severity == .warning)
        let env = SubnetEnv(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.1.0/24")!, mtu: 1450, ipMasq: false)
        #expect(Doctor.mtu(external: external, config: plain, subnetEnv: env, subnetFile: "s", devices: []).count == 1)
    }
}
