// Links: look-up, dump, vxlan creation, up/down, MTU, MAC, delete (RTM_*LINK, ifinfomsg).

import Glibc
import NetTypes

/// Interface flags (IFF_*) as the kernel reports them in ifinfomsg.
public struct LinkFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let up = LinkFlags(rawValue: 0x1)
    public static let broadcast = LinkFlags(rawValue: 0x2)
    public static let loopback = LinkFlags(rawValue: 0x8)
    public static let running = LinkFlags(rawValue: 0x40)
    public static let noARP = LinkFlags(rawValue: 0x80)
    public static let multicast = LinkFlags(rawValue: 0x1000)
    public static let lowerUp = LinkFlags(rawValue: 0x10000)
}

/// The vxlan attributes of a link (IFLA_INFO_DATA of kind "vxlan").
public struct VXLANInfo: Hashable, Sendable, CustomStringConvertible {
    public var vni: UInt32
    /// IFLA_VXLAN_LOCAL: the source address of outer packets.
    public var local: IPv4Address?
    /// IFLA_VXLAN_PORT: the UDP destination port (host order here).
    public var port: UInt16
    public var learning: Bool
    /// IFLA_VXLAN_LINK: the underlay device's ifindex.
    public var underlayIndex: Int32?
    public var gbp: Bool
    public var l2miss: Bool
    public var l3miss: Bool
    public var group: IPv4Address?
    /// IFLA_VXLAN_LOCAL6: the source address of outer packets over an IPv6 underlay.
    public var local6: IPv6Address?
    /// IFLA_VXLAN_GROUP6: an IPv6 multicast group or default remote.
    public var group6: IPv6Address?

    public init(vni: UInt32, local: IPv4Address?, port: UInt16, learning: Bool, underlayIndex: Int32?,
                gbp: Bool = false, l2miss: Bool = false, l3miss: Bool = false, group: IPv4Address? = nil,
                local6: IPv6Address? = nil, group6: IPv6Address? = nil) {
        self.vni = vni; self.local = local; self.port = port; self.learning = learning
        self.underlayIndex = underlayIndex; self.gbp = gbp; self.l2miss = l2miss; self.l3miss = l3miss; self.group = group
        self.local6 = local6; self.group6 = group6
    }

    public var description: String {
        "vxlan id \(vni)" + (local.map { " local \($0)" } ?? "") + (local6.map { " local \($0)" } ?? "") + (underlayIndex.map { " dev #\($0)" } ?? "")
            + " dstport \(port)" + (learning ? "" : " nolearning") + (gbp ? " gbp" : "")
    }
}

/// A link as the kernel reports it.
public struct LinkInfo: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var name: String
    public var mtu: Int
    public var mac: MACAddress?
    public var flags: LinkFlags
    /// IFLA_INFO_KIND ("vxlan", "veth", "bridge"); nil for devices without one (loopback, physical).
    public var kind: String?
    public var vxlan: VXLANInfo?
    /// IFLA_MASTER (the bridge a port is enslaved to).
    public var masterIndex: Int32?
    /// IFLA_LINK (a veth's peer index, a vlan's parent).
    public var parentIndex: Int32?
    /// IFLA_OPERSTATE (RFC 2863: 6 = up, 2 = down, 0 = unknown).
    public var operState: UInt8?
    /// IFLA_LINK_NETNSID: the peer (`parentIndex`) lives in another network namespace, known to this
    /// one by that id (a pod's veth seen from the host). nil: the same namespace, or no peer.
    public var linkNetnsID: Int32?
    /// IFLA_QDISC: the root qdisc's kind ("noqueue" for a veth nobody shapes).
    public var rootQdisc: String?

    public var isUp: Bool { flags.contains(.up) }

    public var description: String {
        "\(index): \(name) mtu \(mtu)" + (mac.map { " \($0)" } ?? "") + (kind.map { " \($0)" } ?? "")
            + (isUp ? " up" : " down") + (vxlan.map { " (\($0))" } ?? "")
    }
}

/// What to create: a vxlan link.
public struct VXLANLinkSpec: Hashable, Sendable {
    public var name: String
    public var vni: UInt32
    public var local: IPv4Address?
    /// The local address over an IPv6 underlay (IFLA_VXLAN_LOCAL6); set instead of `local`.
    public var local6: IPv6Address?
    public var underlayIndex: Int32?
    public var port: UInt16
    public var learning: Bool
    /// Group Based Policy extension (IFLA_VXLAN_GBP).
    public var gbp: Bool
    /// nil: the kernel picks a random locally administered MAC.
    public var mac: MACAddress?
    /// nil: the kernel derives it (underlay MTU − 50).
    public var mtu: Int?

    public init(name: String, vni: UInt32, local: IPv4Address?, underlayIndex: Int32?, port: UInt16 = 8472,
                learning: Bool = false, gbp: Bool = false, mac: MACAddress? = nil, mtu: Int? = nil, local6: IPv6Address? = nil) {
        self.name = name; self.vni = vni; self.local = local; self.underlayIndex = underlayIndex
        self.port = port; self.learning = learning; self.gbp = gbp; self.mac = mac; self.mtu = mtu; self.local6 = local6
    }

    public var description: String {
        "\(name) type vxlan id \(vni)" + (local.map { " local \($0)" } ?? "") + (local6.map { " local \($0)" } ?? "") + (underlayIndex.map { " dev #\($0)" } ?? "")
            + " dstport \(port)" + (learning ? "" : " nolearning") + (gbp ? " gbp" : "") + (mac.map { " address \($0)" } ?? "")
            + (mtu.map { " mtu \($0)" } ?? "")
    }
}

extension NetlinkSocket {
    static func ifinfomsg(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) -> [UInt8] {
        var b: [UInt8] = [RT.afUnspec, 0]
        b.appendU16(0) // ifi_type
        b.appendI32(index)
        b.appendU32(flags)
        b.appendU32(change)
        return b
    }

    static func parseLink(_ m: NetlinkMessage) -> LinkInfo? {
        guard m.type == RT.newLink, m.bytes.count >= 32 else { return nil }
        let index = m.i32(at: 20)
        let flags = m.u32(at: 24)
        let a = m.attributes(afterFixedHeader: 16)
        var link = LinkInfo(index: index, name: a.string(RT.iflaIfname) ?? "", mtu: Int(a.u32(RT.iflaMTU) ?? 0),
                            mac: a.mac(RT.iflaAddress), flags: LinkFlags(rawValue: flags))
        link.masterIndex = a.u32(RT.iflaMaster).map { Int32(bitPattern: $0) }
        link.parentIndex = a.u32(RT.iflaLink).map { Int32(bitPattern: $0) }
        link.operState = a.u8(RT.iflaOperstate)
        link.linkNetnsID = a.u32(RT.iflaLinkNetnsID).map { Int32(bitPattern: $0) }
        link.rootQdisc = a.string(RT.iflaQdisc)
        if let info = a.nested(RT.iflaLinkinfo) {
            link.kind = info.string(RT.iflaInfoKind)
            if link.kind == "vxlan", let d = info.nested(RT.iflaInfoData) {
                let local = d.ipv4(RT.vxlanLocal)
                link.vxlan = VXLANInfo(
                    vni: d.u32(RT.vxlanID) ?? 0,
                    local: local == IPv4Address(0) ? nil : local,
                    port: d.be16(RT.vxlanPort) ?? 0,
                    learning: (d.u8(RT.vxlanLearning) ?? 0) != 0,
                    underlayIndex: d.u32(RT.vxlanLink).flatMap { $0 == 0 ? nil : Int32(bitPattern: $0) },
                    gbp: d[RT.vxlanGBP] != nil,
                    l2miss: (d.u8(RT.vxlanL2Miss) ?? 0) != 0,
                    l3miss: (d.u8(RT.vxlanL3Miss) ?? 0) != 0,
                    group: d.ipv4(RT.vxlanGroup).flatMap { $0 == IPv4Address(0) ? nil : $0 },
                    local6: d.address(RT.vxlanLocal6, as: IPv6Address.self).flatMap { $0 == .unspecified ? nil : $0 },
                    group6: d.address(RT.vxlanGroup6, as: IPv6Address.self).flatMap { $0 == .unspecified ? nil : $0 })
            }
        }
        return link
    }

    /// The link named `name`, or nil if there is none.
    public mutating func link(named name: String) throws(NetlinkError) -> LinkInfo? {
        guard !name.isEmpty, name.utf8.count <= 15 else {
            throw NetlinkError(operation: "RTM_GETLINK", object: "\"\(name)\" (interface names are 1…15 bytes)", errno: EINVAL)
        }
        let req = NetlinkRequest(type: RT.getLink)
        req.putFixedHeader(Self.ifinfomsg())
        req.putString(RT.iflaIfname, name)
        do {
            return try execute(req, describe: { "dev \(name)" }).compactMap(Self.parseLink).first
        } catch where error.isNotFound {
            return nil
        }
    }

    /// The link with ifindex `index`, or nil if there is none.
    public mutating func link(index: Int32) throws(NetlinkError) -> LinkInfo? {
        let req = NetlinkRequest(type: RT.getLink)
        req.putFixedHeader(Self.ifinfomsg(index: index))
        do {
            return try execute(req, describe: { "ifindex \(index)" }).compactMap(Self.parseLink).first
        } catch where error.isNotFound {
            return nil
        }
    }

    /// Every link in the namespace.
    public mutating func links() throws(NetlinkError) -> [LinkInfo] {
        let req = NetlinkRequest(type: RT.getLink)
        req.putFixedHeader(Self.ifinfomsg())
        return try dump(req, describe: { "dump" }).compactMap(Self.parseLink)
    }

    /// Creates a vxlan link (fails with EEXIST if the name is taken) and returns it as read back.
    @discardableResult
    public mutating func createVXLAN(_ spec: VXLANLinkSpec) throws(NetlinkError) -> LinkInfo {
        guard !spec.name.isEmpty, spec.name.utf8.count <= 15 else {
            throw NetlinkError(operation: "RTM_NEWLINK", object: "\"\(spec.name)\" (interface names are 1…15 bytes)", errno: EINVAL)
        }
        let req = NetlinkRequest(type: RT.newLink, flags: RT.fCreate | RT.fExcl)
        req.putFixedHeader(Self.ifinfomsg())
        req.putString(RT.iflaIfname, spec.name)
        if let mtu = spec.mtu { req.putU32(RT.iflaMTU, UInt32(mtu)) }
        if let mac = spec.mac { req.put(RT.iflaAddress, mac.bytes) }
        req.nest(RT.iflaLinkinfo) {
            req.putString(RT.iflaInfoKind, "vxlan")
            req.nest(RT.iflaInfoData) {
                req.putU32(RT.vxlanID, spec.vni)
                if let u = spec.underlayIndex { req.putU32(RT.vxlanLink, UInt32(bitPattern: u)) }
                if let l = spec.local { req.put(RT.vxlanLocal, l.bytes) }
                if let l = spec.local6 { req.put(RT.vxlanLocal6, l.bytes) }
                req.putU8(RT.vxlanLearning, spec.learning ? 1 : 0)
                req.putBE16(RT.vxlanPort, spec.port)
                if spec.gbp { req.put(RT.vxlanGBP, []) } // a flag: present means on
            }
        }
        try execute(req, describe: { spec.description })
        guard let link = try link(named: spec.name) else {
            throw NetlinkError(operation: "RTM_GETLINK", object: "dev \(spec.name) right after creating it", errno: ENODEV)
        }
        return link
    }

    /// Sets the link administratively up or down.
    public mutating func setLink(index: Int32, up: Bool) throws(NetlinkError) {
        let req = NetlinkRequest(type: RT.newLink)
        req.putFixedHeader(Self.ifinfomsg(index: index, flags: up ? RT.iffUp : 0, change: RT.iffUp))
        try execute(req, index: index, describe: { "dev #\(index) \(up ? "up" : "down")" })
    }

    public mutating func setMTU(index: Int32, mtu: Int) throws(NetlinkError) {
        let req = NetlinkRequest(type: RT.newLink)
        req.putFixedHeader(Self.ifinfomsg(index: index))
        req.putU32(RT.iflaMTU, UInt32(clamping: mtu))
        try execute(req, index: index, describe: { "dev #\(index) mtu \(mtu)" })
    }

    public mutating func setMAC(index: Int32, mac: MACAddress) throws(NetlinkError) {
        let req = NetlinkRequest(type: RT.newLink)
        req.putFixedHeader(Self.ifinfomsg(index: index))
        req.put(RT.iflaAddress, mac.bytes)
        try execute(req, index: index, describe: { "dev #\(index) address \(mac)" })
    }

    /// Deletes the link (its addresses, routes, neighbours and fdb entries go with it).
    public mutating func deleteLink(index: Int32) throws(NetlinkError) {
        let req = NetlinkRequest(type: RT.delLink)
        req.putFixedHeader(Self.ifinfomsg(index: index))
        try execute(req, index: index, describe: { "dev #\(index)" })
    }

    /// `execute`, and on failure "dev #5" in the message becomes "dev flannel.1" (best effort).
    @discardableResult
    mutating func execute(_ req: NetlinkRequest, index: Int32?, describe: () -> String) throws(NetlinkError) -> [NetlinkMessage] {
        do {
            return try execute(req, describe: describe)
        } catch {
            var e = error
            if let index, let name = try? link(index: index)?.name {
                e.object = e.object.replacingDeviceIndex(index, with: name)
            }
            throw e
        }
    }
}

extension String {
    func replacingDeviceIndex(_ index: Int32, with name: String) -> String {
        let token = "#\(index)"
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: token) {
            let after = rest[r.upperBound...]
            // Do not turn "#12" into a name when looking for "#1".
            if let c = after.first, c.isNumber {
                out += rest[..<r.upperBound]
            } else {
                out += rest[..<r.lowerBound] + name
            }
            rest = after
        }
        return out + rest
    }
}
