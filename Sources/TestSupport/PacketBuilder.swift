// PacketBuilder — builds and checks the frames the BPF and userspace data-path tests feed in.
//
// Design: plain functions from fields to bytes, one per header, composed by the caller (katran's
// testing/ idea without its scapy strings). Every builder computes correct checksums unless told
// to break something, because the malformed-packet tables need exactly one thing wrong at a time:
// a bad IHL, a truncation at a chosen byte, options, fragment bits. The validators read frames
// back (Ethernet, optional VLAN, IPv4, UDP, VXLAN) for assertions.

import NetTypes

public enum EtherType {
    public static let ipv4: UInt16 = 0x0800
    public static let arp: UInt16 = 0x0806
    public static let ipv6: UInt16 = 0x86DD
    public static let vlan: UInt16 = 0x8100
    public static let qinq: UInt16 = 0x88A8
}

public enum IPProto {
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
}

/// Byte-order helpers used by the builders and tests.
extension Array where Element == UInt8 {
    public mutating func appendBE16(_ v: UInt16) { append(UInt8(v >> 8)); append(UInt8(v & 0xff)) }
    public mutating func appendBE32(_ v: UInt32) {
        append(UInt8(v >> 24)); append(UInt8(v >> 16 & 0xff)); append(UInt8(v >> 8 & 0xff)); append(UInt8(v & 0xff))
    }
    public func be16(at i: Int) -> UInt16 { UInt16(self[i]) << 8 | UInt16(self[i + 1]) }
    public func be32(at i: Int) -> UInt32 {
        UInt32(self[i]) << 24 | UInt32(self[i + 1]) << 16 | UInt32(self[i + 2]) << 8 | UInt32(self[i + 3])
    }
    public mutating func setBE16(_ v: UInt16, at i: Int) { self[i] = UInt8(v >> 8); self[i + 1] = UInt8(v & 0xff) }
    /// "0a 05 01 00 ..." for failure messages.
    public var hex: String {
        map { b in let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }.joined(separator: " ")
    }
}

public enum Checksum {
    /// RFC 1071 one's complement sum, folded and complemented.
    public static func internet<C: Collection>(_ bytes: C, initial: UInt32 = 0) -> UInt16 where C.Element == UInt8 {
        var sum = initial
        var iterator = bytes.makeIterator()
        while let hi = iterator.next() {
            let lo = iterator.next() ?? 0
            sum += UInt32(hi) << 8 | UInt32(lo)
        }
        while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    /// The IPv4 pseudo-header sum for a UDP/TCP checksum.
    public static func pseudoHeader(src: IPv4Address, dst: IPv4Address, proto: UInt8, length: Int) -> UInt32 {
        (src.value >> 16) + (src.value & 0xffff) + (dst.value >> 16) + (dst.value & 0xffff) + UInt32(proto) + UInt32(length)
    }
}

public enum PacketBuilder {
    /// Ethernet header, with an 802.1Q tag when `vlan` is given (or `vlanType` for 802.1ad).
    public static func ethernet(dst: MACAddress, src: MACAddress, type: UInt16, vlan: UInt16? = nil,
                                vlanType: UInt16 = EtherType.vlan) -> [UInt8] {
        var b = dst.bytes + src.bytes
        if let vlan {
            b.appendBE16(vlanType)
            b.appendBE16(vlan & 0x0fff)
        }
        b.appendBE16(type)
        return b
    }

    /// Fragment bits for `ipv4`.
    public struct Fragment: Sendable {
        public var dontFragment = false
        public var moreFragments = false
        /// In 8-byte units.
        public var offset: UInt16 = 0
        public init(dontFragment: Bool = false, moreFragments: Bool = false, offset: UInt16 = 0) {
            self.dontFragment = dontFragment
            self.moreFragments = moreFragments
            self.offset = offset
        }
        var field: UInt16 { (dontFragment ? 0x4000 : 0) | (moreFragments ? 0x2000 : 0) | (offset & 0x1fff) }
    }

    /// An IPv4 packet with a correct header checksum. `options` is padded to 4 bytes; `ihl`,
    /// `version` and `totalLength` override the computed values to build broken headers.
    public static func ipv4(src: IPv4Address, dst: IPv4Address, proto: UInt8, payload: [UInt8], ttl: UInt8 = 64,
                            tos: UInt8 = 0, id: UInt16 = 0x1234, fragment: Fragment = Fragment(),
                            options: [UInt8] = [], ihl: UInt8? = nil, version: UInt8 = 4,
                            totalLength: UInt16? = nil) -> [UInt8] {
        var opts = options
        while opts.count % 4 != 0 { opts.append(0) }
        let headerLength = 20 + opts.count
        var h: [UInt8] = []
        h.append(version << 4 | (ihl ?? UInt8(headerLength / 4)) & 0x0f)
        h.append(tos)
        h.appendBE16(totalLength ?? UInt16(headerLength + payload.count))
        h.appendBE16(id)
        h.appendBE16(fragment.field)
        h.append(ttl)
        h.append(proto)
        h.appendBE16(0)
        h += src.bytes + dst.bytes + opts
        h.setBE16(Checksum.internet(h), at: 10)
        return h + payload
    }

    /// A UDP datagram; checksum over the pseudo-header unless `checksum` is false (then 0).
    public static func udp(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, payload: [UInt8],
                           checksum: Bool = true) -> [UInt8] {
        udpDatagram(srcPort: srcPort, dstPort: dstPort, payload: payload) { length in
            checksum ? Checksum.pseudoHeader(src: src, dst: dst, proto: IPProto.udp, length: length) : nil
        }
    }

    /// A UDP datagram whose checksum starts from `pseudoHeader(length)` (nil: checksum 0).
    static func udpDatagram(srcPort: UInt16, dstPort: UInt16, payload: [UInt8], pseudoHeader: (Int) -> UInt32?) -> [UInt8] {
        var u: [UInt8] = []
        u.appendBE16(srcPort)
        u.appendBE16(dstPort)
        u.appendBE16(UInt16(8 + payload.count))
        u.appendBE16(0)
        u += payload
        if let initial = pseudoHeader(u.count) {
            var c = Checksum.internet(u, initial: initial)
            if c == 0 { c = 0xffff }
            u.setBE16(c, at: 6)
        }
        return u
    }

    /// A TCP segment (no options) with a correct checksum.
    public static func tcp(src: IPv4Address, dst: IPv4Address, srcPort: UInt16, dstPort: UInt16, seq: UInt32 = 1,
                           ack: UInt32 = 0, flags: UInt8 = 0x18, window: UInt16 = 65535, payload: [UInt8]) -> [UInt8] {
        var t: [UInt8] = []
        t.appendBE16(srcPort)
        t.appendBE16(dstPort)
        t.appendBE32(seq)
        t.appendBE32(ack)
        t.append(5 << 4)
        t.append(flags)
        t.appendBE16(window)
        t.appendBE16(0)
        t.appendBE16(0)
        t += payload
        t.setBE16(Checksum.internet(t, initial: Checksum.pseudoHeader(src: src, dst: dst, proto: IPProto.tcp, length: t.count)), at: 16)
        return t
    }

    /// An ICMP echo request (type 8) or reply (type 0).
    public static func icmpEcho(id: UInt16, sequence: UInt16, payload: [UInt8], reply: Bool = false) -> [UInt8] {
        var m: [UInt8] = [reply ? 0 : 8, 0, 0, 0]
        m.appendBE16(id)
        m.appendBE16(sequence)
        m += payload
        m.setBE16(Checksum.internet(m), at: 2)
        return m
    }

    /// The 8-byte VXLAN header: flags byte (0x08 = I), VNI.
    public static func vxlan(vni: UInt32, flags: UInt8 = 0x08, reservedLow: UInt8 = 0) -> [UInt8] {
        var v: [UInt8] = [flags, 0, 0, 0]
        v.appendBE32(vni << 8 | UInt32(reservedLow))
        return v
    }

    /// A whole VXLAN frame as a flannel node sends it: outer Ethernet/IPv4/UDP/VXLAN + `inner`
    /// (an inner Ethernet frame). UDP checksum 0 unless asked.
    public static func vxlanFrame(outerDst: MACAddress, outerSrc: MACAddress, src: IPv4Address, dst: IPv4Address,
                                  srcPort: UInt16 = 40000, dstPort: UInt16 = 8472, vni: UInt32 = 1,
                                  inner: [UInt8], udpChecksum: Bool = false, fragment: Fragment = Fragment(),
                                  options: [UInt8] = [], vxlanFlags: UInt8 = 0x08, tos: UInt8 = 0) -> [UInt8] {
        let udp = udp(src: src, dst: dst, srcPort: srcPort, dstPort: dstPort,
                      payload: vxlan(vni: vni, flags: vxlanFlags) + inner, checksum: udpChecksum)
        return ethernet(dst: outerDst, src: outerSrc, type: EtherType.ipv4)
            + ipv4(src: src, dst: dst, proto: IPProto.udp, payload: udp, tos: tos, id: 0x4242, fragment: fragment, options: options)
    }
}

/// What a frame holds, read back for assertions. Fields are nil past the point the frame ends.
public struct ParsedFrame: Sendable {
    public var dst: MACAddress
    public var src: MACAddress
    public var etherType: UInt16
    public var vlan: UInt16?
    /// Offset of the L3 header.
    public var l3Offset: Int
    public var ipv4: IPv4Header?
    public var udp: UDPHeader?
    public var vxlanVNI: UInt32?
    public var vxlanFlags: UInt8?
    /// Offset of what follows the VXLAN header (the inner Ethernet frame).
    public var innerOffset: Int?

    public struct IPv4Header: Sendable {
        public var version: UInt8, ihl: UInt8, tos: UInt8, totalLength: UInt16, id: UInt16
        public var dontFragment: Bool, moreFragments: Bool, fragmentOffset: UInt16
        public var ttl: UInt8, proto: UInt8, checksum: UInt16
        public var src: IPv4Address, dst: IPv4Address
        public var headerChecksumValid: Bool
    }

    public struct UDPHeader: Sendable {
        public var srcPort: UInt16, dstPort: UInt16, length: UInt16, checksum: UInt16
        /// 0 (not computed) or a correct checksum.
        public var checksumValidOrZero: Bool
    }

    /// nil when shorter than an Ethernet header.
    public init?(_ f: [UInt8]) {
        guard f.count >= 14 else { return nil }
        dst = MACAddress(bytes: f[0..<6])
        src = MACAddress(bytes: f[6..<12])
        var off = 12
        var type = f.be16(at: off)
        if type == EtherType.vlan || type == EtherType.qinq, f.count >= 18 {
            vlan = f.be16(at: 14) & 0x0fff
            off += 4
            type = f.be16(at: off)
        }
        etherType = type
        l3Offset = off + 2
        guard type == EtherType.ipv4, f.count >= l3Offset + 20 else { return }
        let o = l3Offset
        let ihl = f[o] & 0x0f
        let hlen = Int(ihl) * 4
        let frag = f.be16(at: o + 6)
        let valid = hlen >= 20 && f.count >= o + hlen && Checksum.internet(f[o..<(o + hlen)]) == 0
        let ip = IPv4Header(version: f[o] >> 4, ihl: ihl, tos: f[o + 1], totalLength: f.be16(at: o + 2), id: f.be16(at: o + 4),
                            dontFragment: frag & 0x4000 != 0, moreFragments: frag & 0x2000 != 0, fragmentOffset: frag & 0x1fff,
                            ttl: f[o + 8], proto: f[o + 9], checksum: f.be16(at: o + 10),
                            src: IPv4Address(bytes: f[(o + 12)..<(o + 16)]), dst: IPv4Address(bytes: f[(o + 16)..<(o + 20)]),
                            headerChecksumValid: valid)
        ipv4 = ip
        let u = o + hlen
        guard ip.proto == IPProto.udp, hlen >= 20, ip.fragmentOffset == 0, f.count >= u + 8 else { return }
        let length = Int(f.be16(at: u + 4))
        let checksum = f.be16(at: u + 6)
        var ok = checksum == 0
        if !ok, length >= 8, f.count >= u + length {
            ok = Checksum.internet(f[u..<(u + length)],
                                   initial: Checksum.pseudoHeader(src: ip.src, dst: ip.dst, proto: IPProto.udp, length: length)) == 0
        }
        udp = UDPHeader(srcPort: f.be16(at: u), dstPort: f.be16(at: u + 2), length: UInt16(length), checksum: checksum,
                        checksumValidOrZero: ok)
        guard f.count >= u + 16 else { return }
        vxlanFlags = f[u + 8]
        vxlanVNI = f.be32(at: u + 12) >> 8
        innerOffset = u + 16
    }
}

extension Array where Element == UInt8 {
    /// This Ethernet + IPv4 frame with the outer IPv4 total length set to `length` and the header
    /// checksum recomputed (to build frames whose only fault lies elsewhere).
    public func withTotalLength(_ length: UInt16) -> [UInt8] {
        guard count >= 34 else { return self }
        var f = self
        f[16] = UInt8(length >> 8)
        f[17] = UInt8(length & 0xff)
        let headerLength = Int(f[14] & 0x0f) * 4
        guard count >= 14 + headerLength else { return f }
        f[24] = 0
        f[25] = 0
        let check = Checksum.internet(f[14..<(14 + headerLength)])
        f[24] = UInt8(check >> 8)
        f[25] = UInt8(check & 0xff)
        return f
    }
}
