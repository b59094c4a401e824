// IPv6 pods through the userspace path: two userspace nodes on a dual-stack underlay, and one
// userspace node with a node whose kernel devices (flannel.1 and flannel-v6.1) are set up as stock
// flanneld does, each direction's VXLAN over IPv6 checked field by field on the receiving wire.
import Glibc
import Logging
import NetTypes
import TestSupport
import TestTraits
import Testing
@testable import UserspaceDataplane

let clusterNetwork6 = IPv6Subnet(cidr: "fd00:5::/48")!

struct DualStackUserspaceNode {
    let v4: UserspaceNode
    let v6: LabNodeIPv6
    let vtepMAC6: MACAddress

    var asIPv6Peer: IPv6Peer { IPv6Peer(subnet: v6.podSubnet, publicIP: v6.nodeIP, vtepMAC: vtepMAC6) }
}

/// A userspace node carrying both families: the TUN gets <IPv6 subnet>/128 and the IPv6 network
/// routed into it with the IPv6 MTU, as the daemon does through Overlay.configureTUNIPv6.
func makeDualStackUserspaceNode(lab: NetnsLab, node: LabNode, offloads: Bool = true) throws -> DualStackUserspaceNode {
    let v6 = try lab.addIPv6(to: node)
    let mac = MACAddress.randomLocal(), mac6 = MACAddress.randomLocal()
    let config = UserspaceConfig(
        encapsulation: .vxlan(vni: 1, port: 8472, localVTEPMAC: mac), localIP: node.nodeIP, tunName: "flannel.1",
        mtu: node.underlayMTU - 50, icmpSourceIP: node.podSubnet.address, offloads: offloads,
        ipv6: UserspaceIPv6Config(localIP: v6.nodeIP, localVTEPMAC: mac6, mtu: node.underlayMTU - 70))
    var logger = Logger(label: "fxus6.\(node.name)")
    logger.logLevel = .warning
    let dataplane = try NetnsThread.run(namespace: node.name) { try UserspaceDataplane(config: config, logger: logger) }
    try lab.sh(node.name, ["addr", "add", "\(node.podSubnet.address)/32", "dev", "flannel.1"])
    try lab.sh(node.name, ["-6", "addr", "add", "\(v6.podSubnet.address)/128", "dev", "flannel.1", "nodad"])
    try lab.sh(node.name, ["link", "set", "flannel.1", "up"])
    try lab.sh(node.name, ["route", "add", "\(clusterNetwork)", "dev", "flannel.1"])
    try lab.sh(node.name, ["-6", "route", "add", "\(clusterNetwork6)", "dev", "flannel.1", "mtu", "\(node.underlayMTU - 70)"])
    try dataplane.start()
    return DualStackUserspaceNode(v4: UserspaceNode(node: node, dataplane: dataplane, vtepMAC: mac), v6: v6, vtepMAC6: mac6)
}

/// Labels a frame on the underlay "vxlan6 <inner src MAC>→<inner dst MAC>" when it is VXLAN over
/// IPv6 to port 8472 with the I flag, VNI 1 and an inner IPv6 packet; nothing otherwise.
@Sendable func classifyVXLAN6(_ frame: ArraySlice<UInt8>) -> [String] {
    let f = Array(frame)
    guard f.count >= 14 + 40 + 8 + 8 + 14 + 40, f[12] == 0x86, f[13] == 0xdd, f[14] >> 4 == 6, f[14 + 6] == 17 else { return [] }
    let udp = 14 + 40
    guard UInt16(f[udp + 2]) << 8 | UInt16(f[udp + 3]) == 8472 else { return [] }
    let vx = udp + 8
    guard f[vx] == 0x08, f[vx + 1 ..< vx + 4] == [0, 0, 0], f[vx + 4 ..< vx + 8] == [0, 0, 1, 0] else { return ["vxlan6 bad header"] }
    let eth = vx + 8
    guard f[eth + 12] == 0x86, f[eth + 13] == 0xdd, f[eth + 14] >> 4 == 6 else { return ["vxlan6 bad inner"] }
    let dst = MACAddress(bytes: f[eth ..< eth + 6]), src = MACAddress(bytes: f[eth + 6 ..< eth + 12])
    return ["vxlan6 \(src)→\(dst)"]
}

@Suite("Userspace data path: IPv6 pods over the IPv6 underlay", .needsRoot)
struct UserspaceIPv6Tests {
    @Test("two dual-stack userspace nodes: pods reach each other over IPv6 and IPv4")
    func twoUserspaceNodes() throws {
        let lab = try NetnsLab(tag: "us6")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let a = try makeDualStackUserspaceNode(lab: lab, node: nodes[0])
        let b = try makeDualStackUserspaceNode(lab: lab, node: nodes[1])
        defer { a.v4.dataplane.stop(); b.v4.dataplane.stop() }
        try meshPeers([a.v4, b.v4])
        try a.v4.dataplane.ipv6Peers.upsert(b.asIPv6Peer)
        try b.v4.dataplane.ipv6Peers.upsert(a.asIPv6Peer)
        #expect(try a.v4.dataplane.ipv6Peers.currentPeers() == [b.asIPv6Peer])

        #expect(try lab.waitForPing6(from: a.v6.node.podNamespace, to: b.v6.podIP))
        #expect(try lab.ping6(from: b.v6.node.podNamespace, to: a.v6.podIP, count: 3).received == 3)
        #expect(try lab.ping(from: a.v4.node.podNamespace, to: b.v4.node.podIP, count: 3).received == 3)
        // Larger than the IPv6 MTU: the route's MTU makes each node's kernel answer its pod with
        // Packet Too Big (the first request, then the first reply, are lost to it); once both pods
        // know the path MTU, the fragments get through.
        let big = try lab.run(a.v6.node.podNamespace, [LabTools.ping, "-6", "-n", "-q", "-c", "5", "-i", "0.3", "-s", "1600", "-W", "2", "\(b.v6.podIP)"])
        #expect(big.status == 0, "\(big.stdout)")
        #expect(a.v4.dataplane.counters[drop: .tooBig] == 0, "the kernel stops them before the TUN")
        let counters = a.v4.dataplane.counters
        #expect(counters.txPackets >= 3 && counters.rxPackets >= 3)

        // A peer removed: its pods are unreachable (counted as no_peer), the other family unaffected.
        try a.v4.dataplane.ipv6Peers.remove(b.asIPv6Peer)
        #expect(try lab.ping6(from: a.v6.node.podNamespace, to: b.v6.podIP, count: 1).received == 0)
        #expect(a.v4.dataplane.counters[drop: .noPeer] >= 1)
        #expect(try lab.ping(from: a.v4.node.podNamespace, to: b.v4.node.podIP, count: 1).received == 1)
        #expect(throws: UserspaceError.self) { try a.v4.dataplane.ipv6Peers.upsert(IPv6Peer(subnet: b.v6.podSubnet, publicIP: b.v6.nodeIP, vtepMAC: nil)) }
    }

    @Test("with a node whose flannel.1 and flannel-v6.1 are flanneld's: both families, each direction's VXLAN over IPv6 framed alike")
    func withKernelFlannelNode() throws {
        let lab = try NetnsLab(tag: "us6k")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let mine = try makeDualStackUserspaceNode(lab: lab, node: nodes[0], offloads: false)
        defer { mine.v4.dataplane.stop() }
        let ref = try lab.addIPv6(to: nodes[1])
        let ref4 = try lab.makeFlannelStandIn(node: ref.node)
        let ref6 = try lab.makeFlannelV6StandIn(node: ref)
        try mine.v4.dataplane.upsert(ref4.asPeer)
        try mine.v4.dataplane.ipv6Peers.upsert(ref6.asPeer)
        try lab.addFlannelPeerRoutes(on: ref.node, peer: mine.v4.asPeer)
        try lab.addFlannelV6PeerRoutes(on: ref.node, peer: mine.asIPv6Peer)

        let atRef = try PacketCapture(namespace: ref.node.name, ifname: "eth0", classify: classifyVXLAN6)
        let atMine = try PacketCapture(namespace: mine.v4.node.name, ifname: "eth0", classify: classifyVXLAN6)
        #expect(try lab.waitForPing6(from: mine.v6.node.podNamespace, to: ref.podIP))
        #expect(try lab.ping6(from: ref.node.podNamespace, to: mine.v6.podIP, count: 3).received == 3)
        #expect(try lab.ping(from: mine.v4.node.podNamespace, to: ref.node.podIP, count: 3).received == 3)
        // What we send is what the kernel's flannel-v6.1 sends: VXLAN over IPv6 to 8472, I flag,
        // VNI 1, inner MACs = the two IPv6 VtepMACs, an inner IPv6 packet.
        #expect(atRef.wait(label: "vxlan6 \(mine.vtepMAC6)→\(ref6.vtepMAC)", count: 3) >= 3)
        #expect(atMine.wait(label: "vxlan6 \(ref6.vtepMAC)→\(mine.vtepMAC6)", count: 3) >= 3)
        #expect(atRef.count(label: "vxlan6 bad header") == 0 && atMine.count(label: "vxlan6 bad header") == 0)
        #expect(atRef.count(label: "vxlan6 bad inner") == 0 && atMine.count(label: "vxlan6 bad inner") == 0)
    }

    @Test("IPv6 datagrams that are not a peer's, not ours or of the wrong family are dropped with a reason")
    func hostileIPv6Datagrams() throws {
        let lab = try NetnsLab(tag: "us6h")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let mine = try makeDualStackUserspaceNode(lab: lab, node: nodes[0], offloads: false)
        defer { mine.v4.dataplane.stop() }
        let other = try lab.addIPv6(to: nodes[1])
        let otherMAC = MACAddress("0e:00:00:00:06:02")!
        let send = { (payload: [UInt8]) throws in try sendDatagrams(namespace: other.node.name, source: other.nodeIP,
                                                                         destination: mine.v6.nodeIP, port: 8472, payloads: [payload]) }
        let inner6 = ipv6Packet(source: other.podIP, destination: mine.v6.podIP)
        func vxlan6(_ inner: [UInt8], dst: MACAddress, type: [UInt8] = [0x86, 0xdd], vni: UInt32 = 1) -> [UInt8] {
            [0x08, 0, 0, 0, UInt8(vni >> 16 & 0xff), UInt8(vni >> 8 & 0xff), UInt8(vni & 0xff), 0] + dst.bytes + otherMAC.bytes + type + inner
        }
        try send(vxlan6(inner6, dst: mine.vtepMAC6))
        #expect(eventually { mine.v4.dataplane.counters[drop: .notPeer] == 1 }, "not a peer yet")
        try mine.v4.dataplane.ipv6Peers.upsert(IPv6Peer(subnet: other.podSubnet, publicIP: other.nodeIP, vtepMAC: otherMAC))
        try send(vxlan6(inner6, dst: mine.vtepMAC6, vni: 2))
        try send(vxlan6(inner6, dst: mine.v4.vtepMAC!))
        try send(vxlan6(ipv4Packet(source: IPv4Address(10, 5, 2, 2), destination: mine.v4.node.podIP), dst: mine.vtepMAC6, type: [0x08, 0x00]))
        try send(vxlan6(ipv6Packet(source: IPv6Address("fd00:5:0:99::2")!, destination: mine.v6.podIP), dst: mine.vtepMAC6))
        try send(vxlan6(Array(inner6.prefix(30)), dst: mine.vtepMAC6))
        try send(vxlan6(inner6, dst: mine.vtepMAC6))
        let c = { mine.v4.dataplane.counters }
        #expect(eventually { c()[drop: .badVNI] == 1 && c()[drop: .innerNotOurs] == 1 && c()[drop: .innerWrongFamily] == 1
                             && c()[drop: .innerSource] == 1 && c()[drop: .malformed] == 1 && c().rxPackets == 1 }, "\(c())")
    }
}

/// A minimal IPv6 ICMPv6 echo request (the checksum is not checked on the way into a TUN).
func ipv6Packet(source: IPv6Address, destination: IPv6Address) -> [UInt8] {
    let payload: [UInt8] = [128, 0, 0, 0, 0, 1, 0, 1]
    return [0x60, 0, 0, 0, 0, UInt8(payload.count), 58, 64] + source.bytes + destination.bytes + payload
}

