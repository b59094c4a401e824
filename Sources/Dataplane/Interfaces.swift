// The underlay as the daemon sees it (its interfaces, the one the overlay runs over), and the few
// read-only questions about interfaces the daemon asks the kernel: the route to an address, an
// interface's MAC, the name behind an index. Answers come from the calling thread's network
// namespace.

import Glibc
import NetTypes
import Netlink
import RuntimeSupport

/// One interface with what the daemon needs from it.
public struct NetworkInterface: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var index: Int32
    public var mtu: Int
    /// IPv4 addresses with their prefix, in the kernel's order (the primary first).
    public var ipv4: [(address: IPv4Address, prefixLength: Int)]
    /// IPv6 addresses with their prefix, in the kernel's order (link-local ones included).
    public var ipv6: [(address: IPv6Address, prefixLength: Int)]

    public init(name: String, index: Int32, mtu: Int, ipv4: [(address: IPv4Address, prefixLength: Int)],
                ipv6: [(address: IPv6Address, prefixLength: Int)] = []) {
        self.name = name
        self.index = index
        self.mtu = mtu
        self.ipv4 = ipv4
        self.ipv6 = ipv6
    }

    /// The address flannel takes for IPv6: the first global one, else the first link-local one.
    public var preferredIPv6: IPv6Address? {
        ipv6.first { !$0.address.isLinkLocal && !$0.address.isLoopback }?.address ?? ipv6.first { $0.address.isLinkLocal }?.address
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.index == b.index && a.mtu == b.mtu
            && a.ipv4.map(\.address) == b.ipv4.map(\.address) && a.ipv4.map(\.prefixLength) == b.ipv4.map(\.prefixLength)
            && a.ipv6.map(\.address) == b.ipv6.map(\.address) && a.ipv6.map(\.prefixLength) == b.ipv6.map(\.prefixLength)
    }

    public var description: String {
        let addresses = ipv4.map { "\($0.address)/\($0.prefixLength)" }.joined(separator: ",")
        return "\(name) (\(addresses.isEmpty ? "no IPv4" : addresses))"
    }
}

/// The interface the overlay runs over, and the addresses the node uses on it.
public struct ExternalInterface: Sendable, Equatable {
    public var interface: NetworkInterface
    /// The interface's own address: the VXLAN device's local address.
    public var interfaceAddress: IPv4Address
    /// The address other nodes reach us at (--public-ip, else `interfaceAddress`); goes in the lease.
    public var publicIP: IPv4Address
    /// The L2 network the interface sits on; peers inside it qualify for DirectRouting.
    public var underlaySubnet: IPv4Subnet
    /// Which flag chose it ("--iface-regex=^eth"), or "the default route".
    public var chosenBy: String = ""
    /// The interface's IPv6 address (flannel-v6's local address) in a dual-stack or IPv6-only network.
    public var interfaceIPv6Address: IPv6Address?
    /// The IPv6 address other nodes reach us at (--public-ipv6, else `interfaceIPv6Address`).
    public var publicIPv6: IPv6Address?

    public init(interface: NetworkInterface, interfaceAddress: IPv4Address, publicIP: IPv4Address,
                underlaySubnet: IPv4Subnet, chosenBy: String = "", interfaceIPv6Address: IPv6Address? = nil,
                publicIPv6: IPv6Address? = nil) {
        self.interface = interface
        self.interfaceAddress = interfaceAddress
        self.publicIP = publicIP
        self.underlaySubnet = underlaySubnet
        self.chosenBy = chosenBy
        self.interfaceIPv6Address = interfaceIPv6Address
        self.publicIPv6 = publicIPv6
    }
}

extension ExternalInterface {
    /// The IPv6 network the interface's IPv6 address sits on: peers inside it qualify for IPv6 DirectRouting.
    public var underlayIPv6Subnet: IPv6Subnet? {
        guard let local = interfaceIPv6Address, let entry = interface.ipv6.first(where: { $0.address == local }) else { return nil }
        return IPv6Subnet(containing: local, prefixLength: entry.prefixLength)
    }
}

/// The route `ip route get <address>` shows: the interface it leaves by and its source address.
public struct RouteToAddress: Sendable, Equatable {
    public var interfaceIndex: Int32
    public var source: IPv4Address?

    public init(interfaceIndex: Int32, source: IPv4Address?) {
        self.interfaceIndex = interfaceIndex
        self.source = source
    }
}

/// The operator-facing verbs' error (and the data path's, where the daemon reports it): the
/// operation, the input, errno where one applies, and what to do.
public struct OperationsError: ExplainedError, Sendable, Equatable {
    public var operation: String
    public var detail: String
    public var errno: Int32?
    public var hint: String

    public init(operation: String, detail: String, errno: Int32? = nil, hint: String) {
        self.operation = operation
        self.detail = detail
        self.errno = errno
        self.hint = hint
    }

    public var errorNumber: Int32 { errno ?? 0 }
    public var remedy: String { hint }

    /// Runs `body`; a netlink failure becomes this error, with `operation` as what was attempted.
    static func netlink<T>(_ operation: String, hint: String = "run as root (or with CAP_NET_ADMIN)",
                           _ body: () throws(NetlinkError) -> T) throws(OperationsError) -> T {
        do {
            return try body()
        } catch {
            throw OperationsError(operation: operation, detail: error.description, errno: error.errno, hint: hint)
        }
    }
}

public enum Interfaces {
    /// `ip route get <address>`: the interface the route leaves by and its source address; nil when
    /// there is no route.
    public static func route(to address: IPv4Address) throws(OperationsError) -> RouteToAddress? {
        try OperationsError.netlink("ip route get \(address)") { () throws(NetlinkError) in
            var nl = try NetlinkSocket()
            guard let route = try nl.routeGet(to: address), let index = route.outputIndex else { return nil }
            return RouteToAddress(interfaceIndex: index, source: route.preferredSource)
        }
    }

    /// The MAC address of the interface `name` (all zero for the loopback).
    public static func mac(named name: String) throws(OperationsError) -> MACAddress {
        let link = try OperationsError.netlink("read the MAC of \(name)") { () throws(NetlinkError) in
            var nl = try NetlinkSocket()
            return try nl.link(named: name)
        }
        guard let link else {
            throw OperationsError(operation: "read the MAC of \(name)", detail: "no such interface", errno: ENODEV,
                                  hint: "give an interface of this network namespace (ip link)")
        }
        return link.mac ?? MACAddress(bytes: [0, 0, 0, 0, 0, 0])
    }

    /// "eth0 (#2)", or "#2 (gone)" when no interface has that index in this namespace.
    public static func describe(_ ifindex: Int32) -> String {
        name(ifindex).map { "\($0) (#\(ifindex))" } ?? "#\(ifindex) (gone)"
    }

    /// "eth0", or nil when no interface has that index in this namespace.
    public static func name(_ ifindex: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard ifindex > 0, if_indextoname(UInt32(bitPattern: ifindex), &buffer) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
