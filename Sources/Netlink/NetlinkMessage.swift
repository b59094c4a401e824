// Building requests (libmnl into one buffer) and parsing replies (Swift, bounds-checked copies).
//
// Fixed headers (ifinfomsg, ifaddrmsg, rtmsg, ndmsg) are written and read byte by byte at their
// documented offsets rather than through the imported C structs: the layouts are kernel ABI, and
// byte access cannot be fooled by Swift's view of C padding. Constants are spelled out in `RT`
// with their uapi names, because Swift imports them as a mix of Int and enum types.

import CMnl
import Glibc
import NetTypes

/// rtnetlink constants used here, with their uapi names (linux/rtnetlink.h, if_link.h, neighbour.h).
enum RT {
    static let newLink: UInt16 = 16, delLink: UInt16 = 17, getLink: UInt16 = 18
    static let newAddr: UInt16 = 20, delAddr: UInt16 = 21, getAddr: UInt16 = 22
    static let newRoute: UInt16 = 24, delRoute: UInt16 = 25, getRoute: UInt16 = 26
    static let newNeigh: UInt16 = 28, delNeigh: UInt16 = 29, getNeigh: UInt16 = 30
    static let newQdisc: UInt16 = 36, getQdisc: UInt16 = 38, newTfilter: UInt16 = 44, getTfilter: UInt16 = 46
    // TCA_*
    static let tcaKind: UInt16 = 1

    static let fCreate: UInt16 = 0x400, fExcl: UInt16 = 0x200, fReplace: UInt16 = 0x100

    // IFLA_*
    static let iflaAddress: UInt16 = 1, iflaIfname: UInt16 = 3, iflaMTU: UInt16 = 4, iflaLink: UInt16 = 5
    static let iflaMaster: UInt16 = 10, iflaOperstate: UInt16 = 16, iflaLinkinfo: UInt16 = 18
    static let iflaLinkNetnsID: UInt16 = 37, iflaQdisc: UInt16 = 6
    static let iflaInfoKind: UInt16 = 1, iflaInfoData: UInt16 = 2
    // IFLA_VXLAN_*
    static let vxlanID: UInt16 = 1, vxlanLink: UInt16 = 3, vxlanLocal: UInt16 = 4, vxlanTTL: UInt16 = 5
    static let vxlanLearning: UInt16 = 7, vxlanAgeing: UInt16 = 8, vxlanL2Miss: UInt16 = 13, vxlanL3Miss: UInt16 = 14
    static let vxlanPort: UInt16 = 15, vxlanUDPCsum: UInt16 = 18, vxlanGBP: UInt16 = 23
    static let vxlanGroup: UInt16 = 2, vxlanGroup6: UInt16 = 16, vxlanLocal6: UInt16 = 17
    // IFA_*
    static let ifaAddress: UInt16 = 1, ifaLocal: UInt16 = 2, ifaLabel: UInt16 = 3, ifaBroadcast: UInt16 = 4, ifaFlags: UInt16 = 8
    // RTA_*
    static let rtaDst: UInt16 = 1, rtaOIF: UInt16 = 4, rtaGateway: UInt16 = 5, rtaPriority: UInt16 = 6
    static let rtaPrefSrc: UInt16 = 7, rtaMetrics: UInt16 = 8, rtaTable: UInt16 = 15
    // RTAX_* (inside RTA_METRICS)
    static let rtaxMTU: UInt16 = 2
    // NDA_*
    static let ndaDst: UInt16 = 1, ndaLLAddr: UInt16 = 2, ndaVNI: UInt16 = 7, ndaMaster: UInt16 = 9, ndaPort: UInt16 = 6

    static let afInet: UInt8 = 2, afInet6: UInt8 = 10, afBridge: UInt8 = 7, afUnspec: UInt8 = 0
    static let tableMain: UInt8 = 254
    static let rtnUnicast: UInt8 = 1
    static let rtprotBoot: UInt8 = 3
    static let rtnhOnlink: UInt32 = 4
    static let iffUp: UInt32 = 1

    static func name(_ type: UInt16) -> String {
        switch type {
        case newLink: "RTM_NEWLINK"; case delLink: "RTM_DELLINK"; case getLink: "RTM_GETLINK"
        case newAddr: "RTM_NEWADDR"; case delAddr: "RTM_DELADDR"; case getAddr: "RTM_GETADDR"
        case newRoute: "RTM_NEWROUTE"; case delRoute: "RTM_DELROUTE"; case getRoute: "RTM_GETROUTE"
        case newNeigh: "RTM_NEWNEIGH"; case delNeigh: "RTM_DELNEIGH"; case getNeigh: "RTM_GETNEIGH"
        case getQdisc: "RTM_GETQDISC"; case getTfilter: "RTM_GETTFILTER"
        default: "RTM_\(type)"
        }
    }
}

/// One request under construction. Single use, not shared between threads. It owns its buffer,
/// or is built in place inside a batch's send buffer (`NetlinkSocket.apply`).
final class NetlinkRequest {
    static let capacity = 8192
    let buffer: UnsafeMutableRawBufferPointer
    private let ownsBuffer: Bool
    let header: UnsafeMutablePointer<nlmsghdr>
    let type: UInt16
    /// For the error text: "RTM_NEWROUTE", plus "(replace)" etc. when flags say so.
    let operationName: String

    convenience init(type: UInt16, flags: UInt16 = 0) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.capacity, alignment: 8)
        self.init(type: type, flags: flags, in: buffer, owned: true)
    }

    /// A request written at the start of `buffer` (zeroed here), which it owns when `owned`.
    init(type: UInt16, flags: UInt16, in buffer: UnsafeMutableRawBufferPointer, owned: Bool) {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        self.buffer = buffer
        ownsBuffer = owned
        header = mnl_nlmsg_put_header(buffer.baseAddress)
        header.pointee.nlmsg_type = type
        header.pointee.nlmsg_flags = flags
        self.type = type
        var name = RT.name(type)
        if flags & RT.fReplace != 0 { name += " (replace)" }
        operationName = name
    }

    deinit { if ownsBuffer { buffer.deallocate() } }

    /// Appends a fixed header of `bytes` (the family header, e.g. ifinfomsg), zero-padded to 4.
    func putFixedHeader(_ bytes: [UInt8]) {
        let p = mnl_nlmsg_put_extra_header(header, bytes.count)!
        bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    // Attribute sizes here are tiny against an 8 KB buffer; the checked variants guard anyway and a
    // request that would not fit simply lacks the attribute, which the kernel then refuses.
    func put(_ type: UInt16, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { mnl_attr_put_check(header, buffer.count, type, bytes.count, $0.baseAddress) }
    }
    func putU8(_ type: UInt16, _ v: UInt8) { _ = mnl_attr_put_u8_check(header, buffer.count, type, v) }
    func putU32(_ type: UInt16, _ v: UInt32) { _ = mnl_attr_put_u32_check(header, buffer.count, type, v) }
    func putString(_ type: UInt16, _ s: String) { _ = mnl_attr_put_strz_check(header, buffer.count, type, s) }
    /// A 16-bit value in network byte order (IFLA_VXLAN_PORT).
    func putBE16(_ type: UInt16, _ v: UInt16) { put(type, [UInt8(v >> 8), UInt8(v & 0xff)]) }

    func nest(_ type: UInt16, _ body: () -> Void) {
        guard let start = mnl_attr_nest_start_check(header, buffer.count, type) else { return }
        body()
        mnl_attr_nest_end(header, start)
    }
}

/// One received message, copied out of the receive buffer.
struct NetlinkMessage: Sendable {
    let bytes: [UInt8]

    init(bytes: UnsafeRawBufferPointer) { self.bytes = Array(bytes) }

    var type: UInt16 { u16(at: 4) }

    func u8(at i: Int) -> UInt8 { i < bytes.count ? bytes[i] : 0 }
    func u16(at i: Int) -> UInt16 { i + 2 <= bytes.count ? UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8 : 0 }
    func u32(at i: Int) -> UInt32 {
        guard i + 4 <= bytes.count else { return 0 }
        return UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
    }
    func i32(at i: Int) -> Int32 { Int32(bitPattern: u32(at: i)) }

    /// The attributes that follow a fixed header of `fixedHeaderSize` bytes.
    func attributes(afterFixedHeader fixedHeaderSize: Int) -> NetlinkAttributes {
        NetlinkAttributes(bytes[...], start: 16 + ((fixedHeaderSize + 3) & ~3))
    }

    /// For NLMSG_ERROR: (error code, kernel's extended-ACK message).
    func errorPayload() -> (Int32, String?) {
        let code = i32(at: 16)
        let flags = u16(at: 6)
        guard flags & 0x200 != 0 else { return (code, nil) } // NLM_F_ACK_TLVS
        // nlmsgerr = error (4) + the original header (16); the original payload follows unless capped.
        var start = 16 + 4 + 16
        if flags & 0x100 == 0 { start += max(0, Int(u32(at: 20)) - 16) } // NLM_F_CAPPED
        let tlvs = NetlinkAttributes(bytes[...], start: start)
        return (code, tlvs.string(1)) // NLMSGERR_ATTR_MSG
    }
}

/// Attributes parsed from a byte range: type (without NLA_F_* bits) → payload.
struct NetlinkAttributes {
    private(set) var values: [UInt16: ArraySlice<UInt8>] = [:]

    init(_ bytes: ArraySlice<UInt8>, start: Int) {
        var i = start
        let end = bytes.endIndex
        while i + 4 <= end {
            let len = Int(UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8)
            let type = (UInt16(bytes[i + 2]) | UInt16(bytes[i + 3]) << 8) & 0x3fff
            guard len >= 4, i + len <= end else { break }
            values[type] = bytes[(i + 4)..<(i + len)]
            i += (len + 3) & ~3
        }
    }

    subscript(_ type: UInt16) -> ArraySlice<UInt8>? { values[type] }

    func nested(_ type: UInt16) -> NetlinkAttributes? {
        guard let v = values[type] else { return nil }
        return NetlinkAttributes(v, start: v.startIndex)
    }
    func u8(_ type: UInt16) -> UInt8? { values[type].flatMap { $0.first } }
    func u16(_ type: UInt16) -> UInt16? {
        guard let v = values[type], v.count >= 2 else { return nil }
        return UInt16(v[v.startIndex]) | UInt16(v[v.startIndex + 1]) << 8
    }
    func be16(_ type: UInt16) -> UInt16? {
        guard let v = values[type], v.count >= 2 else { return nil }
        return UInt16(v[v.startIndex]) << 8 | UInt16(v[v.startIndex + 1])
    }
    func u32(_ type: UInt16) -> UInt32? {
        guard let v = values[type], v.count >= 4 else { return nil }
        let s = v.startIndex
        return UInt32(v[s]) | UInt32(v[s + 1]) << 8 | UInt32(v[s + 2]) << 16 | UInt32(v[s + 3]) << 24
    }
    func string(_ type: UInt16) -> String? {
        guard let v = values[type] else { return nil }
        return String(decoding: v.prefix { $0 != 0 }, as: UTF8.self)
    }
    func ipv4(_ type: UInt16) -> IPv4Address? {
        guard let v = values[type], v.count == 4 else { return nil }
        return IPv4Address(bytes: v)
    }
    func mac(_ type: UInt16) -> MACAddress? {
        guard let v = values[type], v.count == 6 else { return nil }
        return MACAddress(bytes: v)
    }
}

/// Little-endian/host-order byte helpers for writing fixed headers (x86 and arm64 are little-endian;
/// the kernel's fixed headers are in host order).
extension Array where Element == UInt8 {
    mutating func appendU16(_ v: UInt16) { append(UInt8(v & 0xff)); append(UInt8(v >> 8)) }
    mutating func appendU32(_ v: UInt32) {
        append(UInt8(v & 0xff)); append(UInt8(v >> 8 & 0xff)); append(UInt8(v >> 16 & 0xff)); append(UInt8(v >> 24))
    }
    mutating func appendI32(_ v: Int32) { appendU32(UInt32(bitPattern: v)) }
}
