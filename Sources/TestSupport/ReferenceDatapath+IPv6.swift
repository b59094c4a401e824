// The IPv6 half of ReferenceDatapath: flannel-v6.<VNI>'s VXLAN over the IPv6 underlay, written from the
// verdict table (docs/BPF-DATAPATH.md, "IPv6") like the IPv4 model, not from the C.

import NetTypes

extension ReferenceDatapath {
    public typealias PeerEntry6 = Peer<IPv6Address>

    /// A node's IPv6 settings and peers (what fxdp_config6 and fxdp_peers6 hold).
    public struct IPv6Half: Sendable {
        public var nodeIP: IPv6Address
        public var vtepMAC: MACAddress
        public var overlayMTU: Int
        /// Outer hop limit the encap writes (0: 64).
        public var hopLimit: UInt8
        public var publicIP: IPv6Address?
        public var peers: [PeerEntry6]
        public init(nodeIP: IPv6Address, vtepMAC: MACAddress, overlayMTU: Int, hopLimit: UInt8 = 0, publicIP: IPv6Address? = nil,
                    peers: [PeerEntry6]) {
            self.nodeIP = nodeIP
            self.vtepMAC = vtepMAC
            self.overlayMTU = overlayMTU
            self.hopLimit = hopLimit
            self.publicIP = publicIP
            self.peers = peers
        }

        /// The longest-prefix IPv6 peer entry holding `address`.
        public func peer(for address: IPv6Address) -> PeerEntry6? {
            peers.filter { ReferenceDatapath.contains($0.subnet, address) }.max { $0.subnet.prefixLength < $1.subnet.prefixLength }
        }
    }

    static func contains(_ subnet: IPv6Subnet, _ address: IPv6Address) -> Bool {
        let a = address.bytes, n = subnet.address.bytes
        for bit in 0..<subnet.prefixLength where (a[bit / 8] ^ n[bit / 8]) & (0x80 >> UInt8(bit % 8)) != 0 { return false }
        return true
    }

    static func ipv6Address(_ f: [UInt8], at offset: Int) -> IPv6Address { IPv6Address(bytes: Array(f[offset..<(offset + 16)]))! }

    /// The extension headers the classification (and the kernel's input) knows: hop-by-hop, routing,
    /// fragment, authentication, destination options.
    static let ipv6Extensions: Set<UInt8> = [0, 43, 44, 51, 60]

    /// The classification of a frame whose Ethernet type is IPv6 (the IPv4 one's steps, with the
    /// fragment header, extension headers and the zero UDP checksum in their places).
    func classifyDecap6(_ f: [UInt8], _ v6: IPv6Half) -> UInt32 {
        let ip = 14
        guard f.count >= ip + 40, f[ip] >> 4 == 6 else { return Code.decapDropMalformed }
        var next = f[ip + 6]
        var l4 = ip + 40
        var fragment = false
        if next == IPProto.fragment {
            guard f.count >= l4 + 8 else { return Code.decapDropMalformed }
            if f.be16(at: l4 + 2) & 0xfff8 != 0 { return Code.decapPassFragment }
            // A first fragment, or an atomic one: either is left to the kernel once checked.
            fragment = true
            next = f[l4]
            l4 += 8
        }
        if ReferenceDatapath.ipv6Extensions.contains(next) { return Code.decap6PassExtHeaders }
        guard next == IPProto.udp else { return Code.decapPassNotVXLAN }
        guard f.count >= l4 + 8 else { return Code.decapDropMalformed }
        guard f.be16(at: l4 + 2) == udpPort else { return Code.decapPassNotVXLAN }
        let destination = ReferenceDatapath.ipv6Address(f, at: ip + 24)
        guard destination == v6.nodeIP || destination == v6.publicIP else { return Code.decapPassOtherHost }
        let truncated = fragment ? Code.decapDropFragment : Code.decapDropMalformed
        let payload = Int(f.be16(at: ip + 4))
        guard payload != 0, ip + 40 + payload <= f.count else { return Code.decapDropMalformed }
        guard f.be16(at: l4 + 6) != 0 else { return Code.decap6DropUDPZeroCsum }
        let source = ReferenceDatapath.ipv6Address(f, at: ip + 8)
        guard v6.peers.contains(where: { $0.nodeIP == source || $0.sourceIP == source }) else { return Code.decapDropNotPeer }
        let vx = l4 + 8
        guard f.count >= vx + 8 else { return truncated }
        guard f.be32(at: vx) == 0x0800_0000, f.be32(at: vx + 4) == vni << 8 else { return Code.decapDropBadVNI }
        let inner = vx + 8
        guard f.count >= inner + 14 else { return truncated }
        guard MACAddress(bytes: f[inner..<(inner + 6)]) == v6.vtepMAC else { return Code.decapDropInnerNotOurs }
        guard MACAddress(bytes: f[(inner + 6)..<(inner + 12)]) != v6.vtepMAC else { return Code.decapDropLoop }
        guard f.be16(at: inner + 12) == 0x86DD else { return Code.decap6DropInnerNotIPv6 }
        let innerIP = inner + 14
        guard f.count >= innerIP + 40 else { return truncated }
        if (f[ip + 1] >> 4) & 0x3 == 0x3 && (f[innerIP + 1] >> 4) & 0x3 == 0 { return Code.decapDropECN }
        if innerSourceCheck {
            let innerSource = ReferenceDatapath.ipv6Address(f, at: innerIP + 8)
            if innerSource != source {
                guard let owner = v6.peer(for: innerSource), owner.nodeIP == source || owner.sourceIP == source else {
                    return Code.decapDropInnerSource
                }
            }
        }
        return fragment ? Code.decapFragmentOK : Code.decap6OK
    }

    /// Whether the inner source of a valid IPv6 VXLAN frame lies in a subnet of the peer that sent it.
    func sourceInSenderSubnet6(_ f: [UInt8], _ v6: IPv6Half) -> Bool {
        guard innerSourceCheck, f.count >= 124 else { return false }
        let source = ReferenceDatapath.ipv6Address(f, at: 22)
        guard let owner = v6.peer(for: ReferenceDatapath.ipv6Address(f, at: 92)) else { return false }
        return owner.nodeIP == source || owner.sourceIP == source
    }

    /// fxdp_decap_xdp's output for a valid IPv6 VXLAN frame: 70 bytes stripped, the mark (IPv6)
    /// in the metadata, the inner frame addressed to the underlay, an outer CE copied in.
    func stripped6(_ f: [UInt8], _ v6: IPv6Half) -> Expectation {
        var inner = Array(f[70...])
        if (f[15] >> 4) & 0x3 == 0x3 { inner[15] |= 0x30 }
        return Expectation(code: Code.decap6OK, verdict: "XDP_PASS",
                           output: .exact(ReferenceDatapath.xdpMetaBytes(sourceInSubnet: sourceInSenderSubnet6(f, v6), ipv6: true)
                               + underlayMAC.bytes + inner.dropFirst(6)))
    }

    /// fxdp_encap6 on TC egress of flannel-v6.<VNI>, for a frame whose skb protocol comes from its
    /// Ethernet type (as in a test run) and without GSO.
    public func encap6(_ f: [UInt8]) -> Expectation {
        let pass = { (code: UInt32) in Expectation(code: code, verdict: "TC_ACT_OK", output: .unchanged) }
        guard let v6 = ipv6 else { return pass(Code.encapPassDisabled) }
        guard f.count >= 14, f.be16(at: 12) == 0x86DD else { return pass(Code.encap6PassNotIPv6) }
        guard f.count >= 54, f[14] >> 4 == 6 else {
            return Expectation(code: Code.encapDropMalformed, verdict: "TC_ACT_SHOT", output: .unchanged)
        }
        guard let peer = v6.peer(for: ReferenceDatapath.ipv6Address(f, at: 38)) else { return pass(Code.encapPassNoPeer) }
        let udpLength = f.count + 16
        guard udpLength <= 0xffff, v6.overlayMTU == 0 || f.count - 14 <= v6.overlayMTU else { return pass(Code.encapPassTooBig) }
        let payload = Int(f.be16(at: 18))
        let derivable: Bool
        switch f[20] {
        case _ where 54 + payload != f.count: derivable = false
        case IPProto.tcp: derivable = payload >= 20
        case IPProto.icmpv6: derivable = payload >= 4
        case IPProto.udp: derivable = payload >= 8 && f.be16(at: 60) != 0
        default: derivable = false
        }
        guard derivable else { return pass(Code.encap6PassCsum) }
        guard case .resolved(let outerDst) = peer.route else { return pass(peer.route.encapPassCode) }
        var o = outerDst.bytes + underlayMAC.bytes
        o.appendBE16(0x86DD)
        let innerECN = (f[15] >> 4) & 0x3
        o += [0x60, (innerECN == 0x3 ? 0x2 : innerECN) << 4, 0, 0] // version, traffic class = ECN, flow label 0
        o.appendBE16(UInt16(udpLength))
        o += [IPProto.udp, v6.hopLimit == 0 ? 64 : v6.hopLimit]
        o += v6.nodeIP.bytes + peer.nodeIP.bytes
        o += [0, 0] // source port (flow hash)
        o.appendBE16(udpPort)
        o.appendBE16(UInt16(udpLength))
        o += [0, 0] // checksum (derived from the headers, checked separately)
        o += [0x08, 0, 0, 0]
        o.appendBE32(vni << 8)
        o += peer.vtepMAC.bytes + v6.vtepMAC.bytes
        o.appendBE16(0x86DD)
        o += f[14...]
        return Expectation(code: Code.encap6OK, verdict: "TC_ACT_REDIRECT", output: .encapsulated6(o))
    }
}
