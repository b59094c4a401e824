// The daemon's view of the kernel networking it needs but does not implement: the flannel.<VNI>
// vxlan device, the kernel's peer routes/neighbours/fdb (the fallback path and the routes that steer
// pod traffic into the device), host-gw routes, and the TUN's address for the userspace path.
// The Netlink/Overlay module (libmnl) provides it; keeping it a protocol here lets the daemon be
// built and wired before that module lands, and keeps the seam the design asks for: the daemon
// never formats a netlink message itself.

import NetTypes

/// What the daemon asks for when it sets up flannel.<VNI> (as flanneld does).
public struct VXLANDeviceSpec: Sendable, Equatable {
    public var vni: UInt32
    /// The underlay interface and its address: the device's `dev` and `local`.
    public var underlayIfindex: Int32
    public var localIP: IPv4Address
    public var port: UInt16
    /// Underlay MTU − 50 (or the config's MTU).
    public var mtu: Int
    public var gbp: Bool
    public var learning: Bool

    public var name: String { "flannel.\(vni)" }

    public init(vni: UInt32, underlayIfindex: Int32, localIP: IPv4Address, port: UInt16, mtu: Int,
                gbp: Bool = false, learning: Bool = false) {
        self.vni = vni
        self.underlayIfindex = underlayIfindex
        self.localIP = localIP
        self.port = port
        self.mtu = mtu
        self.gbp = gbp
        self.learning = learning
    }
}

/// The device as it is after `ensureVXLANDevice`.
public struct VXLANDevice: Sendable, Equatable {
    public var name: String
    public var ifindex: Int32
    /// Its MAC: published as VtepMAC. An adopted device keeps its MAC (no churn for peers).
    public var mac: MACAddress
    public var mtu: Int
    /// True when an existing compatible device (e.g. stock flanneld's) was kept.
    public var adopted: Bool

    public init(name: String, ifindex: Int32, mac: MACAddress, mtu: Int, adopted: Bool) {
        self.name = name
        self.ifindex = ifindex
        self.mac = mac
        self.mtu = mtu
        self.adopted = adopted
    }
}

public protocol OverlayNetworking: Sendable {
    /// Creates flannel.<VNI> or keeps a compatible existing one (replacing an incompatible one, with
    /// a log line saying why). Does not assign the address: the subnet is not known yet.
    func ensureVXLANDevice(_ spec: VXLANDeviceSpec) throws -> VXLANDevice
    /// Gives the device `<subnet>.0/32` and brings it up (idempotent).
    func configureVXLANDevice(_ device: VXLANDevice, subnet: IPv4Subnet, network: IPv4Subnet) throws
    /// The kernel's routes, neighbours and fdb for vxlan peers on `device` (DirectRouting peers get a
    /// plain route via their PublicIP on the underlay).
    func kernelVXLANPeerTable(device: VXLANDevice, underlayIfindex: Int32) throws -> any PeerTable
    /// Routes `<peer subnet> via <PublicIP>` on the underlay (the host-gw backend).
    func hostGWPeerTable(underlayIfindex: Int32) throws -> any PeerTable
    /// Addresses the userspace path's TUN with `<subnet>.0`, routes `network` into it, brings it up.
    func configureTUN(name: String, subnet: IPv4Subnet, network: IPv4Subnet, mtu: Int) throws
    /// `cleanup`: deletes flannel.<VNI> devices (their routes, neighbours and fdb go with them) and
    /// our host-gw routes; nothing else. Returns what it removed, for the log.
    func removeFlannelDevices() throws -> [String]
}

/// Which pieces this build has. `overlay` is nil until the Netlink/Overlay module is merged.
public struct DaemonComponents: Sendable {
    public var overlay: (any OverlayNetworking)?
    public var notifier: SystemdNotifier

    public init(overlay: (any OverlayNetworking)?, notifier: SystemdNotifier) {
        self.overlay = overlay
        self.notifier = notifier
    }

    /// What the binary runs with.
    public static var system: DaemonComponents {
        DaemonComponents(overlay: nil, notifier: .fromEnvironment())
    }
}
