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
    static var family: IPFamily { get }
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

extension IPAddressType {
    /// 0.0.0.0 or ::, the "no address" of a table read back without one.
    public static var unspecifiedAddress: Self { Self(networkBytes: [UInt8](repeating: 0, count: family.addressLength))! }
}
