// The node's vxlan device, made the way stock flanneld makes it, so that flanneld and
// flanneld-xdp nodes can replace each other on the same machine.
//
// Design note:
// - flanneld's device is `flannel.<VNI>`: vxlan id VNI, local = node IP, dev = the underlay,
//   dstport = the config Port (8472), learning off, a random locally administered MAC that it
//   publishes in its lease as VtepMAC, MTU = underlay − 50, address <own subnet>.0/32, up.
// - `ensure` is idempotent like flanneld's ensureLink: an existing device whose configuration is
//   compatible is KEPT as it is (same ifindex, same MAC, no link flap). That is how a node switches
//   from stock flanneld to flanneld-xdp (or restarts) without peers having to learn a new VtepMAC
//   and without dropping traffic. A device that is incompatible (another VNI, port, underlay, local
//   IP, group, l2miss or GBP setting, or not a vxlan at all) is deleted and recreated, with a log
//   line saying which setting differed; the old MAC is reused so that the VtepMAC stays stable.
// - Addresses: exactly one address of the flannel network on the device, <subnet>.0/32; others in
//   the network (a previous lease) are removed, addresses outside it are left alone, as flanneld does.
// - IPv6 (dual-stack and IPv6-only networks): flanneld's second device `flannel-v6.<VNI>`, made the
//   same way over the IPv6 underlay (IFLA_VXLAN_LOCAL6 = the node's IPv6 address, the same VNI,
//   port and learning setting, its own random MAC published as BackendV6Data.VtepMAC). Its MTU is
//   the underlay's − 70, what the kernel allows a vxlan device over IPv6 (flannel ≥ 0.21 asks for
//   − 50 and the kernel caps it; v0.17.0 leaves the kernel's default, the same). Its address is
//   <IPv6 subnet>/128, and every other non-link-local IPv6 address on it is removed, as flanneld's
//   EnsureV6AddressOnLink does (it does not look at the network).

import Glibc
import Logging
import NetTypes
import Netlink

/// A vxlan device as `ensure` (and then `configure`) left it: `flannel.<VNI>` (IPv4) or
/// `flannel-v6.<VNI>` (IPv6).
public struct FlannelVXLANLink<Subnet: IPSubnetType>: Hashable, Sendable, CustomStringConvertible {
    /// How `ensure` came by the device.
    public enum Origin: Hashable, Sendable {
        /// There was none; it was created.
        case created
        /// A compatible device existed and was kept unchanged (its MAC and ifindex too).
        case adopted
        /// An incompatible device existed; it was deleted and recreated. `reason` names the setting.
        case replaced(reason: String)
    }

    public var name: String
    public var index: Int32
    /// The device's MAC: the VtepMAC to publish in the lease.
    public var mac: MACAddress
    public var vni: UInt32
    public var port: UInt16
    public var localIP: Subnet.Address
    public var underlayIndex: Int32
    public var mtu: Int
    /// This node's lease subnet once `configure` gave the device <subnet>.0/32 (/128); nil before.
    public var subnet: Subnet?
    public var origin: Origin

    public init(name: String, index: Int32, mac: MACAddress, vni: UInt32, port: UInt16, localIP: Subnet.Address,
                underlayIndex: Int32, mtu: Int, subnet: Subnet?, origin: Origin) {
        self.name = name; self.index = index; self.mac = mac; self.vni = vni; self.port = port; self.localIP = localIP
        self.underlayIndex = underlayIndex; self.mtu = mtu; self.subnet = subnet; self.origin = origin
    }

    static var family: IPFamily { Subnet.Address.family }
    /// The host prefix the device's own address gets (no broadcast routes).
    static var hostPrefix: Int { family.addressLength * 8 }
    /// Bytes VXLAN adds on this family's underlay (outer IP + UDP + VXLAN + inner Ethernet).
    public static var encapsulationOverhead: Int { family == .ipv4 ? 50 : 70 }

    public var description: String {
        "\(name) (ifindex \(index), vxlan id \(vni) local \(localIP) dstport \(port), mac \(mac), mtu \(mtu)"
            + (subnet.map { ", \($0.address)/\(Self.hostPrefix)" } ?? "") + ")"
    }

    /// "flannel.<vni>" / "flannel-v6.<vni>", the names flanneld gives the devices.
    public static func name(vni: UInt32) -> String { family == .ipv4 ? "flannel.\(vni)" : "flannel-v6.\(vni)" }

    /// Creates or adopts `flannel.<vni>` as flanneld does (see the file's note) and sets its MTU.
    /// flanneld does this before it has a lease — the lease publishes the device's MAC — and
    /// addresses the device afterwards: call `configure(subnet:network:)` once the lease is known,
    /// or pass `subnet` here to do both.
    ///
    /// - Parameters:
    ///   - mtu: the device MTU; nil means the underlay's MTU − 50 (VXLAN's overhead over IPv4), − 70
    ///     over IPv6, as flanneld's devices end up. The kernel caps an IPv6 device at − 70.
    ///   - preferredMAC: the MAC for a device that has to be created (e.g. the VtepMAC of our
    ///     previous lease); nil lets the kernel pick a random one. An adopted device keeps its own.
    ///   - learning, gbp: flannel's `Learning` and `GBP` options (off by default).
    ///   - subnet, network: as for `configure`; nil leaves the device unaddressed (and as it was, up or down).
    public static func ensure(
        vni: UInt32, port: UInt16 = 8472, localIP: Subnet.Address, underlayIndex: Int32, mtu: Int? = nil,
        preferredMAC: MACAddress? = nil, learning: Bool = false, gbp: Bool = false,
        subnet: Subnet? = nil, network: Subnet? = nil,
        netlink nl: inout NetlinkSocket, logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) -> FlannelVXLANLink {
        let name = name(vni: vni)
        let underlay: LinkInfo?
        do {
            underlay = try nl.link(index: underlayIndex)
        } catch {
            throw .netlink(error, while: "looking up the underlay for \(name)")
        }
        guard let underlay else { throw .underlayMissing(index: underlayIndex) }
        let spec = VXLANLinkSpec(name: name, vni: vni, local: localIP as? IPv4Address, underlayIndex: underlayIndex, port: port,
                                 learning: learning, gbp: gbp, mac: preferredMAC, mtu: mtu ?? (underlay.mtu - encapsulationOverhead),
                                 local6: localIP as? IPv6Address)
        let device: FlannelVXLANLink
        do throws(NetlinkError) {
            let (link, origin) = try createOrAdopt(spec, nl: &nl, logger: logger)
            if let mtu = spec.mtu, link.mtu != mtu { try nl.setMTU(index: link.index, mtu: mtu) }
            guard let final = try nl.link(index: link.index), let mac = final.mac else {
                throw NetlinkError(operation: "RTM_GETLINK", object: "dev \(name) after creating it", errno: ENODEV)
            }
            device = FlannelVXLANLink(name: final.name, index: final.index, mac: mac, vni: vni, port: final.vxlan?.port ?? port,
                                        localIP: localIP, underlayIndex: underlayIndex, mtu: final.mtu, subnet: nil, origin: origin)
        } catch {
            throw .netlink(error, while: "ensuring \(name)")
        }
        guard let subnet else { return device }
        return try device.configure(subnet: subnet, network: network, netlink: &nl, logger: logger)
    }

    /// Gives the device exactly one address of the flannel network, <subnet>.0/32, and brings it up
    /// (idempotent, as flanneld's Configure). Other addresses inside `network` (an older lease) are
    /// removed; addresses outside it are left alone. On `flannel-v6.<VNI>`: <subnet>/128, and every
    /// other address but link-local ones is removed (flanneld's ConfigureIPv6).
    public func configure(
        subnet: Subnet, network: Subnet?, netlink nl: inout NetlinkSocket,
        logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) -> FlannelVXLANLink {
        let want = subnet.address
        let prefix = Self.hostPrefix
        try OverlayError.configuring(name, operation: "configure", while: "configuring \(name) with \(want)/\(prefix)") {
            guard let link = try nl.link(index: index), link.name == name else {
                throw OverlayError.deviceMissing(name: name, index: index)
            }
            var hasAddress = false
            for a in try nl.addressDump(Subnet.Address.self, index: index) {
                let stale: Bool
                if let v6 = a.address as? IPv6Address {
                    stale = !v6.isLinkLocal
                } else {
                    stale = network?.contains(a.address) ?? false
                }
                if a.address == want && a.prefixLength == prefix {
                    hasAddress = true
                } else if stale {
                    try nl.deleteAddress(a.address, prefixLength: a.prefixLength, index: index)
                    logger.info("removed stale address \(a.address)/\(a.prefixLength) from \(name)")
                }
            }
            if !hasAddress { try nl.addAddress(want, prefixLength: prefix, index: index) }
            if !link.isUp { try nl.setLink(index: index, up: true) }
        }
        var configured = self
        configured.subnet = subnet
        return configured
    }

    private static func createOrAdopt(
        _ wanted: VXLANLinkSpec, nl: inout NetlinkSocket, logger: Logger
    ) throws(NetlinkError) -> (LinkInfo, Origin) {
        var spec = wanted
        // Create first and look only on EEXIST, as flanneld does: no window between look and create.
        var createFailure: NetlinkError?
        do {
            let link = try nl.createVXLAN(spec)
            logger.info("created vxlan device", metadata: ["device": "\(link)"])
            return (link, .created)
        } catch {
            createFailure = error
        }
        if let createFailure, !createFailure.isExists { throw createFailure }
        guard let existing = try nl.link(named: spec.name) else {
            // Deleted between our create and the look-up: create once more.
            return (try nl.createVXLAN(spec), .created)
        }
        guard let reason = incompatibility(existing: existing, wanted: spec) else {
            logger.info("adopting existing vxlan device", metadata: ["device": "\(existing)"])
            return (existing, .adopted)
        }
        logger.warning("\(spec.name) already exists with incompatible configuration: \(reason); recreating device")
        try nl.deleteLink(index: existing.index)
        if spec.mac == nil { spec.mac = existing.mac }
        return (try nl.createVXLAN(spec), .replaced(reason: reason))
    }

    /// Why `existing` cannot serve as the wanted device, or nil if it can. The same settings
    /// flanneld compares; a side that leaves a setting unspecified (0 / none) matches anything.
    public static func incompatibility(existing: LinkInfo, wanted: VXLANLinkSpec) -> String? {
        guard existing.kind == "vxlan", let v = existing.vxlan else {
            return "link type: \(existing.kind ?? "none") vs vxlan"
        }
        if v.vni != wanted.vni { return "vni: \(v.vni) vs \(wanted.vni)" }
        if let have = v.underlayIndex, let want = wanted.underlayIndex, have != want {
            return "vtep (underlay) interface: ifindex \(have) vs \(want)"
        }
        if let have = v.local, let want = wanted.local, have != want { return "vtep (local) IP: \(have) vs \(want)" }
        if let have = v.local6, let want = wanted.local6, have != want { return "vtep (local) IP: \(have) vs \(want)" }
        if v.local6 != nil && wanted.local != nil || v.local != nil && wanted.local6 != nil {
            return "vtep (local) family: \(v.local6 != nil ? "IPv6" : "IPv4") vs \(wanted.local6 != nil ? "IPv6" : "IPv4")"
        }
        if let group = v.group { return "group address: \(group) vs none" }
        if let group = v.group6 { return "group address: \(group) vs none" }
        if v.l2miss { return "l2miss: true vs false" }
        if v.port != 0 && wanted.port != 0 && v.port != wanted.port { return "port: \(v.port) vs \(wanted.port)" }
        if v.gbp != wanted.gbp { return "gbp: \(v.gbp) vs \(wanted.gbp)" }
        return nil
    }
}

public typealias FlannelVXLANDevice = FlannelVXLANLink<IPv4Subnet>
/// `flannel-v6.<VNI>`, the device flanneld adds for IPv6 over the IPv6 underlay.
public typealias FlannelVXLANv6Device = FlannelVXLANLink<IPv6Subnet>

/// What went wrong in the overlay layer; always says what to do about it.
public enum OverlayError: Error, CustomStringConvertible, Sendable {
    case underlayMissing(index: Int32)
    case netlink(NetlinkError, while: String)
    /// A vxlan peer (of either family, described) without a VtepMAC.
    case peerWithoutVtepMAC(String)
    /// The device a peer table was made for is gone or was recreated (another ifindex).
    case deviceMissing(name: String, index: Int32)

    public var description: String {
        switch self {
        case .underlayMissing(let i):
            "the underlay interface (ifindex \(i)) does not exist: check --iface and that the interface is up"
        case .netlink(let e, let context):
            "\(context): \(e)"
        case .deviceMissing(let name, let index):
            "\(name) (ifindex \(index)) is gone or was recreated: run FlannelVXLANDevice.ensure again and make a new peer table"
        case .peerWithoutVtepMAC(let p):
            "peer \(p) has no VtepMAC: a vxlan peer's lease must carry BackendData.VtepMAC (or mark it direct)"
        }
    }

    /// The underlying netlink error, if any.
    public var netlinkError: NetlinkError? {
        if case .netlink(let e, _) = self { return e }
        return nil
    }

    /// Runs a configuration step that throws our own errors (as they are) or netlink's (then said
    /// with `context`, the step in words). Swift cannot type a throw of two error types, so `body`
    /// throws untyped; anything else would be a programming error, reported as EIO on `object`.
    static func configuring(_ object: String, operation: String, while context: @autoclosure () -> String,
                            _ body: () throws -> Void) throws(OverlayError) {
        do {
            try body()
        } catch let e as OverlayError {
            throw e
        } catch let e as NetlinkError {
            throw .netlink(e, while: context())
        } catch {
            throw .netlink(NetlinkError(operation: operation, object: object, errno: EIO), while: "\(error)")
        }
    }
}
