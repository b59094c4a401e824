// Addresses (RTM_*ADDR, ifaddrmsg) and routes (RTM_*ROUTE, rtmsg) of either family. The messages
// differ between IPv4 and IPv6 only in the family byte and the address length, so one generic
// implementation serves both; `Route`, `AddressInfo` and friends name the IPv4 forms the code has
// always used, `IPv6Route`, `IPv6AddressInfo` the IPv6 ones.

import Glibc
import NetTypes

/// An address on a link.
public struct InterfaceAddress<Address: IPAddressType>: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    /// IFA_LOCAL (the interface's own address; equals IFA_ADDRESS except on point-to-point links).
    public var address: Address
    public var prefixLength: Int
    public var broadcast: Address?
    public var label: String?
    public var scope: UInt8
    /// IFA_F_* (IFA_FLAGS when present): tentative, permanent, nodad…
    public var flags: UInt32

    public var description: String { "\(address)/\(prefixLength) dev #\(index)" }
}

public typealias AddressInfo = InterfaceAddress<IPv4Address>
public typealias IPv6AddressInfo = InterfaceAddress<IPv6Address>

/// Route scope (rt_scope_t).
public struct RouteScope: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let universe = RouteScope(rawValue: 0)
    public static let link = RouteScope(rawValue: 253)
    public static let host = RouteScope(rawValue: 254)
    public var description: String {
        switch rawValue { case 0: "global"; case 253: "link"; case 254: "host"; default: "scope \(rawValue)" }
    }
}

/// A route. Defaults match `ip route add`: table main, protocol boot, scope universe, unicast.
public struct IPRoute<Subnet: IPSubnetType>: Hashable, Sendable, CustomStringConvertible {
    public var destination: Subnet
    public var gateway: Subnet.Address?
    /// RTA_OIF; nil lets the kernel choose the device from the gateway.
    public var outputIndex: Int32?
    /// RTNH_F_ONLINK: the gateway is on the link even without a matching address.
    public var onlink: Bool
    public var scope: RouteScope
    /// Routing table; 254 is main.
    public var table: UInt32
    /// rtm_protocol: 3 = boot (what `ip route` and flanneld's netlink library write), 4 = static…
    public var protocolID: UInt8
    /// rtm_type: 1 = unicast, 2 = local, 3 = broadcast…
    public var type: UInt8
    public var priority: UInt32?
    public var preferredSource: Subnet.Address?
    /// RTAX_MTU (`ip route … mtu N`): the path MTU of packets sent by this route.
    public var mtu: Int?

    public init(destination: Subnet, gateway: Subnet.Address? = nil, outputIndex: Int32? = nil, onlink: Bool = false,
                scope: RouteScope = .universe, table: UInt32 = 254, protocolID: UInt8 = 3, type: UInt8 = 1,
                priority: UInt32? = nil, preferredSource: Subnet.Address? = nil, mtu: Int? = nil) {
        self.destination = destination; self.gateway = gateway; self.outputIndex = outputIndex; self.onlink = onlink
        self.scope = scope; self.table = table; self.protocolID = protocolID; self.type = type
        self.priority = priority; self.preferredSource = preferredSource; self.mtu = mtu
    }

    public var description: String {
        "\(destination)" + (gateway.map { " via \($0)" } ?? "") + (outputIndex.map { " dev #\($0)" } ?? "")
            + (onlink ? " onlink" : "") + (table == 254 ? "" : " table \(table)") + (mtu.map { " mtu \($0)" } ?? "")
    }
}

public typealias Route = IPRoute<IPv4Subnet>
public typealias IPv6Route = IPRoute<IPv6Subnet>

extension NetlinkAttributes {
    func address<A: IPAddressType>(_ type: UInt16, as _: A.Type = A.self) -> A? {
        guard let v = self[type] else { return nil }
        return A(networkBytes: Array(v))
    }
}

extension NetlinkSocket {
    static func ifaddrmsg(family: IPFamily = .ipv4, prefixLength: Int = 0, scope: UInt8 = 0, index: Int32 = 0) -> [UInt8] {
        var b: [UInt8] = [family.addressFamily, UInt8(clamping: prefixLength), 0, scope]
        b.appendI32(index)
        return b
    }

    static func parseAddress(_ m: NetlinkMessage) -> AddressInfo? { parseAddress(m, as: IPv4Address.self) }

    static func parseAddress<A: IPAddressType>(_ m: NetlinkMessage, as _: A.Type) -> InterfaceAddress<A>? {
        guard m.type == RT.newAddr, m.bytes.count >= 24, m.u8(at: 16) == A.family.addressFamily else { return nil }
        let a = m.attributes(afterFixedHeader: 8)
        guard let addr: A = a.address(RT.ifaLocal) ?? a.address(RT.ifaAddress) else { return nil }
        return InterfaceAddress(index: m.i32(at: 20), address: addr, prefixLength: Int(m.u8(at: 17)),
                                broadcast: a.address(RT.ifaBroadcast), label: a.string(RT.ifaLabel), scope: m.u8(at: 19),
                                flags: a.u32(RT.ifaFlags) ?? UInt32(m.u8(at: 18)))
    }

    /// `ip addr add <address>/<prefixLength> dev <index>` (no broadcast, scope global).
    public mutating func addAddress<A: IPAddressType>(_ address: A, prefixLength: Int, index: Int32) throws(NetlinkError) {
        try changeAddress(RT.newAddr, flags: RT.fCreate | RT.fExcl, address, prefixLength, index)
    }

    /// Like `addAddress` but an existing identical address is not an error.
    public mutating func replaceAddress<A: IPAddressType>(_ address: A, prefixLength: Int, index: Int32) throws(NetlinkError) {
        try changeAddress(RT.newAddr, flags: RT.fCreate | RT.fReplace, address, prefixLength, index)
    }

    public mutating func deleteAddress<A: IPAddressType>(_ address: A, prefixLength: Int, index: Int32) throws(NetlinkError) {
        try changeAddress(RT.delAddr, flags: 0, address, prefixLength, index)
    }

    private mutating func changeAddress<A: IPAddressType>(_ type: UInt16, flags: UInt16, _ address: A, _ prefixLength: Int,
                                                          _ index: Int32) throws(NetlinkError) {
        let bits = A.family.addressLength * 8
        guard (0...bits).contains(prefixLength) else {
            throw NetlinkError(operation: RT.name(type), object: "\(address)/\(prefixLength) (prefix must be 0…\(bits))", errno: EINVAL)
        }
        let req = NetlinkRequest(type: type, flags: flags)
        req.putFixedHeader(Self.ifaddrmsg(family: A.family, prefixLength: prefixLength, index: index))
        req.put(RT.ifaLocal, address.bytes)
        req.put(RT.ifaAddress, address.bytes)
        try execute(req, index: index, describe: { "\(address)/\(prefixLength) dev #\(index)" })
    }

    /// IPv4 addresses, of one link or of all.
    public mutating func addresses(index: Int32? = nil) throws(NetlinkError) -> [AddressInfo] {
        try addressDump(IPv4Address.self, index: index)
    }

    /// IPv6 addresses (link-local ones included), of one link or of all.
    public mutating func ipv6Addresses(index: Int32? = nil) throws(NetlinkError) -> [IPv6AddressInfo] {
        try addressDump(IPv6Address.self, index: index)
    }

    /// Addresses of `family` (IPv4Address.self or IPv6Address.self), of one link or of all.
    public mutating func addressDump<A: IPAddressType>(_: A.Type, index: Int32? = nil) throws(NetlinkError) -> [InterfaceAddress<A>] {
        let req = NetlinkRequest(type: RT.getAddr)
        req.putFixedHeader(Self.ifaddrmsg(family: A.family))
        let all = try dump(req, describe: { "dump" }).compactMap { Self.parseAddress($0, as: A.self) }
        return index.map { i in all.filter { $0.index == i } } ?? all
    }

    // MARK: - Routes

    static func rtmsg<S: IPSubnetType>(_ r: IPRoute<S>, forDelete: Bool) -> [UInt8] {
        var b: [UInt8] = [
            S.Address.family.addressFamily, UInt8(r.destination.prefixLength), 0, 0,
            r.table < 256 ? UInt8(r.table) : 252 /* RT_TABLE_COMPAT; the real id goes in RTA_TABLE */,
            forDelete ? 0 : r.protocolID,
            forDelete ? 255 /* RT_SCOPE_NOWHERE: match any scope */ : r.scope.rawValue,
            // A delete matches any type, except when the route is of a special type (blackhole,
            // unreachable…): deleting a blackhole must not take the bridge's route of the same prefix.
            forDelete && r.type == RT.rtnUnicast ? 0 : r.type,
        ]
        b.appendU32(r.onlink ? RT.rtnhOnlink : 0)
        return b
    }

    static func parseRoute(_ m: NetlinkMessage) -> Route? { parseRoute(m, as: IPv4Subnet.self) }

    static func parseRoute<S: IPSubnetType>(_ m: NetlinkMessage, as _: S.Type) -> IPRoute<S>? {
        guard m.type == RT.newRoute, m.bytes.count >= 28, m.u8(at: 16) == S.Address.family.addressFamily else { return nil }
        let a = m.attributes(afterFixedHeader: 12)
        let prefix = Int(m.u8(at: 17))
        guard let zero = S.Address(networkBytes: [UInt8](repeating: 0, count: S.Address.family.addressLength)),
              let subnet = S(address: a.address(RT.rtaDst) ?? zero, prefixLength: prefix) else { return nil }
        return IPRoute(destination: subnet, gateway: a.address(RT.rtaGateway),
                       outputIndex: a.u32(RT.rtaOIF).map { Int32(bitPattern: $0) },
                       onlink: m.u32(at: 24) & RT.rtnhOnlink != 0, scope: RouteScope(rawValue: m.u8(at: 22)),
                       table: a.u32(RT.rtaTable) ?? UInt32(m.u8(at: 20)), protocolID: m.u8(at: 21), type: m.u8(at: 23),
                       priority: a.u32(RT.rtaPriority), preferredSource: a.address(RT.rtaPrefSrc),
                       mtu: a.nested(RT.rtaMetrics)?.u32(RT.rtaxMTU).map { Int($0) })
    }

    private mutating func changeRoute<S: IPSubnetType>(_ type: UInt16, flags: UInt16, _ r: IPRoute<S>) throws(NetlinkError) {
        let req = NetlinkRequest(type: type, flags: flags)
        Self.fillRoute(req, r)
        try execute(req, index: r.outputIndex, describe: { r.description })
    }

    static func fillRoute<S: IPSubnetType>(_ req: NetlinkRequest, _ r: IPRoute<S>) {
        req.putFixedHeader(rtmsg(r, forDelete: req.type == RT.delRoute))
        req.put(RT.rtaDst, r.destination.address.bytes)
        if let g = r.gateway { req.put(RT.rtaGateway, g.bytes) }
        if let o = r.outputIndex { req.putU32(RT.rtaOIF, UInt32(bitPattern: o)) }
        if let p = r.priority { req.putU32(RT.rtaPriority, p) }
        if let s = r.preferredSource { req.put(RT.rtaPrefSrc, s.bytes) }
        if let mtu = r.mtu { req.nest(RT.rtaMetrics) { req.putU32(RT.rtaxMTU, UInt32(clamping: mtu)) } }
        if r.table >= 256 { req.putU32(RT.rtaTable, r.table) }
    }

    /// `ip route add`: fails with EEXIST if a route for the destination exists.
    public mutating func addRoute<S: IPSubnetType>(_ r: IPRoute<S>) throws(NetlinkError) {
        try changeRoute(RT.newRoute, flags: RT.fCreate | RT.fExcl, r)
    }

    /// `ip route replace`: creates or overwrites the route for the destination.
    public mutating func replaceRoute<S: IPSubnetType>(_ r: IPRoute<S>) throws(NetlinkError) {
        try changeRoute(RT.newRoute, flags: RT.fCreate | RT.fReplace, r)
    }

    /// `ip route del`: the kernel deletes the first route matching the fields given (destination,
    /// table, and gateway/device when set). ESRCH if none matches.
    public mutating func deleteRoute<S: IPSubnetType>(_ r: IPRoute<S>) throws(NetlinkError) {
        try changeRoute(RT.delRoute, flags: 0, r)
    }

    /// IPv4 routes of table `table` (nil: every table).
    public mutating func routes(table: UInt32? = 254) throws(NetlinkError) -> [Route] {
        try routeDump(IPv4Subnet.self, table: table)
    }

    /// IPv6 routes of table `table` (nil: every table).
    public mutating func ipv6Routes(table: UInt32? = 254) throws(NetlinkError) -> [IPv6Route] {
        try routeDump(IPv6Subnet.self, table: table)
    }

    /// Routes of `family` (IPv4Subnet.self or IPv6Subnet.self) of table `table` (nil: every table).
    public mutating func routeDump<S: IPSubnetType>(_: S.Type, table: UInt32? = 254) throws(NetlinkError) -> [IPRoute<S>] {
        let req = NetlinkRequest(type: RT.getRoute)
        var hdr: [UInt8] = [S.Address.family.addressFamily, 0, 0, 0, 0, 0, 0, 0]
        hdr.appendU32(0)
        req.putFixedHeader(hdr)
        let all = try dump(req, describe: { "dump" }).compactMap { Self.parseRoute($0, as: S.self) }
        return table.map { t in all.filter { $0.table == t } } ?? all
    }

    /// `ip route get <address>`: the route the kernel would use to reach `address` (its gateway,
    /// output device, preferred source), or nil if it is unreachable.
    public mutating func routeGet<A: IPAddressType>(to address: A) throws(NetlinkError) -> IPRoute<A.Subnet>? {
        let req = NetlinkRequest(type: RT.getRoute)
        var hdr: [UInt8] = [A.family.addressFamily, UInt8(A.family.addressLength * 8), 0, 0, 0, 0, 0, 0]
        hdr.appendU32(0)
        req.putFixedHeader(hdr)
        req.put(RT.rtaDst, address.bytes)
        do {
            return try execute(req, describe: { "get \(address)" }).compactMap { Self.parseRoute($0, as: A.Subnet.self) }.first
        } catch where error.errno == ENETUNREACH || error.errno == EHOSTUNREACH {
            return nil
        }
    }
}
