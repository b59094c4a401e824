// A userspace node and a BPF node in one cluster: node 2 is configured as stock flanneld would
// (flannel.1, neighbour/fdb/route for node 1), then the BPF programs are attached (TC encap on
// flannel.1, XDP or kernel decap on eth0) with maps filled from Swift. Pods talk both ways and the
// BPF counters prove the packets went through the BPF path, not around it.
import BPFDataplane
import BPFLoader
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing
import UserspaceDataplane

@Suite(.serialized, .needsRoot, .ownThreads)
struct MixedBPFTests {
    @Test(arguments: DecapMode.allCases)
    func userspaceNodeAndBPFNode(mode: DecapMode) throws {
        let lab = try NetnsLab(tag: "us")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let a = try makeUserspaceNode(lab: lab, node: nodes[0])
        defer { a.dataplane.stop() }
        let standIn = try lab.makeFlannelStandIn(node: nodes[1])
        try lab.addFlannelPeerRoutes(on: nodes[1], peer: a.asPeer)
        try a.dataplane.upsert(standIn.asPeer)

        let bpffs = "/run/\(lab.name("bpffs"))"
        try BPFFS.ensureMounted(at: bpffs)
        defer { BPFFS.unmount(bpffs); rmdir(bpffs) }
        let bpf = try FlannelBPF(bpffs: bpffs)
        let underlay = try lab.linkIndex(nodes[1].name, nodes[1].underlayIfname)
        let overlay = try lab.linkIndex(nodes[1].name, standIn.ifname)
        try bpf.writeConfig(NodeConfig(
            nodeIP: nodes[1].nodeIP, vtepMAC: standIn.vtepMAC, vni: standIn.vni, udpPort: standIn.port,
            underlayIfindex: underlay, underlayMAC: try lab.linkMAC(nodes[1].name, nodes[1].underlayIfname),
            overlayIfindex: overlay, overlayMTU: UInt16(standIn.mtu)))
        try bpf.peerTable().upsert(a.asPeer)
        try NetnsThread.run(namespace: nodes[1].name) {
            _ = try bpf.attach(overlayIfindex: overlay, underlayIfindex: underlay, mode: mode)
        }
        defer {
            _ = try? NetnsThread.run(namespace: nodes[1].name) {
                try FlannelBPF.detachAll(overlayIfindex: overlay, underlayIfindex: underlay, bpffs: bpffs)
            }
        }

        #expect(try lab.waitForPing(from: nodes[0].podNamespace, to: nodes[1].podIP))
        #expect(try lab.ping(from: nodes[0].podNamespace, to: nodes[1].podIP, count: 5, interval: 0.05).received == 5)
        #expect(try lab.ping(from: nodes[1].podNamespace, to: nodes[0].podIP, count: 5, interval: 0.05).received == 5)
        let toBPF = try iperf(lab, from: nodes[0], to: nodes[1], seconds: 1)
        let fromBPF = try iperf(lab, from: nodes[1], to: nodes[0], seconds: 1)
        print("\(mode): userspace → BPF \(gbps(toBPF)) Gbit/s, BPF → userspace \(gbps(fromBPF)) Gbit/s")
        #expect(toBPF > bulkTCPFloor && fromBPF > bulkTCPFloor)

        let counts = try bpf.counters()
        let encapsulated = (counts[.encapOK]?.packets ?? 0)
        let decapsulated = counts[mode == .xdp ? .decapOK : .decapCheckOK]?.packets ?? 0
        #expect(encapsulated >= 10, "BPF node encapsulated towards the userspace node: \(counts)")
        #expect(decapsulated >= 10, "BPF node decapsulated the userspace node's VXLAN: \(counts)")
        #expect(counts.filter { $0.key.isDrop && $0.value.packets > 0 }.isEmpty, "no BPF drops: \(counts)")
        let c = a.dataplane.counters
        #expect(c[drop: .notPeer] == 0 && c[drop: .badVNI] == 0 && c[drop: .innerNotOurs] == 0 && c[drop: .malformed] == 0, "\(c)")
    }
}
