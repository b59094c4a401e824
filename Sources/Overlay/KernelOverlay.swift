// KernelOverlay: everything the daemon asks of the kernel for the overlay, behind one object that
// owns a netlink socket in one network namespace. It mirrors the daemon's overlay seam operation by
// operation (ensure the device, configure it, the peer tables, the TUN, cleanup), so an adapter in
// the daemon is a few lines of type conversion.

import Glibc
import Logging
import NetTypes
import Netlink
import Synchronization

public final class KernelOverlay: Sendable {
    /// The namespace the overlay acts in (nil: the namespace of the thread that created it).
    public let networkNamespace: String?
    private let netlink: Mutex<NetlinkSocket>
    private let logger: Logger

    public init(networkNamespace: String? = nil, logger: Logger = Logger(label: "flanneld-xdp.overlay")) throws(OverlayError) {
        self.networkNamespace = networkNamespace
        self.netlink = Mutex(try openSocket(networkNamespace))
        self.logger = logger
    }

    /// `FlannelVXLANLink.ensure` without an address (flanneld's first phase: the MAC for the lease):
    /// `flannel.<VNI>` for an IPv4 `localIP`, `flannel-v6.<VNI>` (over the IPv6 underlay, its MAC
    /// published as BackendV6Data.VtepMAC) for an IPv6 one.
    public func ensureVXLANDevice<A: IPAddressType>(
        vni: UInt32, port: UInt16 = 8472, localIP: A, underlayIndex: Int32, mtu: Int? = nil,
        learning: Bool = false, gbp: Bool = false, preferredMAC: MACAddress? = nil
    ) throws(OverlayError) -> FlannelVXLANLink<A.Subnet> {
        try netlink.withLock { nl throws(OverlayError) in
            try FlannelVXLANLink<A.Subnet>.ensure(vni: vni, port: port, localIP: localIP, underlayIndex: underlayIndex, mtu: mtu,
                                                  preferredMAC: preferredMAC, learning: learning, gbp: gbp, netlink: &nl, logger: logger)
        }
    }

    /// The vxlan device at `index`, read back from the kernel (for callers that kept only the
    /// ifindex). Its `subnet` is nil: the lease's prefix length is not in the kernel.
    public func vxlanDevice(index: Int32) throws(OverlayError) -> FlannelVXLANDevice {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                guard let link = try nl.link(index: index), let v = link.vxlan, let mac = link.mac else {
                    throw NetlinkError(operation: "RTM_GETLINK", object: "vxlan device ifindex \(index)", errno: ENODEV)
                }
                return FlannelVXLANDevice(
                    name: link.name, index: index, mac: mac, vni: v.vni, port: v.port, localIP: v.local ?? IPv4Address(0),
                    underlayIndex: v.underlayIndex ?? 0, mtu: link.mtu,
                    subnet: nil, origin: .adopted)
            } catch {
                if error.errno == ENODEV { throw .deviceMissing(name: "vxlan device", index: index) }
                throw .netlink(error, while: "reading the vxlan device at ifindex \(index)")
            }
        }
    }

    /// flanneld's second phase: <subnet>.0/32 (flannel-v6: <subnet>/128) on the device, up.
    @discardableResult
    public func configureVXLANDevice<S: IPSubnetType>(_ device: FlannelVXLANLink<S>, subnet: S, network: S) throws(OverlayError) -> FlannelVXLANLink<S> {
        try netlink.withLock { nl throws(OverlayError) in
            try device.configure(subnet: subnet, network: network, netlink: &nl, logger: logger)
        }
    }

    /// The neighbour/fdb/route table for vxlan peers (and DirectRouting routes) on `device`.
    /// `device.subnet` (this node's lease) is never taken for a peer.
    public func kernelVXLANPeerTable(device: FlannelVXLANDevice, network: IPv4Subnet) throws(OverlayError) -> KernelVXLANPeerTable {
        try KernelVXLANPeerTable(device: device, network: network, networkNamespace: networkNamespace, logger: logger)
    }

    /// The neighbour/fdb/route table for IPv6 peers (and IPv6 DirectRouting routes) on flannel-v6.<VNI>.
    public func kernelVXLANv6PeerTable(device: FlannelVXLANv6Device, network: IPv6Subnet) throws(OverlayError) -> KernelVXLANv6PeerTable {
        try KernelVXLANv6PeerTable(device: device, network: network, networkNamespace: networkNamespace, logger: logger)
    }

    /// host-gw's IPv6 routes `<peer IPv6 subnet> via <PublicIPv6> dev <underlay>`.
    public func hostGWv6PeerTable(underlayIndex: Int32, network: IPv6Subnet, ownSubnet: IPv6Subnet?) throws(OverlayError) -> HostGWv6PeerTable {
        try HostGWv6PeerTable(underlayIndex: underlayIndex, network: network, ownSubnet: ownSubnet, networkNamespace: networkNamespace)
    }

    /// host-gw routes `<peer subnet> via <PublicIP> dev <underlay>`; only routes inside `network`
    /// (and not `ownSubnet`) are read back or removed.
    public func hostGWPeerTable(underlayIndex: Int32, network: IPv4Subnet, ownSubnet: IPv4Subnet?) throws(OverlayError) -> HostGWPeerTable {
        try HostGWPeerTable(underlayIndex: underlayIndex, network: network, ownSubnet: ownSubnet, networkNamespace: networkNamespace)
    }

    /// See `Overlay.configureTUN`.
    public func configureTUN(name: String, subnet: IPv4Subnet, network: IPv4Subnet, mtu: Int) throws(OverlayError) {
        try netlink.withLock { nl throws(OverlayError) in
            try Overlay.configureTUN(name: name, subnet: subnet, network: network, mtu: mtu, netlink: &nl, logger: logger)
        }
    }

    /// See `Overlay.configureTUNIPv6`.
    public func configureTUNIPv6(name: String, subnet: IPv6Subnet, network: IPv6Subnet, mtu: Int) throws(OverlayError) {
        try netlink.withLock { nl throws(OverlayError) in
            try Overlay.configureTUNIPv6(name: name, subnet: subnet, network: network, mtu: mtu, netlink: &nl, logger: logger)
        }
    }

    /// See `Overlay.removeAll`; returns the deleted devices and routes in words, for the log.
    public func removeFlannelDevices(vni: UInt32? = nil, network: IPv4Subnet? = nil, ipv6Network: IPv6Subnet? = nil,
                                     underlayIndex: Int32? = nil) throws(OverlayError) -> [String] {
        try netlink.withLock { nl throws(OverlayError) in
            let r = try Overlay.removeAll(vni: vni, network: network, ipv6Network: ipv6Network, underlayIndex: underlayIndex,
                                          netlink: &nl, logger: logger)
            return r.deletedDevices + r.deletedRoutes.map { "route \($0)" }
        }
    }

    /// See `Overlay.isDirectlyReachable`.
    public func isDirectlyReachable<A: IPAddressType>(_ address: A) throws(OverlayError) -> Bool {
        try netlink.withLock { nl throws(OverlayError) in try Overlay.isDirectlyReachable(address, netlink: &nl) }
    }
}
