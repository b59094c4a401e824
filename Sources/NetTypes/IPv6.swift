/// An IPv6 address: 16 bytes in network order.
///
/// Text in and out as Go's `net.IP` reads and writes it, because flannel's lease keys carry the
/// IPv6 half of a dual-stack subnet in that form (`10.12.13.0-24&fd00:12:13::-56`): lowercase hex
/// without leading zeros, the longest run of two or more zero groups (the first of equal runs)
/// written `::`, and an IPv4-mapped address (::ffff:a.b.c.d) written as its dotted IPv4 form.
public struct IPv6Address: Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses "fd00:12:13::", "::1", "::ffff:10.0.0.1" (RFC 4291 text forms; no zone, no brackets).
    public init?(_ text: some StringProtocol) {
        let text = String(text)
        guard !text.isEmpty, text.utf8.count <= 45 else { return nil }
        var groups: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
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
        if halves.count == 2 {
            sawGap = true
            guard let head = parseGroups(halves[0], allowIPv4: false), let rest = parseGroups(halves[1], allowIPv4: true) else {
                return nil
            }
            groups = head
            tail = rest
            guard groups.count + tail.count <= 7 else { return nil }
        } else {
            guard let all = parseGroups(text, allowIPv4: true), all.count == 8 else { return nil }
            groups = all
        }
        let zeros = sawGap ? 8 - groups.count - tail.count : 0
        let all = groups + [UInt16](repeating: 0, count: zeros) + tail
        guard all.count == 8 else { return nil }
        bytes = all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }

    var groups: [UInt16] { (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) } }

    public var description: String {
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            return bytes[12..<16].map { String($0) }.joined(separator: ".")
        }
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
}

/// An IPv6 prefix, e.g. fd00:12:13::/56 (host bits zero).
public struct IPv6Subnet: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv6Address
    public var prefixLength: Int

    /// nil unless `prefixLength` is 0...128 and the address has no bits set past the prefix.
    public init?(address: IPv6Address, prefixLength: Int) {
        guard (0...128).contains(prefixLength) else { return nil }
        for bit in prefixLength..<128 where address.bytes[bit / 8] & (0x80 >> UInt8(bit % 8)) != 0 { return nil }
        self.address = address
        self.prefixLength = prefixLength
    }

    /// "fd00:12:13::/56"
    public var description: String { "\(address)/\(prefixLength)" }
    /// "fd00:12:13::-56", flannel's key form.
    public var leaseKey: String { "\(address)-\(prefixLength)" }
}
