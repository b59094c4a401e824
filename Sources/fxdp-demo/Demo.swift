// `make demo`: a three-node flannel cluster in network namespaces, run by flanneld-xdp against a
// real etcd, with pods talking across nodes through the BPF data path. Every step says what it
// does and shows the real state with flanneld-xdp's own tools (`status`, `peers`, `stats`): the
// leases, subnet.env, a stranger's VXLAN dropped and counted, and a `kill -9` of the daemon under
// a 100-per-second ping that loses nothing. Everything it creates is removed at the end, on error,
// and on Ctrl-C.

import ArgumentParser
import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import Synchronization
import TestSupport

/// Set by SIGINT/SIGTERM; steps check it and unwind, so cleanup runs on the normal path.
let interrupted = Atomic<Bool>(false)

struct Interrupted: Error, CustomStringConvertible {
    var description: String { "interrupted" }
}

@main
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fxdp-demo",
        abstract: "Run a 3-node flanneld-xdp cluster in network namespaces and show what happens.")

    @Option(help: "The flanneld-xdp binary (default: the one next to fxdp-demo).")
    var daemon: String = siblingBinary("flanneld-xdp")

    @Option(help: "etcd API generation for the cluster: 2 (flannel <= 0.17) or 3.")
    var etcdAPI: Int = 3

    @Option(help: "Nodes in the cluster (2...9).")
    var nodes: Int = 3

    func validate() throws {
        guard getuid() == 0 else { throw ValidationError("the demo creates network namespaces and loads BPF: run it as root (sudo make demo)") }
        guard access(daemon, X_OK) == 0 else { throw ValidationError("--daemon \(daemon): no executable there; build it with `make build`") }
        guard etcdAPI == 2 || etcdAPI == 3 else { throw ValidationError("--etcd-api \(etcdAPI): use 2 or 3") }
        guard (2...9).contains(nodes) else { throw ValidationError("--nodes \(nodes): use 2 to 9") }
    }

    func run() throws {
        signal(SIGINT) { _ in interrupted.store(true, ordering: .relaxed) }
        signal(SIGTERM) { _ in interrupted.store(true, ordering: .relaxed) }
        let api: ClusterEtcdAPI = etcdAPI == 2 ? .v2 : .v3

        step(1, "Building the lab: \(nodes) nodes on an underlay bridge (192.168.77.0/24), each with one pod behind a cni0 bridge.",
             "Every piece lives in network namespaces made for this run; the host's own network is not touched.")
        let cluster = try FlannelCluster(tag: "demo", api: api, daemonPath: daemon, nodes: nodes)
        defer {
            print("\n== Tearing down: stopping the daemons and etcd, deleting the namespaces and the lab's bpffs.")
            cluster.cleanup()
            print("   done.")
        }
        for n in cluster.nodes {
            say("\(n.name): node IP \(n.nodeIP) on eth0; pod \(n.podNamespace) at \(n.podIP) in \(n.podSubnet)")
        }
        try check()

        step(2, "etcd \(api) is running on the wire at \(cluster.etcdEndpoint); the network config flannel reads:",
             "\(cluster.prefix)/config = \(try cluster.get(cluster.prefix + "/config") ?? "?")")
        try check()

        // --ip-masq as most clusters run it: conntrack then tracks the pods' flows, which is what lets
        // established ones take the fast path.
        let flags = ["--ip-masq"]
        step(3, "Starting flanneld-xdp on every node, with flanneld's own flags:",
             cluster.daemonArguments(cluster.nodes[0], extra: flags).joined(separator: " "))
        for n in cluster.nodes {
            let started = monotonicSeconds()
            try cluster.startDaemon(n, extra: flags)
            let took = Int((monotonicSeconds() - started) * 1000)
            let dataPath = cluster.daemonLog(n).split(separator: "\n").last { $0.contains("data path:") }
                .flatMap { line in line.firstRange(of: "data path:").map { String(line[$0.lowerBound...]) } } ?? ""
            say("\(n.name): ready in \(took) ms; \(dataPath)")
            try check()
        }

        step(4, "What the daemons published: the leases in etcd (the same JSON stock flannel writes) and node 1's subnet.env.")
        for subnet in try cluster.leasedSubnets() {
            say("\(cluster.leaseKey(subnet)) = \(try cluster.get(cluster.leaseKey(subnet)) ?? "?")")
        }
        print("")
        for line in readFileText(cluster.subnetFile(cluster.nodes[0])).split(separator: "\n") { say(String(line)) }
        try check()

        let first = cluster.nodes[0], second = cluster.nodes[1]
        step(5, "Node 1 as an operator sees it: `flanneld-xdp status` and `flanneld-xdp peers`",
             "(the state file, the pinned maps and the attached programs; both work while the daemon runs and after it stopped)")
        try show(cluster, first, ["status", "--bpffs", cluster.bpffs(first), "--subnet-file", cluster.subnetFile(first)])
        try show(cluster, first, ["peers", "--bpffs", cluster.bpffs(first)])
        try check()

        step(6, "Traffic between pods on different nodes, through the overlay:")
        for a in cluster.nodes {
            for b in cluster.nodes where a.name != b.name {
                let r = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 3, interval: 0.05)
                say("ping \(a.podIP) (node \(a.index)) → \(b.podIP) (node \(b.index)): \(r.received)/\(r.sent) replies")
                try check()
            }
        }
        let bps = try cluster.lab.tcpThroughput(from: first.podNamespace, to: second.podNamespace, serverIP: second.podIP, seconds: 2)
        say("iperf3, 2 s, one TCP stream pod 1 → pod 2: \(format1(bps / 1e9)) Gbit/s (a shared, noisy machine: see `make bench` for ratios)")
        say("pings and the first packets of each flow take the kernel's path (BPF encap at flannel.1); once conntrack")
        say("saw the flow answered, its packets skip both nodes' stacks: encapsulated at the pod's veth, handed into the pod:")
        try show(cluster, first, ["stats", "--bpffs", cluster.bpffs(first)],
                 only: { $0.hasPrefix("COUNTER") || $0.hasPrefix("encap_ok ") || $0.hasPrefix("fast_encap_ok") || $0.hasPrefix("fast_decap_ok") })
        try check()

        step(7, "A stranger on the wire (192.168.77.50, no lease) sends VXLAN to node 1 aimed at its pod:",
             "stock flannel's vxlan socket would take it; flanneld-xdp drops it before the kernel, counts it (decap_drop_not_peer) and shows it in `monitor`.")
        let stranger = cluster.lab.name("st")
        try cluster.lab.addNamespace(stranger)
        try cluster.lab.sh(cluster.lab.wireNamespace, ["link", "add", "vst", "type", "veth", "peer", "name", "eth0", "netns", stranger])
        try cluster.lab.sh(cluster.lab.wireNamespace, ["link", "set", "vst", "master", "br0", "up"])
        try cluster.lab.sh(stranger, ["addr", "add", "192.168.77.50/24", "dev", "eth0"])
        try cluster.lab.sh(stranger, ["link", "set", "eth0", "up"])
        let before = try dropCount(cluster, first)
        let vtep = try cluster.lab.sh(first.name, ["/bin/cat", "/sys/class/net/flannel.1/address"]).split(separator: "\n").first.map(String.init) ?? ""
        let frame = PacketBuilder.vxlan(vni: 1)
            + PacketBuilder.ethernet(dst: MACAddress(vtep) ?? MACAddress(bytes: [2, 0, 0, 0, 0, 1]), src: MACAddress(bytes: [2, 0, 0, 0, 0x99, 0x99]),
                                     type: EtherType.ipv4)
            + PacketBuilder.ipv4(src: IPv4Address(10, 5, 3, 7), dst: first.podIP, proto: IPProto.icmp,
                                 payload: PacketBuilder.icmpEcho(id: 77, sequence: 1, payload: Array(repeating: 0x42, count: 32)))
        // `flanneld-xdp monitor` on node 1 shows each drop as it happens.
        let monitor = try cluster.lab.spawn(first.name, [cluster.daemonPath, "monitor", "--count", "5", "--bpffs", cluster.bpffs(first)])
        defer { monitor.terminate() }
        for _ in 0..<100 where !((try? cluster.monitorListens(first)) ?? false) { usleep(50_000) }
        try UDPSender.send(namespace: stranger, to: first.nodeIP, port: 8472, payload: frame, count: 5)
        _ = monitor.waitExit(timeout: 10)
        print("\n   $ flanneld-xdp monitor --count 5")
        for line in monitor.output().split(separator: "\n") { say(String(line)) }
        var after = try dropCount(cluster, first)
        for _ in 0..<40 where after < before + 5 {
            usleep(50_000)
            after = try dropCount(cluster, first)
        }
        say("5 datagrams sent; decap_drop_not_peer on node 1: \(before) → \(after)")
        try show(cluster, first, ["stats", "--bpffs", cluster.bpffs(first)], only: { $0.hasPrefix("COUNTER") || $0.hasPrefix("decap_drop_not_peer") })
        try check()

        step(8, "`kill -9` of node 1's daemon while pod 1 pings pod 2 every 10 ms; then a restart.",
             "The programs stay attached and the maps pinned: traffic never depended on the process.")
        let ping = try cluster.lab.spawn(first.podNamespace, [LabTools.ping, "-n", "-q", "-i", "0.01", "-W", "2", "\(second.podIP)"])
        usleep(1_000_000)
        cluster.killDaemon(first)
        say("daemon killed (SIGKILL); `status` now says:")
        try show(cluster, first, ["status", "--bpffs", cluster.bpffs(first), "--subnet-file", cluster.subnetFile(first)],
                 only: { $0.hasPrefix("daemon:") || $0.hasPrefix("programs:") })
        usleep(1_000_000)
        let restarted = monotonicSeconds()
        try cluster.startDaemon(first, extra: flags)
        say("restarted, ready again in \(Int((monotonicSeconds() - restarted) * 1000)) ms")
        usleep(1_000_000)
        ping.kill(SIGINT)
        _ = ping.waitExit(timeout: 5)
        let summary = ping.output().split(separator: "\n").first { $0.contains("packets transmitted") }.map(String.init) ?? "?"
        say("ping: \(summary)")
        try check()

        step(9, "Node 1's counters with `flanneld-xdp stats` (per-CPU map \(FXDP_MAP_COUNTERS), summed; every packet the programs see bumps exactly one):")
        try show(cluster, first, ["stats", "--bpffs", cluster.bpffs(first)], only: { line in
            !line.hasSuffix("0                 0  ok") && !line.contains(" 0                 0  ")
        })
        print("\nThe cluster worked: leases in etcd, peers in BPF maps, pod traffic encapsulated in VXLAN by BPF, a stranger refused, a crash unnoticed.")
    }

    /// Runs `flanneld-xdp <arguments>` in `node` and prints its output (the lines `only` keeps).
    private func show(_ cluster: FlannelCluster, _ node: LabNode, _ arguments: [String],
                      only: (Substring) -> Bool = { _ in true }) throws {
        let r = try cluster.runTool(node, arguments)
        print("\n   $ flanneld-xdp \(arguments[0])")
        for line in (r.stdout + r.stderr).split(separator: "\n") where only(line) { say(String(line)) }
    }

    /// Node 1's decap_drop_not_peer packets, from `flanneld-xdp stats --json`.
    private func dropCount(_ cluster: FlannelCluster, _ node: LabNode) throws -> UInt64 {
        let json = try cluster.runTool(node, ["stats", "--bpffs", cluster.bpffs(node), "--json"]).stdout
        guard let range = json.firstRange(of: #""name":"decap_drop_not_peer","drop":true,"packets":"#) else { return 0 }
        return UInt64(json[range.upperBound...].prefix { $0.isNumber }) ?? 0
    }

    private func check() throws {
        if interrupted.load(ordering: .relaxed) { throw Interrupted() }
    }
}

private func step(_ n: Int, _ title: String, _ detail: String? = nil) {
    print("\n== [\(n)/9] \(title)")
    if let detail { print("   \(detail)") }
}

private func say(_ line: String) { print("   \(line)") }


private func format1(_ x: Double) -> String {
    let tenths = Int((x * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

private extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// The path of `name` in the same folder as this executable.
func siblingBinary(_ name: String) -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return name }
    let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/") + "/" + name
}

func readFileText(_ path: String) -> String { readFile(path) }
