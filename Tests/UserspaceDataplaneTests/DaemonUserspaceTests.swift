// End to end through the daemon: flanneld-xdp processes started with `--dataplane userspace` in lab
// nodes with a real etcd, next to a node on the default (BPF) path; pods reach pods both ways.
// Proves the daemon drives this module as intended (config from the network config, TUN address
// and route, peers from leases) — the module tests above prove the path itself.

import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite(.serialized, .needsRoot, .ownThreads)
struct DaemonUserspaceTests {
    @Test("vxlan: two daemons on the userspace path and one on BPF reach each other")
    func vxlanUserspaceAndBPFDaemons() async throws {
        let cluster = try FlannelCluster(tag: "usd", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 3)
        defer { cluster.cleanup() }
        let nodes = cluster.nodes
        try cluster.startDaemon(nodes[0], extra: ["--dataplane", "userspace"])
        try cluster.startDaemon(nodes[1], extra: ["--dataplane", "userspace"])
        try cluster.startDaemon(nodes[2])
        for a in nodes {
            for b in nodes where a.name != b.name {
                #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 10), "\(a.name) → \(b.name)")
            }
        }
        let userspaceToUserspace = try iperf(cluster.lab, from: nodes[0], to: nodes[1], seconds: 1)
        let bpfToUserspace = try iperf(cluster.lab, from: nodes[2], to: nodes[0], seconds: 1)
        print("daemons: userspace → userspace \(gbps(userspaceToUserspace)) Gbit/s, BPF → userspace \(gbps(bpfToUserspace)) Gbit/s")
        #expect(userspaceToUserspace > bulkTCPFloor && bpfToUserspace > bulkTCPFloor)
        let log = cluster.daemonLog(nodes[0])
        #expect(log.contains("userspace"), "\(log.suffix(2000))")
    }

    @Test("udp backend: two daemons on the userspace path")
    func udpBackendDaemons() async throws {
        let cluster = try FlannelCluster(tag: "usu", api: .v2, daemonPath: TestBinaries.flanneldXDP(), nodes: 2,
                                               backend: #"{"Type":"udp"}"#)
        defer { cluster.cleanup() }
        let nodes = cluster.nodes
        for node in nodes { try cluster.startDaemon(node) }
        #expect(try cluster.lab.waitForPing(from: nodes[0].podNamespace, to: nodes[1].podIP, timeout: 10))
        #expect(try cluster.lab.waitForPing(from: nodes[1].podNamespace, to: nodes[0].podIP, timeout: 10))
        #expect(try cluster.lab.sh(nodes[0].name, ["link", "show", "flannel0"]).contains("mtu 1472"))
    }
}
