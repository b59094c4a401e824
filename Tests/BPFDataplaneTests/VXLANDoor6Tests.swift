// The IPv6 doors of a dual-stack node, tried with exact frames: flannel-v6.<VNI>'s socket listens on
// the VXLAN port at every local IPv6 address, so the underlay check (on the node's IPv6 address) is
// one door of many and fxdp_vxlan_door6 closes the rest; fxdp_pod_guard6 keeps pods' VXLAN in. A
// node of a one-node lab runs our programs (TC-checked kernel decap) with one IPv6 peer; frames
// from a stranger, from the peer through the wrong door, behind extension headers, with checksum 0,
// and from the pod are written onto the node's underlay (or the pod's veth), each door waiting for
// the counter that must account for its frames. Only the peer's plain VXLAN reaches flannel-v6.1.

import BPFDataplane
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite(.needsRoot, .ownThreads)
struct VXLANDoor6Tests {
    @Test func everyIPv6DoorButThePeersIsClosed() throws {
        let lab = try NetnsLab(tag: "door6")
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        let standIn = try lab.makeFlannelStandIn(node: node)
        let side = try DualStackSide(lab: lab, node: node)
        let peerIP = DualStackSide.underlay(2), stranger = IPv6Address("fd00:77::99")!
        let peerVTEP = MACAddress("02:00:00:00:77:02")!, peerPods = DualStackSide.pods(2)
        let n = try FlannelNodeUnderTest(lab: lab, node: node, standIn: standIn, peers: [],
                                         ipv6: (try side.config(lab: lab), [BPFPeer6(subnet: peerPods, publicIP: peerIP, vtepMAC: peerVTEP)]))
        defer { n.close() }
        try n.attach(.tc)

        let eth0MAC = try lab.linkMAC(node.name, node.underlayIfname)
        let cni0 = IPv6Address("fd10:5:1::1")!
        let inner = PacketBuilder.ethernet(dst: side.vtepMAC, src: peerVTEP, type: EtherType.ipv6Ethernet)
            + PacketBuilder.ipv6(src: IPv6Address("fd10:5:2::7")!, dst: side.podIP, nextHeader: IPProto.icmpv6,
                                 payload: PacketBuilder.icmpv6Echo(src: IPv6Address("fd10:5:2::7")!, dst: side.podIP, id: 6, sequence: 1,
                                                                    payload: Array("door6".utf8)))
        func vxlan(from source: IPv6Address, to destination: IPv6Address, checksum: Bool = true,
                   extensions: [UInt8] = [], first: UInt8? = nil) -> [UInt8] {
            PacketBuilder.vxlan6Frame(outerDst: eth0MAC, outerSrc: MACAddress("02:00:00:00:77:99")!, src: source, dst: destination,
                                      inner: inner, udpChecksum: checksum, extensionHeaders: extensions, extensionNextHeader: first)
        }
        // Destination options (PadN), next header UDP; and nine of them in a chain.
        let oneOption: [UInt8] = [IPProto.udp, 0, 1, 4, 0, 0, 0, 0]
        var nine: [UInt8] = []
        for i in 0..<9 { nine += [i == 8 ? IPProto.udp : IPProto.destinationOptions, 0, 1, 4, 0, 0, 0, 0] }

        let perDoor = 5
        let doors: [(String, [UInt8], FXDPCounter)] = [
            ("a stranger to the node's IPv6 address", vxlan(from: stranger, to: side.nodeIP), .decapDropNotPeer),
            ("a stranger to cni0's IPv6 address", vxlan(from: stranger, to: cni0), .door6DropNotPeer),
            ("the peer to cni0's IPv6 address", vxlan(from: peerIP, to: cni0), .door6DropWrongDoor),
            ("the peer behind destination options", vxlan(from: peerIP, to: side.nodeIP, extensions: oneOption,
                                                          first: IPProto.destinationOptions), .door6DropWrongDoor),
            ("the peer behind nine extension headers", vxlan(from: peerIP, to: side.nodeIP, extensions: nine,
                                                             first: IPProto.destinationOptions), .door6DropWrongDoor),
            ("the peer with UDP checksum 0", vxlan(from: peerIP, to: side.nodeIP, checksum: false), .decap6DropUDPZeroCsum),
        ]
        let received = { () throws -> Int in
            Int(try lab.sh(node.name, ["/bin/cat", "/sys/class/net/flannel-v6.1/statistics/rx_packets"])
                .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
        let receivedBefore = try received()
        for (name, frame, counter) in doors {
            let before = try n.bpf.counters()[counter]?.packets ?? 0
            try FrameSender.send(namespace: lab.wireNamespace, ifname: node.wireIfname, frames: Array(repeating: frame, count: perDoor))
            var now = before
            for _ in 0..<200 where now < before + UInt64(perDoor) {
                usleep(10_000)
                now = try n.bpf.counters()[counter]?.packets ?? 0
            }
            #expect(now == before + UInt64(perDoor), "\(name): \(counter.name) \(before) → \(now)")
        }

        // A pod's VXLAN to an address outside the pod network: dropped on its way through the node.
        let podMAC = try lab.linkMAC(node.podNamespace, "eth0"), cni0MAC = try lab.linkMAC(node.name, "cni0")
        let fromPod = PacketBuilder.vxlan6Frame(outerDst: cni0MAC, outerSrc: podMAC, src: side.podIP, dst: stranger, inner: inner)
        let guardBefore = try n.bpf.counters()[.guard6DropPodVXLAN]?.packets ?? 0
        try FrameSender.send(namespace: node.podNamespace, ifname: "eth0", frames: Array(repeating: fromPod, count: perDoor))
        var guarded = guardBefore
        for _ in 0..<200 where guarded < guardBefore + UInt64(perDoor) {
            usleep(10_000)
            guarded = try n.bpf.counters()[.guard6DropPodVXLAN]?.packets ?? 0
        }
        #expect(guarded == guardBefore + UInt64(perDoor), "the pod's VXLAN out of the pod network: guard6_drop_pod_vxlan")

        // The peer's plain VXLAN to the node's IPv6 address: through both checks, into flannel-v6.1.
        // Counted there after every hostile frame was: none of those may have reached it.
        let okBefore = try n.bpf.counters()[.door6OK]?.packets ?? 0
        try FrameSender.send(namespace: lab.wireNamespace, ifname: node.wireIfname,
                             frames: Array(repeating: vxlan(from: peerIP, to: side.nodeIP), count: perDoor))
        var delivered = try received()
        for _ in 0..<200 where delivered < receivedBefore + perDoor {
            usleep(10_000)
            delivered = try received()
        }
        #expect(delivered == receivedBefore + perDoor, "only the peer's frames reached flannel-v6.1: \(receivedBefore) → \(delivered)")
        let counts = try n.bpf.counters()
        #expect((counts[.door6OK]?.packets ?? 0) - okBefore == UInt64(perDoor) && counts[.decap6CheckOK]!.packets >= UInt64(perDoor))
    }
}
