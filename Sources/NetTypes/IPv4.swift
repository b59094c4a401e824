// Value types for IPv4 addresses and subnets shared by every layer. Parsing is strict (dotted quad,
// no leading zeros beyond "0", prefix 0...32) so that untrusted input from etcd or flags is either
// exact or rejected with a reason.

/// An IPv4 address, stored as a host-order integer; `bytes` gives network order.
public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Network-order bytes, e.g. 10.5.1.0 → [10, 5, 1, 0].
    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == 4, "IPv4Address needs 4 bytes")
        value = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Parses a dotted quad; nil for anything else.
    public init?(_ text: some StringProtocol) {
        var octets: [UInt32] = []
        for part in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(part.count > 1 && part.first == "0"), let n = UInt32(part), n <= 255 else { return nil }
            octets.append(n)
        }
        guard octets.count == 4 else { return nil }
        value = octets.reduce(0) { $0 << 8 | $1 }
    }

    public var bytes: [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    /// The 4 bytes as a C `__u8[4]` tuple, the form the shared header uses.
    public var tuple: (UInt8, UInt8, UInt8, UInt8) {
        (UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff))
    }

    public init(tuple t: (UInt8, UInt8, UInt8, UInt8)) { self.init(t.0, t.1, t.2, t.3) }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    public static func < (a: Self, b: Self) -> Bool { a.value < b.value }
}

/// An IPv4 network: an address whose host bits are zero, and a prefix length.
public struct IPv4Subnet: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefixLength: Int

    /// Fails (nil) if `prefixLength` is outside 0...32 or host bits are set.
    public init?(address: IPv4Address, prefixLength: Int) {
        guard (0...32).contains(prefixLength), address.value & ~IPv4Subnet.mask(prefixLength) == 0 else { return nil }
        self.address = address
        self.prefixLength = prefixLength
    }

    /// Parses CIDR "10.5.0.0/16" (host bits must be zero).
    public init?(cidr text: some StringProtocol) {
        guard let subnet = Self.parse(text, separator: "/", maxDigits: 2) else { return nil }
        self = subnet
    }

    /// Parses flannel's lease-key form "10.5.52.0-24".
    public init?(leaseKey text: some StringProtocol) {
        guard let subnet = Self.parse(text, separator: "-", maxDigits: 2) else { return nil }
        self = subnet
    }

    /// Addresses in the subnet.
    public var size: UInt64 { UInt64(1) << UInt64(32 - prefixLength) }
}
