// Bounds-checked packet parsing and the few headers the userspace path writes. Every read goes
// through a `ByteCursor` that knows where the datagram ends: a field is read only after `take`
// proved it lies inside the bytes received, so a truncated or hostile datagram yields a drop
// reason, never an out-of-bounds read, a trap or a stalled loop.
//
// Wire facts (docs/FLANNEL-COMPAT.md): VXLAN header = flags (0x08, the I bit), 3 reserved bytes, VNI in
// the next 3 bytes, 1 reserved byte; inner Ethernet dst = receiver's VtepMAC, src = sender's
// VtepMAC, type 0x0800; then the IPv4 packet. The udp backend puts the IPv4 packet alone in UDP.
import NetTypes

/// A read position inside a received buffer that never moves past `end`.
struct ByteCursor {
    let base: UnsafeRawPointer
    private(set) var offset: Int
    let end: Int

    init(_ base: UnsafeRawPointer, offset: Int = 0, end: Int) {
        self.base = base
        self.offset = offset
        self.end = end
    }

    var remaining: Int { end - offset }

    /// Claims the next `count` bytes; returns their start offset, or nil (cursor unchanged) if the
    /// buffer is shorter.
    @inline(__always) mutating func take(_ count: Int) -> Int? {
        guard count >= 0, count <= end - offset else { return nil }
        defer { offset += count }
        return offset
    }

    @inline(__always) func u8(_ at: Int) -> UInt8 { base.load(fromByteOffset: at, as: UInt8.self) }
    @inline(__always) func u16(_ at: Int) -> UInt16 {
        UInt16(bigEndian: base.loadUnaligned(fromByteOffset: at, as: UInt16.self))
    }
    @inline(__always) func u32(_ at: Int) -> UInt32 {
        UInt32(bigEndian: base.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }
    /// 48-bit MAC at `at`, first byte most significant.
    @inline(__always) func mac(_ at: Int) -> UInt64 {
        UInt64(u16(at)) << 32 | UInt64(u32(at + 2))
    }
}

enum Wire {
    static let vxlanHeaderLength = 8
    static let ethernetHeaderLength = 14
    static let vxlanEncapLength = vxlanHeaderLength + ethernetHeaderLength  // 22
    static let etherTypeIPv4: UInt16 = 0x0800
    static let vxlanFlagI: UInt8 = 0x08

    @inline(__always) static func store16(_ p: UnsafeMutableRawPointer, _ at: Int, _ v: UInt16) {
        p.storeBytes(of: v.bigEndian, toByteOffset: at, as: UInt16.self)
    }
    @inline(__always) static func store32(_ p: UnsafeMutableRawPointer, _ at: Int, _ v: UInt32) {
        p.storeBytes(of: v.bigEndian, toByteOffset: at, as: UInt32.self)
    }
    @inline(__always) static func storeMAC(_ p: UnsafeMutableRawPointer, _ at: Int, _ mac: UInt64) {
        store16(p, at, UInt16(truncatingIfNeeded: mac >> 32))
        store32(p, at + 2, UInt32(truncatingIfNeeded: mac))
    }
    @inline(__always) static func load16(_ p: UnsafeRawPointer, _ at: Int) -> UInt16 {
        UInt16(bigEndian: p.loadUnaligned(fromByteOffset: at, as: UInt16.self))
    }
    @inline(__always) static func load32(_ p: UnsafeRawPointer, _ at: Int) -> UInt32 {
        UInt32(bigEndian: p.loadUnaligned(fromByteOffset: at, as: UInt32.self))
    }

    /// The one's-complement sum of `length` bytes (big-endian 16-bit words), not folded/inverted.
    static func sum(_ p: UnsafeRawPointer, _ length: Int, into initial: UInt64 = 0) -> UInt64 {
        var acc = initial
        var i = 0
        while i + 8 <= length {
            let w = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            acc &+= (w >> 48) + (w >> 32 & 0xffff) + (w >> 16 & 0xffff) + (w & 0xffff)
            i += 8
        }
        while i + 2 <= length {
            acc &+= UInt64(load16(p, i))
            i += 2
        }
        if i < length { acc &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << 8 }
        return acc
    }

    /// Folds a sum to 16 bits and inverts it: the value to store in a checksum field.
    static func finish(_ sum: UInt64) -> UInt16 {
        var s = sum
        while s >> 16 != 0 { s = (s & 0xffff) + (s >> 16) }
        return ~UInt16(s)
    }
}

/// What an IPv4 header check found.
enum IPv4Check {
    case ok(headerLength: Int, totalLength: Int)
    case drop(UserspaceDropReason)
}

extension Wire {
    /// Validates the IPv4 header at `cursor.offset`: version 4, IHL >= 5, IHL*4 <= total length <=
    /// the bytes available. `notIPv4` reports a wrong version (the caller picks what that means).
    @inline(__always)
    static func checkIPv4(_ cursor: ByteCursor, notIPv4: UserspaceDropReason) -> IPv4Check {
        var c = cursor
        guard let at = c.take(20) else {
            return cursor.remaining >= 1 && cursor.u8(cursor.offset) >> 4 != 4 ? .drop(notIPv4) : .drop(.malformed)
        }
        let versionIHL = c.u8(at)
        guard versionIHL >> 4 == 4 else { return .drop(notIPv4) }
        let headerLength = Int(versionIHL & 0x0f) * 4
        let totalLength = Int(c.u16(at + 2))
        guard headerLength >= 20, headerLength <= totalLength, totalLength <= cursor.remaining else {
            return .drop(.malformed)
        }
        return .ok(headerLength: headerLength, totalLength: totalLength)
    }
}

/// The per-node framing parameters the workers need, precomputed once.
struct Framing: Sendable {
    let port: UInt16
    let vni: UInt32
    /// Our VtepMAC (vxlan), packed.
    let localMAC: UInt64
    /// Bytes written in front of the inner packet: 22 for vxlan, 0 for udp.
    let encapLength: Int

    /// Derived, not stored: only vxlan writes a header in front of the inner packet.
    var isVXLAN: Bool { encapLength != 0 }

    init(_ encapsulation: UserspaceConfig.Encapsulation) {
        switch encapsulation {
        case .vxlan(let vni, let port, let mac):
            self.port = port
            self.vni = vni
            localMAC = PeerSnapshot.pack(mac)
            encapLength = Wire.vxlanEncapLength
        case .udp(let port):
            self.port = port
            vni = 0
            localMAC = 0
            encapLength = 0
        }
    }

    /// Writes the VXLAN header and inner Ethernet header in the `encapLength` bytes at `p`.
    @inline(__always)
    func writeEncap(_ p: UnsafeMutableRawPointer, peerMAC: UInt64) {
        guard isVXLAN else { return }
        Wire.store32(p, 0, UInt32(Wire.vxlanFlagI) << 24)
        Wire.store32(p, 4, vni << 8)
        Wire.storeMAC(p, 8, peerMAC)
        Wire.storeMAC(p, 14, localMAC)
        Wire.store16(p, 20, Wire.etherTypeIPv4)
    }

    enum Decap {
        case deliver(offset: Int, length: Int)
        case drop(UserspaceDropReason)
    }

    /// Checks one datagram's payload (`length` bytes at `p`) and finds the inner IPv4 packet.
    @inline(__always)
    func decapsulate(_ p: UnsafeRawPointer, length: Int) -> Decap {
        var cursor = ByteCursor(p, end: length)
        if isVXLAN {
            guard let vx = cursor.take(Wire.vxlanHeaderLength) else { return .drop(.malformed) }
            guard cursor.u8(vx) & Wire.vxlanFlagI != 0, cursor.u32(vx + 4) >> 8 == vni else { return .drop(.badVNI) }
            guard let eth = cursor.take(Wire.ethernetHeaderLength) else { return .drop(.malformed) }
            guard cursor.mac(eth) == localMAC else { return .drop(.innerNotOurs) }
            guard cursor.mac(eth + 6) != localMAC else { return .drop(.loop) }
            guard cursor.u16(eth + 12) == Wire.etherTypeIPv4 else { return .drop(.innerNotIPv4) }
        }
        switch Wire.checkIPv4(cursor, notIPv4: isVXLAN ? .innerNotIPv4 : .malformed) {
        case .drop(let reason): return .drop(reason)
        // Trailing bytes (Ethernet padding of short frames) are cut off at the IPv4 total length.
        case .ok(_, let totalLength): return .deliver(offset: cursor.offset, length: totalLength)
        }
    }
}

extension Wire {
    /// The outer TOS for an inner IPv4 packet, as the kernel's ip_tunnel_ecn_encap with a device TOS
    /// of 0 (flannel's): the inner ECN bits, except that CE goes out as ECT(0).
    @inline(__always)
    static func outerTOS(_ inner: UnsafeRawPointer) -> UInt8 {
        let ecn = inner.load(fromByteOffset: 1, as: UInt8.self) & 0x3
        return ecn == 0x3 ? 0x2 : ecn
    }

    /// What the kernel's vxlan_rcv does with the outer ECN bits (IP_ECN_decapsulate): an outer
    /// Congestion Experienced mark is copied into an ECT inner IPv4 header (checksum updated,
    /// RFC 1624); a not-ECT inner packet cannot carry it, and the datagram is dropped (false).
    @inline(__always)
    static func copyOuterECN(_ outerTOS: UInt8, into inner: UnsafeMutableRawPointer) -> Bool {
        guard outerTOS & 0x3 == 0x3 else { return true }
        let tos = inner.load(fromByteOffset: 1, as: UInt8.self)
        guard tos & 0x3 != 0 else { return false }
        guard tos & 0x3 != 0x3 else { return true }
        let oldWord = load16(inner, 0)
        inner.storeBytes(of: tos | 0x3, toByteOffset: 1, as: UInt8.self)
        let newWord = load16(inner, 0)
        let check = load16(inner, 10)
        var sum = UInt32(~check) + UInt32(~oldWord) + UInt32(newWord)
        sum = (sum & 0xffff) + (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16)
        store16(inner, 10, ~UInt16(sum))
        return true
    }

    /// Completes an inner TCP/UDP checksum that a sender left partial.
    ///
    /// A kernel vxlan node whose underlay is a veth (kind-style clusters, this project's netns lab)
    /// never computes the inner L4 checksum: the skb stays CHECKSUM_PARTIAL across the veth and the
    /// kernel's own vxlan receiver trusts that flag. A UDP socket hands us only the bytes, where the
    /// checksum field still holds the folded pseudo-header sum; written into the TUN as is, the
    /// receiving pod drops the segment as corrupt. A real checksum equals the pseudo-header sum
    /// only by accident, so a field equal to it is taken as partial and completed. Should a
    /// correct checksum happen to equal it, completing rewrites the same value: the repair cannot
    /// damage a good packet. Costs a few loads per packet; a full sum only where it repairs.
    @inline(__always)
    static func repairPartialChecksum(_ packet: UnsafeMutableRawPointer, headerLength: Int, totalLength: Int) {
        let proto = packet.load(fromByteOffset: 9, as: UInt8.self)
        let fieldOffset: Int
        switch proto {
        case 6: fieldOffset = 16
        case 17: fieldOffset = 6
        default: return
        }
        guard load16(packet, 6) & 0x3fff == 0 else { return }  // fragments: no partial checksum
        let l4Length = totalLength - headerLength
        guard l4Length >= fieldOffset + 2 else { return }
        let l4 = packet + headerLength
        let field = load16(l4, fieldOffset)
        if proto == 17 && field == 0 { return }  // UDP without checksum
        var pseudo = UInt64(load16(packet, 12)) + UInt64(load16(packet, 14)) + UInt64(load16(packet, 16))
            + UInt64(load16(packet, 18)) + UInt64(proto) + UInt64(l4Length)
        while pseudo >> 16 != 0 { pseudo = (pseudo & 0xffff) + (pseudo >> 16) }
        guard field == UInt16(pseudo) else { return }
        // The field holds the pseudo-header sum, which is what the full sum over l4 must include.
        store16(l4, fieldOffset, finish(sum(l4, l4Length)))
    }
}
