/// An IPv6 address, held as one 128-bit number (network order: the first byte is the most
/// significant), so that subnet arithmetic is plain integer arithmetic.
///
/// Text in and out as Go's `net.IP` reads and writes it, because flannel's lease keys, lease values
/// and subnet.env carry IPv6 subnets in that form (`10.12.13.0-24&fd00:12:13::-56`): lowercase hex
/// without leading zeros, the longest run of two or more zero groups (the first of equal runs)
/// written `::`, and an IPv4-mapped address (::ffff:a.b.c.d) written as its dotted IPv4 form.
public struct IPv6Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var value: UInt128

    public init(_ value: UInt128) { self.value = value }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        value = bytes.reduce(UInt128(0)) { $0 << 8 | UInt128($1) }
    }

    /// Parses "fd00:12:13::", "::1", "::ffff:10.0.0.1" (RFC 4291 text forms; no zone, no brackets).
    public init?(_ text: some StringProtocol) {
        let text = String(text)
        guard !text.isEmpty, text.utf8.count <= 45 else { return nil }
        let halves = text.split(separator: "::", omittingEmptySubsequences: false).map(String.init)
        guard halves.count <= 2 else { return nil }
        func parseGroups(_ part: String, allowIPv4: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let fields = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, field) in fields.enumerated() {
                if allowIPv4, i == fields.count - 1, field.contains(".") {
                    guard let v4 = IPv4Address(field) else { return nil }
                    result.append(UInt16(v4.value >> 16))
                    result.append(UInt16(v4.value & 0xffff))
                    continue
                }
                guard (1...4).contains(field.count), field.allSatisfy(\.isHexDigit), let g = UInt16(field, radix: 16) else {
                    return nil
                }
                result.append(g)
            }
            return result
        }
        var all: [UInt16]
        if halves.count == 2 {
            guard let head = parseGroups(halves[0], allowIPv4: false), let tail = parseGroups(halves[1], allowIPv4: true),
                  head.count + tail.count <= 7 else { return nil }
            all = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let groups = parseGroups(text, allowIPv4: true), groups.count == 8 else { return nil }
            all = groups
        }
        value = all.reduce(UInt128(0)) { $0 << 16 | UInt128($1) }
    }

    /// Network-order bytes.
    public var bytes: [UInt8] { (0..<16).map { UInt8(truncatingIfNeeded: value >> UInt128(8 * (15 - $0))) } }

    var groups: [UInt16] { (0..<8).map { UInt16(truncatingIfNeeded: value >> UInt128(16 * (7 - $0))) } }

    public static let unspecified = IPv6Address(0)

    /// ::ffff:a.b.c.d, an IPv4 address in IPv6 clothing.
    public var isIPv4Mapped: Bool { value >> 32 == 0xffff }
    public var isLoopback: Bool { value == 1 }
    /// ff00::/8
    public var isMulticast: Bool { value >> 120 == 0xff }
    /// fe80::/10
    public var isLinkLocal: Bool { value >> 118 == 0x3fa }

    public var description: String {
        if isIPv4Mapped { return IPv4Address(UInt32(truncatingIfNeeded: value)).description }
        let g = groups
        // The longest run of at least two zero groups; the first one on a tie.
        var bestStart = -1, bestLength = 0, i = 0
        while i < 8 {
            guard g[i] == 0 else { i += 1; continue }
            var j = i
            while j < 8 && g[j] == 0 { j += 1 }
            if j - i > bestLength && j - i >= 2 { bestStart = i; bestLength = j - i }
            i = j
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(g[$0], radix: 16) }.joined(separator: ":") }
        guard bestStart >= 0 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
}

/// An IPv6 prefix, e.g. fd00:12:13::/56 (host bits zero).
public struct IPv6Subnet: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let address: IPv6Address
    public let prefixLength: Int

    /// nil unless `prefixLength` is 0...128 and the address has no bits set past the prefix.
    public init?(address: IPv6Address, prefixLength: Int) {
        guard (0...128).contains(prefixLength), address.value & ~IPv6Subnet.mask(prefixLength) == 0 else { return nil }
        self.address = address
        self.prefixLength = prefixLength
    }

    /// Parses CIDR "fd00:10::/48" (host bits must be zero).
    public init?(cidr text: some StringProtocol) {
        guard let subnet = Self.parse(text, separator: "/", maxDigits: 3) else { return nil }
        self = subnet
    }
}
