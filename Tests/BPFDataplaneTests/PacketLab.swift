// PacketLab — one node's BPF data path loaded in a throw-away network namespace, for running
// programs with BPF_PROG_TEST_RUN: a veth pair for the underlay (192.168.60.2/24), the peer node
// 192.168.60.1 with a permanent neighbour entry, the maps filled through the production code
// (FlannelBPF.writeConfig, BPFPeerTable). Test runs happen inside the namespace because the encap's
// bpf_fib_lookup reads that namespace's routes and neighbours.

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

    let tag: String
    let ns: TestNamespace
    let bpffs: PrivateBPFFS
    let bpf: FlannelBPF
    let config: NodeConfig
    let underlayMAC: MACAddress

    init() throws {
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
            return (underlayMAC, config, bpf)
        }
        self.tag = tag
        (ns, bpffs) = (lab.ns, lab.bpffs)
        (underlayMAC, config, bpf) = lab.made
    }

    func close() {
        bpffs.close()
        ns.close()
    }

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
