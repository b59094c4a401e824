// `make demo`: a three-node flannel cluster in network namespaces, run by flanneld-xdp against a
// real etcd, with pods talking across nodes through the BPF data path. Every step says what it
// does and shows the real state (etcd keys, subnet.env, the pinned BPF maps through bpftool, the
// per-reason counters). Everything it creates is removed at the end, on error, and on Ctrl-C.

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

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a 3-node flanneld-xdp cluster in network namespaces and show what happens.")

    @Option(help: "The flanneld-xdp binary (default: the one next to fxdp-lab).")
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

        step(3, "Starting flanneld-xdp on every node, with flanneld's own flags:",
             cluster.daemonArguments(cluster.nodes[0]).joined(separator: " "))
        for n in cluster.nodes {
            let started = monotonicSeconds()
            try cluster.startDaemon(n)
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

        let first = cluster.nodes[0]
        step(5, "Node 1's BPF peer map, pinned with BTF, as `bpftool map dump pinned \(cluster.pinFolder(first))/\(FXDP_MAP_PEERS)` prints it:",
             "remote pod subnet → the peer's node IP and VTEP MAC; the TC encap program looks packets up here.")
        let dump = try cluster.lab.run(nil, ["/usr/sbin/bpftool", "map", "dump", "pinned", cluster.pinFolder(first) + "/" + FXDP_MAP_PEERS])
        for line in (dump.status == 0 ? dump.stdout : dump.stderr).split(separator: "\n") { say(String(line)) }
        try check()

        step(6, "Traffic between pods on different nodes, through the overlay:")
        for a in cluster.nodes {
            for b in cluster.nodes where a.name != b.name {
                let r = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 3, interval: 0.05)
                say("ping \(a.podIP) (node \(a.index)) → \(b.podIP) (node \(b.index)): \(r.received)/\(r.sent) replies")
                try check()
            }
        }
        let second = cluster.nodes[1]
        let bps = try cluster.lab.tcpThroughput(from: first.podNamespace, to: second.podNamespace, serverIP: second.podIP, seconds: 2)
        say("iperf3, 2 s, one TCP stream pod 1 → pod 2: \(format1(bps / 1e9)) Gbit/s (a shared, noisy machine: see `make bench` for ratios)")
        try check()

        step(7, "Node 1's counters (per-CPU map \(FXDP_MAP_COUNTERS), summed; every packet the programs see bumps exactly one):")
        let counters = try PerCPUMap.openPinned(path: cluster.pinFolder(first) + "/" + FXDP_MAP_COUNTERS,
                                                key: UInt32.self, value: fxdp_count.self)
        for c in FXDPCounter.allCases {
            let values = try counters.lookup(c.rawValue)
            let packets = values.reduce(0) { $0 + $1.packets }, bytes = values.reduce(0) { $0 + $1.bytes }
            if packets > 0 { say("\(c.name.padding(26)) \(packets) packets, \(bytes) bytes") }
        }
        print("\nThe cluster worked: leases in etcd, peers in BPF maps, pod traffic encapsulated in VXLAN by BPF.")
    }

    private func check() throws {
        if interrupted.load(ordering: .relaxed) { throw Interrupted() }
    }
}

private func step(_ n: Int, _ title: String, _ detail: String? = nil) {
    print("\n== [\(n)/7] \(title)")
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
