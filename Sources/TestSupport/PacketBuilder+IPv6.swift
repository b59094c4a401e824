// PacketBuilder for IPv6: the frames the IPv6 data-path tests feed in (flannel-v6.<VNI>'s VXLAN over
// the IPv6 underlay, IPv6 pods' packets), with correct checksums unless told to break one, and the
// checksum rule the IPv6 encap follows (`Checksum.vxlan6UDP`).

import NetTypes

extension EtherType {
    public static let ipv6Ethernet: UInt16 = 0x86DD
}

extension IPProto {
    public static let icmpv6: UInt8 = 58
    public static let hopByHop: UInt8 = 0
    public static let routing: UInt8 = 43
    public static let fragment: UInt8 = 44
    public static let destinationOptions: UInt8 = 60
}

extension Checksum {
    /// The IPv6 pseudo-header sum (RFC 8200 8.1) for a TCP/UDP/ICMPv6 checksum.
    public static func pseudoHeader6(src: IPv6Address, dst: IPv6Address, nextHeader: UInt8, length: Int) -> UInt32 {
        var sum: UInt32 = 0
        for address in [src.bytes, dst.bytes] {
            for i in stride(from: 0, to: 16, by: 2) { sum += UInt32(address[i]) << 8 | UInt32(address[i + 1]) }
        }
        return sum + UInt32(length >> 16) + UInt32(length & 0xffff) + UInt32(nextHeader)
    }

    /// The outer UDP checksum the IPv6 encap writes for an encapsulated frame `f` (outer Ethernet
    /// at 0, IPv6 at 14, UDP at 54, VXLAN, inner Ethernet at 70, inner IPv6 at 84): derived from the
    /// headers alone, taking the inner TCP/UDP/ICMPv6 segment to sum to the complement of its
    /// pseudo header, as it does when its own checksum is right (then this is the ordinary UDP
    /// checksum of `f`). 0 becomes 0xffff.
    public static func vxlan6UDP(_ f: [UInt8]) -> UInt16 {
        precondition(f.count >= 124, "an IPv6 VXLAN frame with an inner IPv6 header")
        let udpLength = Int(f.be16(at: 58))
        var sum = Checksum.pseudoHeader6(src: IPv6Address(bytes: Array(f[22..<38]))!, dst: IPv6Address(bytes: Array(f[38..<54]))!,
                                         nextHeader: IPProto.udp, length: udpLength)
        var headers = Array(f[54..<124])
        headers[6] = 0
        headers[7] = 0
        for i in stride(from: 0, to: headers.count, by: 2) { sum += UInt32(headers[i]) << 8 | UInt32(headers[i + 1]) }
        let inner = 84
        let innerPseudo = Checksum.pseudoHeader6(src: IPv6Address(bytes: Array(f[(inner + 8)..<(inner + 24)]))!,
                                                 dst: IPv6Address(bytes: Array(f[(inner + 24)..<(inner + 40)]))!,
                                                 nextHeader: f[inner + 6], length: Int(f.be16(at: inner + 4)))
        sum += UInt32(~Checksum.fold(innerPseudo))
        let check = ~Checksum.fold(sum)
        return check == 0 ? 0xffff : check
    }

    /// The one's complement sum folded to 16 bits (not complemented).
    public static func fold(_ sum: UInt32) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xffff) + (s >> 16) }
        return UInt16(s)
    }

    /// Whether UDP datagram `udp` (header and payload) from `src` to `dst` carries a correct,
    /// non-zero checksum (IPv6 allows no other).
    public static func udp6Valid(_ udp: ArraySlice<UInt8>, src: IPv6Address, dst: IPv6Address) -> Bool {
        guard udp.count >= 8, Array(udp).be16(at: 6) != 0 else { return false }
        return Checksum.internet(udp, initial: pseudoHeader6(src: src, dst: dst, nextHeader: IPProto.udp, length: udp.count)) == 0
    }
}

extension PacketBuilder {
    /// An IPv6 packet. `trafficClass` carries DSCP and ECN; `payloadLength` and `version` override the
    /// computed values to build broken headers.
    public static func ipv6(src: IPv6Address, dst: IPv6Address, nextHeader: UInt8, payload: [UInt8], hopLimit: UInt8 = 64,
                            trafficClass: UInt8 = 0, flowLabel: UInt32 = 0, payloadLength: UInt16? = nil,
                            version: UInt8 = 6) -> [UInt8] {
        var h: [UInt8] = [version << 4 | trafficClass >> 4, (trafficClass & 0x0f) << 4 | UInt8(flowLabel >> 16 & 0x0f),
                          UInt8(flowLabel >> 8 & 0xff), UInt8(flowLabel & 0xff)]
        h.appendBE16(payloadLength ?? UInt16(payload.count))
        h += [nextHeader, hopLimit]
        return h + src.bytes + dst.bytes + payload
    }

    /// A fragment extension header (8 bytes): `offset` in 8-byte units, `more`: the M flag.
    public static func fragmentHeader6(nextHeader: UInt8, offset: UInt16 = 0, more: Bool, identification: UInt32 = 0x4242) -> [UInt8] {
        var f: [UInt8] = [nextHeader, 0]
        f.appendBE16(offset << 3 | (more ? 1 : 0))
        f.appendBE32(identification)
        return f
    }

    /// A UDP datagram over IPv6 with its (mandatory) checksum, or 0 when `checksum` is false.
    public static func udp6(src: IPv6Address, dst: IPv6Address, srcPort: UInt16, dstPort: UInt16, payload: [UInt8],
                            checksum: Bool = true) -> [UInt8] {
        udpDatagram(srcPort: srcPort, dstPort: dstPort, payload: payload) { length in
            checksum ? Checksum.pseudoHeader6(src: src, dst: dst, nextHeader: IPProto.udp, length: length) : nil
        }
    }

    /// A TCP segment (no options) over IPv6 with a correct checksum.
    public static func tcp6(src: IPv6Address, dst: IPv6Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32 = 1,
                            flags: UInt8 = 0x18, payload: [UInt8]) -> [UInt8] {
        var t: [UInt8] = []
        t.appendBE16(srcPort)
        t.appendBE16(dstPort)
        t.appendBE32(seq)
        t.appendBE32(0)
        t += [5 << 4, flags]
        t.appendBE16(65535)
        t.appendBE32(0)
        t += payload
        t.setBE16(Checksum.internet(t, initial: Checksum.pseudoHeader6(src: src, dst: dst, nextHeader: IPProto.tcp, length: t.count)), at: 16)
        return t
    }

    /// An ICMPv6 echo request (128) or reply (129), checksummed over the pseudo header.
    public static func icmpv6Echo(src: IPv6Address, dst: IPv6Address, id: UInt16, sequence: UInt16, payload: [UInt8],
                                  reply: Bool = false) -> [UInt8] {
        var m: [UInt8] = [reply ? 129 : 128, 0, 0, 0]
        m.appendBE16(id)
        m.appendBE16(sequence)
        m += payload
        m.setBE16(Checksum.internet(m, initial: Checksum.pseudoHeader6(src: src, dst: dst, nextHeader: IPProto.icmpv6, length: m.count)), at: 2)
        return m
    }

    /// A whole IPv6 VXLAN frame as flannel-v6.<VNI> sends it: outer Ethernet/IPv6/UDP (with its
    /// checksum unless `udpChecksum` is false)/VXLAN + `inner` (an inner Ethernet frame). With
    /// `fragment`, a fragment header (this is the first fragment) sits between IPv6 and UDP.
    public static func vxlan6Frame(outerDst: MACAddress, outerSrc: MACAddress, src: IPv6Address, dst: IPv6Address,
                                   srcPort: UInt16 = 40000, dstPort: UInt16 = 8472, vni: UInt32 = 1, inner: [UInt8],
                                   udpChecksum: Bool = true, moreFragments: Bool? = nil, extensionHeaders: [UInt8] = [],
                                   extensionNextHeader: UInt8? = nil, vxlanFlags: UInt8 = 0x08, trafficClass: UInt8 = 0) -> [UInt8] {
        let udp = udp6(src: src, dst: dst, srcPort: srcPort, dstPort: dstPort, payload: vxlan(vni: vni, flags: vxlanFlags) + inner,
                       checksum: udpChecksum)
        var payload = udp
        var next = IPProto.udp
        if let moreFragments {
            payload = fragmentHeader6(nextHeader: next, more: moreFragments) + payload
            next = IPProto.fragment
        }
        if let extensionNextHeader {
            payload = extensionHeaders + payload
            next = extensionNextHeader
        }
        return ethernet(dst: outerDst, src: outerSrc, type: EtherType.ipv6Ethernet)
            + ipv6(src: src, dst: dst, nextHeader: next, payload: payload, trafficClass: trafficClass)
    }
}
