// What code that serves both IP versions (netlink messages, the kernel's peer tables, lease keys)
// needs of an address and a subnet type. IPv4Address/IPv4Subnet and IPv6Address/IPv6Subnet conform;
// a function generic over `IPAddressType` is written once and speaks either family.

/// The two IP versions, with what a kernel interface needs to know of each.
public enum IPFamily: Sendable, Hashable, CustomStringConvertible {
    case ipv4, ipv6

    /// AF_INET / AF_INET6, as netlink and sockets spell them.
    public var addressFamily: UInt8 {
        switch self {
        case .ipv4: 2
        case .ipv6: 10
        }
    }

    /// Bytes of one address on the wire.
    public var addressLength: Int {
        switch self {
        case .ipv4: 4
        case .ipv6: 16
        }
    }

    public var description: String {
        switch self {
        case .ipv4: "IPv4"
        case .ipv6: "IPv6"
        }
    }
}

public protocol IPAddressType: Hashable, Comparable, Sendable, CustomStringConvertible {
    associatedtype Subnet: IPSubnetType where Subnet.Address == Self
    /// The address as one host-order integer (UInt32, UInt128): what subnet arithmetic works on.
    associatedtype Value: FixedWidthInteger & UnsignedInteger & Sendable
    static var family: IPFamily { get }
    var value: Value { get }
    init(_ value: Value)
    /// The family's text form; nil for anything else.
    init?(_ text: some StringProtocol)
    /// Network-order bytes.
    var bytes: [UInt8] { get }
    /// nil unless `networkBytes` has the family's length.
    init?(networkBytes: [UInt8])
}

public protocol IPSubnetType: Hashable, Comparable, Sendable, CustomStringConvertible {
    associatedtype Address: IPAddressType where Address.Subnet == Self
    var address: Address { get }
    var prefixLength: Int { get }
    /// nil when the prefix is out of range or host bits are set.
    init?(address: Address, prefixLength: Int)
    func contains(_ address: Address) -> Bool
    func contains(_ subnet: Self) -> Bool
}

extension IPv4Address: IPAddressType {
    public typealias Subnet = IPv4Subnet
    public static var family: IPFamily { .ipv4 }
    public init?(networkBytes: [UInt8]) {
        guard networkBytes.count == 4 else { return nil }
        self.init(bytes: networkBytes)
    }
}

extension IPv4Subnet: IPSubnetType {}

extension IPv6Address: IPAddressType {
    public typealias Subnet = IPv6Subnet
    public static var family: IPFamily { .ipv6 }
    public init?(networkBytes: [UInt8]) { self.init(bytes: networkBytes) }
}

extension IPv6Subnet: IPSubnetType {}

// What a prefix means does not depend on the family: one definition serves IPv4Subnet and IPv6Subnet.
// @inlinable: callers in other modules get code specialised for their family, as before.
extension IPSubnetType {
    /// The network mask of `prefixLength` (0 up to the family's bits), host order.
    @inlinable
    public static func mask(_ prefixLength: Int) -> Address.Value {
        prefixLength == 0 ? 0 : Address.Value.max << Address.Value(Address.Value.bitWidth - prefixLength)
    }

    @inlinable public var mask: Address.Value { Self.mask(prefixLength) }
    /// The last address of the subnet (IPv4's broadcast address).
    @inlinable public var last: Address { Address(address.value | ~mask) }

    @inlinable public func contains(_ a: Address) -> Bool { a.value & mask == address.value }

    /// The address `n` after the network address (".1" or "::1" is `host(1)`).
    @inlinable public func host(_ n: Address.Value) -> Address { Address(address.value &+ n) }

    /// The subnet containing `address`, host bits cleared.
    @inlinable
    public init(containing address: Address, prefixLength: Int) {
        precondition((0...Address.Value.bitWidth).contains(prefixLength), "prefix length out of range")
        self.init(address: Address(address.value & Self.mask(prefixLength)), prefixLength: prefixLength)!
    }

    /// Parses "<address><separator><prefix length>", the length in 1 to `maxDigits` ASCII digits (no
    /// sign, no spaces); nil when anything is off, the prefix is out of range or host bits are set.
    static func parse(_ text: some StringProtocol, separator: Character, maxDigits: Int) -> Self? {
        let parts = text.split(separator: separator, omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Address(parts[0]), (1...maxDigits).contains(parts[1].count),
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(parts[1]) else { return nil }
        return Self(address: a, prefixLength: p)
    }

    public func contains(_ s: Self) -> Bool { s.prefixLength >= prefixLength && contains(s.address) }
    public func overlaps(_ s: Self) -> Bool { contains(s.address) || s.contains(address) }

    /// "10.5.0.0/16", "fd00:12:13::/56"
    public var description: String { "\(address)/\(prefixLength)" }
    /// "10.5.52.0-24", "fd00:12:13::-56": flannel's key form.
    public var leaseKey: String { "\(address)-\(prefixLength)" }

    /// By address, then the shorter prefix first.
    public static func < (a: Self, b: Self) -> Bool {
        (a.address, a.prefixLength) < (b.address, b.prefixLength)
    }
}

extension IPAddressType {
    /// 0.0.0.0 or ::, the "no address" of a table read back without one.
    public static var unspecifiedAddress: Self { Self(networkBytes: [UInt8](repeating: 0, count: family.addressLength))! }
}
