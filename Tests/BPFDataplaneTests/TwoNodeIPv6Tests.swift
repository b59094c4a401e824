// Two dual-stack flannel nodes in network namespaces, no etcd: each is first a stock flannel node with
// both kernel devices (flannel.1 and flannel-v6.1 over an IPv6 underlay on the same wire, neighbour/
// fdb/route per peer as flanneld programs them), then our programs are attached with the IPv6 half
// and the maps filled from Swift. IPv6 pods ping and stream TCP THROUGH the BPF path in both decap
// modes (IPv4 keeps working beside it), then one node is detached — a stock flannel node again —
// and IPv6 still flows both ways: the wire format is flannel-v6's.

import BPFDataplane
import BPFLoader
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

/// The IPv6 side of a lab node: the node's IPv6 address on the underlay, its IPv6 pod subnet, and
/// flannel-v6.1 made as flanneld makes it (local = the node's IPv6 address, dstport 8472,
/// nolearning, the kernel's MTU, the subnet's first address /128).
struct DualStackSide: Sendable {
    let node: LabNode
    let nodeIP: IPv6Address
    let pods: IPv6Subnet
    let podIP: IPv6Address
    let vtepMAC: MACAddress
    let overlay: Int32

    static func underlay(_ index: Int) -> IPv6Address { IPv6Address("fd00:77::\(index)")! }
    static func pods(_ index: Int) -> IPv6Subnet { IPv6Subnet(address: IPv6Address("fd10:5:\(index)::")!, prefixLength: 64)! }

    init(lab: NetnsLab, node: LabNode) throws {
        self.node = node
        nodeIP = DualStackSide.underlay(node.index)
        pods = DualStackSide.pods(node.index)
        podIP = IPv6Address("fd10:5:\(node.index)::2")!
        let gateway = "fd10:5:\(node.index)::1"
        try lab.sysctl(node.name, ["net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        try lab.sh(node.name, ["-6", "addr", "add", "\(nodeIP)/64", "dev", node.underlayIfname, "nodad"])
        try lab.sh(node.name, ["-6", "addr", "add", "\(gateway)/64", "dev", "cni0", "nodad"])
        try lab.sysctl(node.podNamespace, ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        try lab.sh(node.podNamespace, ["-6", "addr", "add", "\(podIP)/64", "dev", "eth0", "nodad"])
        try lab.sh(node.podNamespace, ["-6", "route", "add", "default", "via", gateway])
        try lab.sh(node.name, ["link", "add", "flannel-v6.1", "type", "vxlan", "id", "1", "local", "\(nodeIP)", "dev", node.underlayIfname,
                               "dstport", "8472", "nolearning"])
        try lab.sysctl(node.name, ["net.ipv6.conf.flannel-v6/1.accept_ra=0"])
        try lab.sh(node.name, ["-6", "addr", "add", "\(pods.address)/128", "dev", "flannel-v6.1", "nodad"])
        try lab.sh(node.name, ["link", "set", "flannel-v6.1", "up"])
        vtepMAC = try lab.linkMAC(node.name, "flannel-v6.1")
        overlay = try lab.linkIndex(node.name, "flannel-v6.1")
    }

    var asPeer: BPFPeer6 { BPFPeer6(subnet: pods, publicIP: nodeIP, vtepMAC: vtepMAC) }

    /// flanneld's three entries for `peer` on flannel-v6.1, in its order: neighbour, fdb, onlink route.
    func addKernelRoutes(_ lab: NetnsLab, to peer: DualStackSide) throws {
        let gateway = "\(peer.pods.address)"
        try lab.sh(node.name, ["-6", "neigh", "replace", gateway, "lladdr", "\(peer.vtepMAC)", "dev", "flannel-v6.1", "nud", "permanent"])
        try lab.sh(node.name, [LabTools.bridge, "fdb", "replace", "\(peer.vtepMAC)", "dev", "flannel-v6.1", "dst", "\(peer.nodeIP)", "self", "permanent"])
        try lab.sh(node.name, ["-6", "route", "replace", "\(peer.pods)", "via", gateway, "dev", "flannel-v6.1", "onlink"])
    }

    func config(lab: NetnsLab) throws -> NodeConfig6 {
        NodeConfig6(nodeIP: nodeIP, vtepMAC: vtepMAC, overlayIfindex: overlay, overlayMTU: UInt16(node.underlayMTU - 70),
                    network: IPv6Subnet(address: IPv6Address("fd10:5::")!, prefixLength: 32))
    }
}

@Suite(.needsRoot, .ownThreads)
struct TwoNodeIPv6Tests {
    @Test(arguments: DecapMode.allCases)
    func ipv6PodsTalkThroughTheBPFPathAndWithAStockFlannelV6Node(mode: DecapMode) throws {
        let lab = try NetnsLab(tag: "bpf6")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let standIns = try nodes.map { try lab.makeFlannelStandIn(node: $0) }
        for (i, node) in nodes.enumerated() { try lab.addFlannelPeerRoutes(on: node, peer: standIns[1 - i].asPeer) }
        let sides = try nodes.map { try DualStackSide(lab: lab, node: $0) }
        for i in 0..<2 { try sides[i].addKernelRoutes(lab, to: sides[1 - i]) }
        // Stock flannel on both nodes first: the reference works for both families.
        #expect(try lab.waitForPing(from: nodes[0].podNamespace, to: sides[1].podIP))
        #expect(try lab.waitForPing(from: nodes[0].podNamespace, to: nodes[1].podIP))

        let n1 = try FlannelNodeUnderTest(lab: lab, node: nodes[0], standIn: standIns[0], peers: [standIns[1].asPeer],
                                          ipv6: (try sides[0].config(lab: lab), [sides[1].asPeer]))
        defer { n1.close() }
        let n2 = try FlannelNodeUnderTest(lab: lab, node: nodes[1], standIn: standIns[1], peers: [standIns[0].asPeer],
                                          ipv6: (try sides[1].config(lab: lab), [sides[0].asPeer]))
        defer { n2.close() }
        let s1 = try n1.attach(mode), s2 = try n2.attach(mode)
        #expect(s1.decapMode == mode && s2.decapMode == mode)
        #expect(s1.encap6ProgramID != nil && s1.door6ProgramID != nil && s1.podGuard6ProgramID != nil && s2.encap6ProgramID != nil,
                "the IPv6 half attached: \(s1)")
        let decap6: FXDPCounter = mode == .xdp ? .decap6OK : .decap6CheckOK
        // Forget the underlay neighbours: the first IPv6 packet finds none and goes through the
        // kernel device, which resolves it; nothing may be lost.
        for node in nodes { try lab.sh(node.name, ["-6", "neigh", "flush", "dev", node.underlayIfname]) }

        let ping12 = try lab.ping(from: nodes[0].podNamespace, to: sides[1].podIP, count: 5, interval: 0.1)
        let ping21 = try lab.ping(from: nodes[1].podNamespace, to: sides[0].podIP, count: 5, interval: 0.1)
        #expect(ping12.received == 5 && ping21.received == 5, "IPv6 through BPF both ways (\(mode)): \(ping12) \(ping21)")
        let bps = try throughputRetrying(lab, from: nodes[0].podNamespace, to: nodes[1].podNamespace, serverIP: sides[1].podIP, seconds: 2)
        #expect(bps > 1_000_000, "IPv6 TCP (\(mode)): \(bps) bit/s")
        let ping4 = try lab.ping(from: nodes[0].podNamespace, to: nodes[1].podIP, count: 3, interval: 0.1)
        #expect(ping4.received == 3, "IPv4 beside it (\(mode)): \(ping4)")

        let c1 = try n1.bpf.counters(), c2 = try n2.bpf.counters()
        #expect(c1[.encap6OK]!.packets >= 5 && c2[.encap6OK]!.packets >= 5, "IPv6 encapsulated by BPF: \(c1) / \(c2)")
        #expect(c1[.encapPassNoNeigh]!.packets >= 1, "node 1's first IPv6 packet went to the kernel to resolve its peer: \(c1)")
        // The pod's TCP reaches flannel-v6.1 as GSO super-packets, which the kernel device carries
        // (each segment needs its own UDP checksum); what is not GSO (ACKs, pings) is ours.
        #expect(c1[.encap6PassGSO]!.packets >= 1, "GSO left to the kernel: \(c1)")
        #expect(c1[decap6]!.packets >= 10 && c2[decap6]!.packets >= 10, "IPv6 decap (\(mode)): \(c1) / \(c2)")
        #expect(c2[decap6]!.bytes > 1_000_000, "the TCP stream was checked (tc) or decapsulated (xdp) by BPF on node 2")
        if mode == .xdp {
            #expect(c2[.decap6SteerOK]!.packets >= 10, "XDP-stripped IPv6 steered into flannel-v6.1: \(c2)")
        } else {
            #expect(c2[.door6OK]!.packets >= 10, "valid IPv6 VXLAN met the IPv6 door on its way to the kernel device: \(c2)")
        }
        #expect(c1[.encapOK]!.packets >= 3, "IPv4 still through BPF: \(c1)")
        for counts in [c1, c2] {
            #expect(counts.filter { $0.key.isDrop && $0.value.packets > 0 }.isEmpty, "no drops: \(counts)")
        }
        print("two-node IPv6 \(mode): \(Int(bps / 1e6)) Mbit/s; node 1 encap6 \(c1[.encap6OK]!), gso to kernel \(c1[.encap6PassGSO]!); "
            + "node 2 \(decap6.name) \(c2[decap6]!)")

        // Node 2 becomes a stock flannel node: IPv6 between a BPF node and flannel-v6's kernel device.
        try n2.detach()
        #expect(try NetnsThread.run(namespace: nodes[1].name) {
            try FlannelBPF.attachmentState(overlayIfindex: n2.overlay, underlayIfindex: n2.underlay, pinDirectory: n2.bpf.pinDirectory,
                                           overlay6Ifindex: n2.overlay6)
        }.isEmpty)
        let d1 = try mixedTraffic(lab, nodes, podIPs: sides.map(\.podIP), bpf: n1.bpf, family: "IPv6 ", mode: mode)
        #expect((d1[.encap6OK]?.packets ?? 0) >= 5, "node 1 still encapsulates IPv6: \(d1)")
        #expect((d1[decap6]?.packets ?? 0) >= 5, "node 1 decapsulates flannel-v6's frames: \(d1)")
    }

    @Test func ipv6HalfComesAndGoesWithFlannelV6() throws {
        let lab = try NetnsLab(tag: "bpf6")
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        let standIn = try lab.makeFlannelStandIn(node: node)
        let side = try DualStackSide(lab: lab, node: node)
        let n = try FlannelNodeUnderTest(lab: lab, node: node, standIn: standIn, peers: [], ipv6: (try side.config(lab: lab), []))
        defer { n.close() }
        let both = try n.attach(.tc)
        #expect(both.encap6ProgramID != nil && both.door6ProgramID != nil && both.podGuard6ProgramID != nil)
        // Again: the same programs stay (ids unchanged).
        #expect(try n.attach(.tc) == both)
        // Attached without flannel-v6 (the node no longer runs IPv6): the IPv6 half goes, IPv4 stays.
        let v4Only = try NetnsThread.run(namespace: node.name) {
            try n.bpf.attach(overlayIfindex: n.overlay, underlayIfindex: n.underlay, mode: .tc)
        }
        let after = try NetnsThread.run(namespace: node.name) {
            try FlannelBPF.attachmentState(overlayIfindex: n.overlay, underlayIfindex: n.underlay, pinDirectory: n.bpf.pinDirectory,
                                           overlay6Ifindex: n.overlay6)
        }
        #expect(!after.hasIPv6 && after.encapProgramID == both.encapProgramID && after.doorProgramID == both.doorProgramID, "\(after)")
        #expect(!v4Only.hasIPv6)
        // The IPv6 netfilter links are IPv6's: their family says so.
        let both2 = try n.attach(.tc)
        let link = try BPFLink.openPinned(path: n.bpf.pinDirectory + "/link_fxdp_vxlan_door6").info()
        #expect(link.netfilterFamily == NetfilterFamily.ipv6.rawValue && link.netfilterHook == NetfilterHook.localIn.rawValue)
        #expect(both2.door6ProgramID == link.programID)

        // A changed build over the same maps (an upgrade staged with --bpf-object): fxdp_encap6 is
        // swapped in place on the same tcx link, the IPv6 doors get new links first.
        let objects = "/tmp/\(lab.prefix)-objects"
        try sh(["mkdir", "-p", objects])
        defer { _ = try? sh(["rm", "-rf", objects]) }
        try BPFVariantObject.compile(variant: 6, to: objects + "/v6.o")
        let changed = try FlannelBPF(bpffs: n.bpffs.path, object: .file(objects + "/v6.o"))
        let encapLink = try BPFLink.openPinned(path: n.bpf.pinDirectory + "/" + FXDPSlots.overlay6EgressPin).info()
        let upgraded = try NetnsThread.run(namespace: node.name) {
            try changed.attach(overlayIfindex: n.overlay, underlayIfindex: n.underlay, mode: .tc, overlay6Ifindex: n.overlay6)
        }
        let changedEncap6 = try changed.program(.encap6).info().id, changedDoor6 = try changed.program(.vxlanDoor6).info().id
        #expect(upgraded.encap6ProgramID == changedEncap6 && upgraded.encap6ProgramID != both2.encap6ProgramID)
        #expect(try BPFLink.openPinned(path: n.bpf.pinDirectory + "/" + FXDPSlots.overlay6EgressPin).info().id == encapLink.id,
                "the same tcx link")
        let door6 = try BPFLink.openPinned(path: n.bpf.pinDirectory + "/link_fxdp_vxlan_door6").info()
        #expect(door6.id != link.id && door6.programID == changedDoor6 && door6.netfilterPriority == FXDPSlots.netfilterPriority - 1)
        try n.detach()
        #expect(try NetnsThread.run(namespace: node.name) {
            try FlannelBPF.attachmentState(overlayIfindex: n.overlay, underlayIfindex: n.underlay, pinDirectory: n.bpf.pinDirectory,
                                           overlay6Ifindex: n.overlay6)
        }.isEmpty)
    }
}
