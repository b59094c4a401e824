// PacketLab — one node's BPF data path loaded in a throw-away network namespace, for running
// programs with BPF_PROG_TEST_RUN: a veth pair for the underlay (192.168.60.2/24), the peer node
// 192.168.60.1 with a permanent neighbour entry, the maps filled through the production code
// (FlannelBPF.writeConfig, BPFPeerTable). Test runs happen inside the namespace because the encap's
// bpf_fib_lookup reads that namespace's routes and neighbours. With `ipv6`, the node is dual-stack:
// fd00:60::2/64 on the same underlay, the IPv6 peer fd00:60::1 with a permanent neighbour entry, and
// the IPv6 half of the peers (NodeConfig6, BPFIPv6PeerTable) mirroring the IPv4 one.

import BPFDataplane
import BPFLoader
import NetTypes
import TestSupport

final class PacketLab: @unchecked Sendable {
    static let us = IPv4Address(192, 168, 60, 2)
    static let peer = IPv4Address(192, 168, 60, 1)
    static let unresolvedPeer = IPv4Address(192, 168, 60, 3)
    static let unroutablePeer = IPv4Address(203, 0, 113, 9)
    static let stranger = IPv4Address(192, 168, 60, 99)
    /// A peer whose lease names PublicIP 198.51.100.5 while its VXLAN leaves from 192.168.60.5
    /// (BackendData.SourceIP): --public-ip on a multi-homed node without NAT.
    static let multihomedPeer = IPv4Address(198, 51, 100, 5)
    static let multihomedSource = IPv4Address(192, 168, 60, 5)
    static let multihomedPods = IPv4Subnet(cidr: "10.5.5.0/24")!
    static let ourVTEP = MACAddress("02:00:00:00:00:02")!
    static let peerVTEP = MACAddress("02:00:00:00:00:01")!
    static let peerUnderlayMAC = MACAddress("02:00:00:00:aa:01")!
    static let ourPods = IPv4Subnet(cidr: "10.5.2.0/24")!
    static let peerPods = IPv4Subnet(cidr: "10.5.1.0/24")!
    static let unresolvedPods = IPv4Subnet(cidr: "10.5.3.0/24")!
    static let unroutablePods = IPv4Subnet(cidr: "10.5.9.0/24")!
    static let vni: UInt32 = 1
    static let port: UInt16 = 8472

    // The IPv6 half (with `ipv6: true`), address for address the IPv4 one's counterpart.
    static let us6 = IPv6Address("fd00:60::2")!
    static let peer6 = IPv6Address("fd00:60::1")!
    static let unresolvedPeer6 = IPv6Address("fd00:60::3")!
    static let unroutablePeer6 = IPv6Address("2001:db8:99::9")!
    static let stranger6 = IPv6Address("fd00:60::99")!
    static let multihomedPeer6 = IPv6Address("2001:db8:51::5")!
    static let multihomedSource6 = IPv6Address("fd00:60::5")!
    static let ourVTEP6 = MACAddress("02:00:00:00:06:02")!
    static let peerVTEP6 = MACAddress("02:00:00:00:06:01")!
    static let podNetwork6 = IPv6Subnet(address: IPv6Address("fd10:5::")!, prefixLength: 32)!
    static let ourPods6 = IPv6Subnet(address: IPv6Address("fd10:5:2::")!, prefixLength: 64)!
    static let peerPods6 = IPv6Subnet(address: IPv6Address("fd10:5:1::")!, prefixLength: 64)!
    static let unresolvedPods6 = IPv6Subnet(address: IPv6Address("fd10:5:3::")!, prefixLength: 64)!
    static let unroutablePods6 = IPv6Subnet(address: IPv6Address("fd10:5:9::")!, prefixLength: 64)!
    static let multihomedPods6 = IPv6Subnet(address: IPv6Address("fd10:5:5::")!, prefixLength: 64)!
    static let peerPod6 = IPv6Address("fd10:5:1::7")!
    static let ourPod6 = IPv6Address("fd10:5:2::9")!
    static let overlayMTU6: UInt16 = 1430

    let tag: String
    let ns: TestNamespace
    let bpffs: PrivateBPFFS
    let bpf: FlannelBPF
    let config: NodeConfig
    let underlayMAC: MACAddress
    /// The IPv6 settings, when the lab is dual-stack.
    let config6: NodeConfig6?

    init(ipv6: Bool = false) throws {
        let tag = Names.unique()
        let lab = try makeNamespaceAndBPFFS(tag) { ns, bpffs in
            let x = "\(tag)x", y = "\(tag)y"
            try ns.sh(["ip", "link", "add", x, "type", "veth", "peer", "name", y])
            try ns.sh(["ip", "addr", "add", "\(PacketLab.us)/24", "dev", x])
            try ns.sh(["ip", "link", "set", x, "up"])
            try ns.sh(["ip", "link", "set", y, "up"])
            try ns.sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            try ns.sh(["ip", "neigh", "replace", "\(PacketLab.peer)", "lladdr", "\(PacketLab.peerUnderlayMAC)",
                       "dev", x, "nud", "permanent"])
            let underlayMAC = try ns.mac(x)
            let config = NodeConfig(nodeIP: PacketLab.us, vtepMAC: PacketLab.ourVTEP, vni: PacketLab.vni, udpPort: PacketLab.port,
                                    underlayIfindex: try ns.ifindex(x), underlayMAC: underlayMAC, overlayIfindex: 1,
                                    overlayMTU: 1450)
            let bpf = try FlannelBPF(bpffs: bpffs.path)
            try bpf.writeConfig(config)
            let table = try bpf.peerTable()
            try table.upsert(Peer(subnet: PacketLab.peerPods, publicIP: PacketLab.peer, vtepMAC: PacketLab.peerVTEP))
            try table.upsert(Peer(subnet: PacketLab.unresolvedPods, publicIP: PacketLab.unresolvedPeer,
                                  vtepMAC: MACAddress("02:00:00:00:00:03")!))
            try table.upsert(Peer(subnet: PacketLab.unroutablePods, publicIP: PacketLab.unroutablePeer,
                                  vtepMAC: MACAddress("02:00:00:00:00:09")!))
            try table.upsert(Peer(subnet: PacketLab.multihomedPods, publicIP: PacketLab.multihomedPeer,
                                  vtepMAC: MACAddress("02:00:00:00:00:05")!, sourceIP: PacketLab.multihomedSource))
            var config6: NodeConfig6?
            if ipv6 {
                try ns.sh(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
                try ns.sh(["ip", "-6", "addr", "add", "\(PacketLab.us6)/64", "dev", x, "nodad"])
                try ns.sh(["ip", "-6", "neigh", "replace", "\(PacketLab.peer6)", "lladdr", "\(PacketLab.peerUnderlayMAC)",
                           "dev", x, "nud", "permanent"])
                let c6 = NodeConfig6(nodeIP: PacketLab.us6, vtepMAC: PacketLab.ourVTEP6, overlayIfindex: 1,
                                     overlayMTU: PacketLab.overlayMTU6, network: PacketLab.podNetwork6)
                try bpf.writeConfig6(c6)
                config6 = c6
                let table6 = try bpf.ipv6PeerTable()
                for peer in PacketLab.peers6 { try table6.upsert(peer) }
            }
            return (underlayMAC, config, bpf, config6)
        }
        self.tag = tag
        (ns, bpffs) = (lab.ns, lab.bpffs)
        (underlayMAC, config, bpf, config6) = lab.made
    }

    func close() {
        bpffs.close()
        ns.close()
    }

    /// The IPv6 peers a dual-stack lab holds.
    static let peers6: [BPFPeer6] = [
        BPFPeer6(subnet: peerPods6, publicIP: peer6, vtepMAC: peerVTEP6),
        BPFPeer6(subnet: unresolvedPods6, publicIP: unresolvedPeer6, vtepMAC: MACAddress("02:00:00:00:06:03")!),
        BPFPeer6(subnet: unroutablePods6, publicIP: unroutablePeer6, vtepMAC: MACAddress("02:00:00:00:06:09")!),
        BPFPeer6(subnet: multihomedPods6, publicIP: multihomedPeer6, vtepMAC: MACAddress("02:00:00:00:06:05")!,
                 sourceIP: multihomedSource6),
    ]

    /// Runs `program` once on `packet` inside the lab's namespace; returns the verdict name, the
    /// output and the counters that moved.
    func run(_ program: FXDPProgram, _ packet: [UInt8]) throws -> (verdict: String, output: [UInt8], moved: [FXDPCounter: FXDPCount]) {
        let prog = try bpf.program(program)
        let before = try bpf.counters()
        let result = try ns.run { try prog.testRun(packet: packet) }
        let after = try bpf.counters()
        let verdict = program == .decapXDP ? Verdict.xdp(result.retval) : Verdict.tc(result.retval)
        return (verdict, result.packet, counterDelta(before, after))
    }

    // MARK: frames

    /// An inner IPv4 packet from a pod of ours to a pod behind the peer (ICMP echo by default).
    static func podPacket(dst: IPv4Address = IPv4Address(10, 5, 1, 7), src: IPv4Address = IPv4Address(10, 5, 2, 9),
                          tos: UInt8 = 0, size: Int = 56) -> [UInt8] {
        PacketBuilder.ipv4(src: src, dst: dst, proto: IPProto.icmp,
                           payload: PacketBuilder.icmpEcho(id: 77, sequence: 1, payload: (0..<size).map { UInt8($0 & 0xff) }),
                           tos: tos, id: 0x5151, fragment: .init(dontFragment: true))
    }

    /// What the encap sees on flannel.<VNI> egress: the kernel's Ethernet header (neighbour MAC of
    /// the peer's .0 address, i.e. its VtepMAC, and our VtepMAC) + the pod packet.
    static func overlayFrame(_ ip: [UInt8], type: UInt16 = EtherType.ipv4) -> [UInt8] {
        PacketBuilder.ethernet(dst: peerVTEP, src: ourVTEP, type: type) + ip
    }

    /// A VXLAN frame as the peer node sends it to us.
    func vxlanFromPeer(inner: [UInt8]? = nil, src: IPv4Address = PacketLab.peer, vni: UInt32 = PacketLab.vni,
                       dstPort: UInt16 = PacketLab.port, udpChecksum: Bool = false,
                       fragment: PacketBuilder.Fragment = .init(), options: [UInt8] = [], vxlanFlags: UInt8 = 0x08,
                       tos: UInt8 = 0) -> [UInt8] {
        let innerFrame = inner ?? PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7)))
        return PacketBuilder.vxlanFrame(outerDst: underlayMAC, outerSrc: PacketLab.peerUnderlayMAC, src: src, dst: PacketLab.us,
                                        dstPort: dstPort, vni: vni, inner: innerFrame, udpChecksum: udpChecksum,
                                        fragment: fragment, options: options, vxlanFlags: vxlanFlags, tos: tos)
    }

    /// An inner Ethernet frame as a peer's VTEP sends it to ours.
    static func innerFrame(_ ip: [UInt8], from vtep: MACAddress = PacketLab.peerVTEP) -> [UInt8] {
        PacketBuilder.ethernet(dst: PacketLab.ourVTEP, src: vtep, type: EtherType.ipv4) + ip
    }

    /// What XDP decap must leave: the steer's mark in the metadata (the test run returns it in
    /// front of the frame, flagged when the inner source lies in the sending peer's pod subnet), then
    /// the inner frame re-addressed to the underlay's MAC.
    func stripped(_ frame: [UInt8]) -> [UInt8] {
        let outerSource = IPv4Address(bytes: frame[26..<30]), innerSource = IPv4Address(bytes: frame[76..<80])
        let inSubnet = (outerSource == PacketLab.peer && PacketLab.peerPods.contains(innerSource))
            || ([PacketLab.multihomedSource, PacketLab.multihomedPeer].contains(outerSource) && PacketLab.multihomedPods.contains(innerSource))
        return ReferenceDatapath.xdpMetaBytes(sourceInSubnet: inSubnet) + underlayMAC.bytes + Array(frame[56...])
    }
}

// MARK: - IPv6 frames

extension PacketLab {
    /// An inner IPv6 packet from a pod of ours to a pod behind the IPv6 peer (ICMPv6 echo by default).
    static func podPacket6(dst: IPv6Address = PacketLab.peerPod6, src: IPv6Address = PacketLab.ourPod6,
                           trafficClass: UInt8 = 0, size: Int = 56) -> [UInt8] {
        PacketBuilder.ipv6(src: src, dst: dst, nextHeader: IPProto.icmpv6,
                           payload: PacketBuilder.icmpv6Echo(src: src, dst: dst, id: 77, sequence: 1, payload: (0..<size).map { UInt8($0 & 0xff) }),
                           trafficClass: trafficClass)
    }

    /// What fxdp_encap6 sees on flannel-v6.<VNI> egress: the kernel's Ethernet header (the peer's
    /// VtepMAC from flannel's permanent neighbour, ours) + the pod packet.
    static func overlayFrame6(_ ip: [UInt8], type: UInt16 = EtherType.ipv6Ethernet) -> [UInt8] {
        PacketBuilder.ethernet(dst: peerVTEP6, src: ourVTEP6, type: type) + ip
    }

    /// An inner Ethernet frame as a peer's flannel-v6 VTEP sends it to ours.
    static func innerFrame6(_ ip: [UInt8], from vtep: MACAddress = PacketLab.peerVTEP6) -> [UInt8] {
        PacketBuilder.ethernet(dst: PacketLab.ourVTEP6, src: vtep, type: EtherType.ipv6Ethernet) + ip
    }

    /// An IPv6 VXLAN frame as the IPv6 peer sends it to us.
    func vxlan6FromPeer(inner: [UInt8]? = nil, src: IPv6Address = PacketLab.peer6, dst: IPv6Address = PacketLab.us6,
                        vni: UInt32 = PacketLab.vni, dstPort: UInt16 = PacketLab.port, udpChecksum: Bool = true,
                        moreFragments: Bool? = nil, extensionHeaders: [UInt8] = [], extensionNextHeader: UInt8? = nil,
                        vxlanFlags: UInt8 = 0x08, trafficClass: UInt8 = 0) -> [UInt8] {
        let innerFrame = inner ?? PacketLab.innerFrame6(PacketLab.podPacket6(dst: PacketLab.ourPod6, src: PacketLab.peerPod6))
        return PacketBuilder.vxlan6Frame(outerDst: underlayMAC, outerSrc: PacketLab.peerUnderlayMAC, src: src, dst: dst,
                                         dstPort: dstPort, vni: vni, inner: innerFrame, udpChecksum: udpChecksum,
                                         moreFragments: moreFragments, extensionHeaders: extensionHeaders,
                                         extensionNextHeader: extensionNextHeader, vxlanFlags: vxlanFlags, trafficClass: trafficClass)
    }

    /// What XDP decap must leave of a valid IPv6 VXLAN frame: the steer's mark (IPv6, and whether the
    /// inner source lies in the sending peer's subnet), the inner frame re-addressed to the underlay.
    func stripped6(_ frame: [UInt8], sourceInSubnet: Bool) -> [UInt8] {
        ReferenceDatapath.xdpMetaBytes(sourceInSubnet: sourceInSubnet, ipv6: true) + underlayMAC.bytes + Array(frame[76...])
    }
}
