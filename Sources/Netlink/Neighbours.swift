// IPv4 neighbours (ARP entries) and bridge-family fdb entries (RTM_*NEIGH, ndmsg). The fdb of a
// vxlan device is the bridge family with NTF_SELF: "send frames for this MAC to this remote IP".

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

/// An IPv4 neighbour (ARP) entry.
public struct Neighbour: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var address: IPv4Address
    public var mac: MACAddress?
    public var state: NeighbourState
    public var flags: NeighbourFlags

    public init(index: Int32, address: IPv4Address, mac: MACAddress?, state: NeighbourState = .permanent, flags: NeighbourFlags = []) {
        self.index = index; self.address = address; self.mac = mac; self.state = state; self.flags = flags
    }

    public var description: String {
        "\(address)" + (mac.map { " lladdr \($0)" } ?? "") + " dev #\(index)" + (state.contains(.permanent) ? " permanent" : "")
    }
}

/// A bridge-family fdb entry. On a vxlan device with NTF_SELF, `destination` is the remote VTEP.
public struct FDBEntry: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var mac: MACAddress
    /// NDA_DST: the remote VTEP IP (vxlan); nil on plain bridge ports.
    public var destination: IPv4Address?
    public var state: NeighbourState
    public var flags: NeighbourFlags
    /// NDA_VNI, when the entry overrides the device's VNI.
    public var vni: UInt32?
    /// NDA_PORT (host order), when the entry overrides the device's port.
    public var port: UInt16?
    /// NDA_MASTER: the bridge, for entries reported by a bridge.
    public var masterIndex: Int32?

    public init(index: Int32, mac: MACAddress, destination: IPv4Address?, state: NeighbourState = .permanent,
                flags: NeighbourFlags = .device, vni: UInt32? = nil, port: UInt16? = nil, masterIndex: Int32? = nil) {
        self.index = index; self.mac = mac; self.destination = destination; self.state = state; self.flags = flags
        self.vni = vni; self.port = port; self.masterIndex = masterIndex
    }

    public var description: String {
        "\(mac) dev #\(index)" + (destination.map { " dst \($0)" } ?? "") + (flags.contains(.device) ? " self" : "")
            + (state.contains(.permanent) ? " permanent" : "")
    }
}

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

    static func parseNeighbour(_ m: NetlinkMessage) -> Neighbour? {
        guard m.type == RT.newNeigh, m.bytes.count >= 28, m.u8(at: 16) == RT.afInet else { return nil }
        let a = m.attributes(afterFixedHeader: 12)
        guard let dst = a.ipv4(RT.ndaDst) else { return nil }
        return Neighbour(index: m.i32(at: 20), address: dst, mac: a.mac(RT.ndaLLAddr),
                         state: NeighbourState(rawValue: m.u16(at: 24)), flags: NeighbourFlags(rawValue: m.u8(at: 26)))
    }

    static func parseFDB(_ m: NetlinkMessage) -> FDBEntry? {
        guard m.type == RT.newNeigh, m.bytes.count >= 28, m.u8(at: 16) == RT.afBridge else { return nil }
        let a = m.attributes(afterFixedHeader: 12)
        guard let mac = a.mac(RT.ndaLLAddr) else { return nil }
        return FDBEntry(index: m.i32(at: 20), mac: mac, destination: a.ipv4(RT.ndaDst),
                        state: NeighbourState(rawValue: m.u16(at: 24)), flags: NeighbourFlags(rawValue: m.u8(at: 26)),
                        vni: a.u32(RT.ndaVNI), port: a.be16(RT.ndaPort),
                        masterIndex: a.u32(RT.ndaMaster).map { Int32(bitPattern: $0) })
    }

    // MARK: - Neighbours

    /// `ip neigh add`: EEXIST if an entry for the address exists.
    public mutating func addNeighbour(_ n: Neighbour) throws(NetlinkError) {
        try changeNeighbour(RT.newNeigh, flags: RT.fCreate | RT.fExcl, n)
    }

    /// `ip neigh replace`: creates or overwrites the entry.
    public mutating func replaceNeighbour(_ n: Neighbour) throws(NetlinkError) {
        try changeNeighbour(RT.newNeigh, flags: RT.fCreate | RT.fReplace, n)
    }

    /// `ip neigh del <address> dev <index>`.
    public mutating func deleteNeighbour(address: IPv4Address, index: Int32) throws(NetlinkError) {
        try changeNeighbour(RT.delNeigh, flags: 0, Neighbour(index: index, address: address, mac: nil, state: [], flags: []))
    }

    private mutating func changeNeighbour(_ type: UInt16, flags: UInt16, _ n: Neighbour) throws(NetlinkError) {
        let req = NetlinkRequest(type: type, flags: flags)
        req.putFixedHeader(Self.ndmsg(family: RT.afInet, index: n.index, state: n.state.rawValue, flags: n.flags.rawValue))
        req.put(RT.ndaDst, n.address.bytes)
        if let mac = n.mac { req.put(RT.ndaLLAddr, mac.bytes) }
        try execute(req, index: n.index, describe: { n.description })
    }

    /// IPv4 neighbours, of one link or of all.
    public mutating func neighbours(index: Int32? = nil) throws(NetlinkError) -> [Neighbour] {
        let req = NetlinkRequest(type: RT.getNeigh)
        req.putFixedHeader(Self.ndmsg(family: RT.afInet))
        let all = try dump(req, describe: { "dump" }).compactMap(Self.parseNeighbour)
        return index.map { i in all.filter { $0.index == i } } ?? all
    }

    // MARK: - FDB

    /// `bridge fdb add`: EEXIST if the entry exists.
    public mutating func addFDB(_ e: FDBEntry) throws(NetlinkError) {
        try changeFDB(RT.newNeigh, flags: RT.fCreate | RT.fExcl, e)
    }

    /// `bridge fdb replace`: creates or overwrites the entry for the MAC.
    public mutating func replaceFDB(_ e: FDBEntry) throws(NetlinkError) {
        try changeFDB(RT.newNeigh, flags: RT.fCreate | RT.fReplace, e)
    }

    /// `bridge fdb del`: on a vxlan device with `destination` set, removes that remote only; without
    /// it, the whole entry for the MAC.
    public mutating func deleteFDB(_ e: FDBEntry) throws(NetlinkError) {
        try changeFDB(RT.delNeigh, flags: 0, e)
    }

    private mutating func changeFDB(_ type: UInt16, flags: UInt16, _ e: FDBEntry) throws(NetlinkError) {
        let req = NetlinkRequest(type: type, flags: flags)
        req.putFixedHeader(Self.ndmsg(family: RT.afBridge, index: e.index, state: e.state.rawValue, flags: e.flags.rawValue))
        req.put(RT.ndaLLAddr, e.mac.bytes)
        if let d = e.destination { req.put(RT.ndaDst, d.bytes) }
        if let v = e.vni { req.putU32(RT.ndaVNI, v) }
        if let p = e.port { req.putBE16(RT.ndaPort, p) }
        try execute(req, index: e.index, describe: { "fdb " + e.description })
    }

    /// Bridge-family fdb entries, of one device or of all.
    public mutating func fdbEntries(index: Int32? = nil) throws(NetlinkError) -> [FDBEntry] {
        let req = NetlinkRequest(type: RT.getNeigh)
        req.putFixedHeader(Self.ndmsg(family: RT.afBridge))
        let all = try dump(req, describe: { "fdb dump" }).compactMap(Self.parseFDB)
        return index.map { i in all.filter { $0.index == i } } ?? all
    }
}
