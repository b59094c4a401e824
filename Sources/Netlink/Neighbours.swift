// Neighbours (ARP and NDP entries) and bridge-family fdb entries (RTM_*NEIGH, ndmsg). The fdb of a
// vxlan device is the bridge family with NTF_SELF: "send frames for this MAC to this remote IP",
// an IPv4 or (on a vxlan device over an IPv6 underlay) an IPv6 address. One generic implementation
// per message; `Neighbour` and `FDBEntry` name the IPv4 forms, `IPv6Neighbour`, `IPv6FDBEntry` the
// IPv6 ones.

import Glibc
import NetTypes

/// Neighbour states (NUD_*).
public struct NeighbourState: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let incomplete = NeighbourState(rawValue: 0x01)
    public static let reachable = NeighbourState(rawValue: 0x02)
    public static let stale = NeighbourState(rawValue: 0x04)
    public static let delay = NeighbourState(rawValue: 0x08)
    public static let probe = NeighbourState(rawValue: 0x10)
    public static let failed = NeighbourState(rawValue: 0x20)
    public static let noARP = NeighbourState(rawValue: 0x40)
    public static let permanent = NeighbourState(rawValue: 0x80)
}

/// Neighbour flags (NTF_*).
public struct NeighbourFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let use = NeighbourFlags(rawValue: 0x01)
    /// NTF_SELF: the entry belongs to the device itself (a vxlan device's own fdb).
    public static let device = NeighbourFlags(rawValue: 0x02)
    /// NTF_MASTER: the entry belongs to the bridge the device is a port of.
    public static let master = NeighbourFlags(rawValue: 0x04)
    public static let proxy = NeighbourFlags(rawValue: 0x08)
    public static let extLearned = NeighbourFlags(rawValue: 0x10)
    public static let router = NeighbourFlags(rawValue: 0x80)
}

/// A neighbour (ARP or NDP) entry.
public struct IPNeighbour<Address: IPAddressType>: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var address: Address
    public var mac: MACAddress?
    public var state: NeighbourState
    public var flags: NeighbourFlags

    public init(index: Int32, address: Address, mac: MACAddress?, state: NeighbourState = .permanent, flags: NeighbourFlags = []) {
        self.index = index; self.address = address; self.mac = mac; self.state = state; self.flags = flags
    }

    public var description: String {
        "\(address)" + (mac.map { " lladdr \($0)" } ?? "") + " dev #\(index)" + (state.contains(.permanent) ? " permanent" : "")
    }
}

public typealias Neighbour = IPNeighbour<IPv4Address>
public typealias IPv6Neighbour = IPNeighbour<IPv6Address>

/// A bridge-family fdb entry. On a vxlan device with NTF_SELF, `destination` is the remote VTEP.
public struct BridgeFDBEntry<Address: IPAddressType>: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var mac: MACAddress
    /// NDA_DST: the remote VTEP IP (vxlan); nil on plain bridge ports.
    public var destination: Address?
    public var state: NeighbourState
    public var flags: NeighbourFlags
    /// NDA_VNI, when the entry overrides the device's VNI.
    public var vni: UInt32?
    /// NDA_PORT (host order), when the entry overrides the device's port.
    public var port: UInt16?
    /// NDA_MASTER: the bridge, for entries reported by a bridge.
    public var masterIndex: Int32?

    public init(index: Int32, mac: MACAddress, destination: Address?, state: NeighbourState = .permanent,
                flags: NeighbourFlags = .device, vni: UInt32? = nil, port: UInt16? = nil, masterIndex: Int32? = nil) {
        self.index = index; self.mac = mac; self.destination = destination; self.state = state; self.flags = flags
        self.vni = vni; self.port = port; self.masterIndex = masterIndex
    }

    public var description: String {
        "\(mac) dev #\(index)" + (destination.map { " dst \($0)" } ?? "") + (flags.contains(.device) ? " self" : "")
            + (state.contains(.permanent) ? " permanent" : "")
    }
}

public typealias FDBEntry = BridgeFDBEntry<IPv4Address>
public typealias IPv6FDBEntry = BridgeFDBEntry<IPv6Address>

extension NetlinkSocket {
    static func ndmsg(family: UInt8, index: Int32 = 0, state: UInt16 = 0, flags: UInt8 = 0) -> [UInt8] {
        var b: [UInt8] = [family, 0]
        b.appendU16(0)
        b.appendI32(index)
        b.appendU16(state)
        b.append(flags)
        b.append(0) // ndm_type
        return b
    }

    static func parseNeighbour(_ m: NetlinkMessage) -> Neighbour? { parseNeighbour(m, as: IPv4Address.self) }

    static func parseNeighbour<A: IPAddressType>(_ m: NetlinkMessage, as _: A.Type) -> IPNeighbour<A>? {
        guard m.type == RT.newNeigh, m.bytes.count >= 28, m.u8(at: 16) == A.family.addressFamily else { return nil }
        let a = m.attributes(afterFixedHeader: 12)
        guard let dst: A = a.address(RT.ndaDst) else { return nil }
        return IPNeighbour(index: m.i32(at: 20), address: dst, mac: a.mac(RT.ndaLLAddr),
                         state: NeighbourState(rawValue: m.u16(at: 24)), flags: NeighbourFlags(rawValue: m.u8(at: 26)))
    }

    /// An fdb entry whose destination, when it has one, is of family `A` (nil for another family:
    /// an IPv4 dump does not report the entries of a device over an IPv6 underlay, and vice versa).
    static func parseFDB(_ m: NetlinkMessage) -> FDBEntry? { parseFDB(m, as: IPv4Address.self) }

    static func parseFDB<A: IPAddressType>(_ m: NetlinkMessage, as _: A.Type) -> BridgeFDBEntry<A>? {
        guard m.type == RT.newNeigh, m.bytes.count >= 28, m.u8(at: 16) == RT.afBridge else { return nil }
        let a = m.attributes(afterFixedHeader: 12)
        guard let mac = a.mac(RT.ndaLLAddr) else { return nil }
        let destination: A? = a.address(RT.ndaDst)
        if destination == nil, a[RT.ndaDst] != nil { return nil }
        return BridgeFDBEntry(index: m.i32(at: 20), mac: mac, destination: destination,
                        state: NeighbourState(rawValue: m.u16(at: 24)), flags: NeighbourFlags(rawValue: m.u8(at: 26)),
                        vni: a.u32(RT.ndaVNI), port: a.be16(RT.ndaPort),
                        masterIndex: a.u32(RT.ndaMaster).map { Int32(bitPattern: $0) })
    }

    // MARK: - Neighbours

    /// `ip neigh add`: EEXIST if an entry for the address exists.
    public mutating func addNeighbour<A: IPAddressType>(_ n: IPNeighbour<A>) throws(NetlinkError) {
        try changeNeighbour(RT.newNeigh, flags: RT.fCreate | RT.fExcl, n)
    }

    /// `ip neigh replace`: creates or overwrites the entry.
    public mutating func replaceNeighbour<A: IPAddressType>(_ n: IPNeighbour<A>) throws(NetlinkError) {
        try changeNeighbour(RT.newNeigh, flags: RT.fCreate | RT.fReplace, n)
    }

    /// `ip neigh del <address> dev <index>`.
    public mutating func deleteNeighbour<A: IPAddressType>(address: A, index: Int32) throws(NetlinkError) {
        try changeNeighbour(RT.delNeigh, flags: 0, IPNeighbour(index: index, address: address, mac: nil, state: [], flags: []))
    }

    private mutating func changeNeighbour<A: IPAddressType>(_ type: UInt16, flags: UInt16, _ n: IPNeighbour<A>) throws(NetlinkError) {
        let req = NetlinkRequest(type: type, flags: flags)
        Self.fillNeighbour(req, n)
        try execute(req, index: n.index, describe: { n.description })
    }

    static func fillNeighbour<A: IPAddressType>(_ req: NetlinkRequest, _ n: IPNeighbour<A>) {
        req.putFixedHeader(ndmsg(family: A.family.addressFamily, index: n.index, state: n.state.rawValue, flags: n.flags.rawValue))
        req.put(RT.ndaDst, n.address.bytes)
        if let mac = n.mac { req.put(RT.ndaLLAddr, mac.bytes) }
    }

    /// IPv4 neighbours, of one link or of all.
    public mutating func neighbours(index: Int32? = nil) throws(NetlinkError) -> [Neighbour] {
        try neighbourDump(IPv4Address.self, index: index)
    }

    /// IPv6 neighbours, of one link or of all.
    public mutating func ipv6Neighbours(index: Int32? = nil) throws(NetlinkError) -> [IPv6Neighbour] {
        try neighbourDump(IPv6Address.self, index: index)
    }

    /// Neighbours of `family` (IPv4Address.self or IPv6Address.self), of one link or of all.
    public mutating func neighbourDump<A: IPAddressType>(_: A.Type, index: Int32? = nil) throws(NetlinkError) -> [IPNeighbour<A>] {
        let req = NetlinkRequest(type: RT.getNeigh)
        req.putFixedHeader(Self.ndmsg(family: A.family.addressFamily))
        let all = try dump(req, describe: { "dump" }).compactMap { Self.parseNeighbour($0, as: A.self) }
        return index.map { i in all.filter { $0.index == i } } ?? all
    }

    // MARK: - FDB

    /// `bridge fdb add`: EEXIST if the entry exists.
    public mutating func addFDB<A: IPAddressType>(_ e: BridgeFDBEntry<A>) throws(NetlinkError) {
        try changeFDB(RT.newNeigh, flags: RT.fCreate | RT.fExcl, e)
    }

    /// `bridge fdb replace`: creates or overwrites the entry for the MAC.
    public mutating func replaceFDB<A: IPAddressType>(_ e: BridgeFDBEntry<A>) throws(NetlinkError) {
        try changeFDB(RT.newNeigh, flags: RT.fCreate | RT.fReplace, e)
    }

    /// `bridge fdb del`: on a vxlan device with `destination` set, removes that remote only; without
    /// it, the whole entry for the MAC.
    public mutating func deleteFDB<A: IPAddressType>(_ e: BridgeFDBEntry<A>) throws(NetlinkError) {
        try changeFDB(RT.delNeigh, flags: 0, e)
    }

    private mutating func changeFDB<A: IPAddressType>(_ type: UInt16, flags: UInt16, _ e: BridgeFDBEntry<A>) throws(NetlinkError) {
        let req = NetlinkRequest(type: type, flags: flags)
        Self.fillFDB(req, e)
        try execute(req, index: e.index, describe: { "fdb " + e.description })
    }

    static func fillFDB<A: IPAddressType>(_ req: NetlinkRequest, _ e: BridgeFDBEntry<A>) {
        req.putFixedHeader(ndmsg(family: RT.afBridge, index: e.index, state: e.state.rawValue, flags: e.flags.rawValue))
        req.put(RT.ndaLLAddr, e.mac.bytes)
        if let d = e.destination { req.put(RT.ndaDst, d.bytes) }
        if let v = e.vni { req.putU32(RT.ndaVNI, v) }
        if let p = e.port { req.putBE16(RT.ndaPort, p) }
    }

    /// Bridge-family fdb entries with an IPv4 destination or none, of one device or of all.
    public mutating func fdbEntries(index: Int32? = nil) throws(NetlinkError) -> [FDBEntry] {
        try fdbDump(IPv4Address.self, index: index)
    }

    /// Bridge-family fdb entries with an IPv6 destination or none (a vxlan device over IPv6).
    public mutating func ipv6FDBEntries(index: Int32? = nil) throws(NetlinkError) -> [IPv6FDBEntry] {
        try fdbDump(IPv6Address.self, index: index)
    }

    /// Fdb entries whose destination is of `family` (or that have none), of one device or of all.
    public mutating func fdbDump<A: IPAddressType>(_: A.Type, index: Int32? = nil) throws(NetlinkError) -> [BridgeFDBEntry<A>] {
        let req = NetlinkRequest(type: RT.getNeigh)
        req.putFixedHeader(Self.ndmsg(family: RT.afBridge))
        let all = try dump(req, describe: { "fdb dump" }).compactMap { Self.parseFDB($0, as: A.self) }
        return index.map { i in all.filter { $0.index == i } } ?? all
    }
}
