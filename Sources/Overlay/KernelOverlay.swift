// KernelOverlay: everything the data path asks of the kernel for the overlay, behind one object
// that owns a netlink socket in one network namespace: the device (ensure, configure, find, delete),
// the peer tables, the TUN, cleanup. The Dataplane module's composition and `cleanup` use it.

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

    /// Every link of the namespace (cleanup looks for our programs on each).
    public func links() throws(OverlayError) -> [LinkInfo] {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                return try nl.links()
            } catch {
                throw .netlink(error, while: "listing the links")
            }
        }
    }

    /// The link named flannel.<vni>, whatever kind it is (its MAC is the VtepMAC an earlier run
    /// published); nil when there is none.
    public func existingDevice(vni: UInt32) throws(OverlayError) -> LinkInfo? {
        let name = FlannelVXLANDevice.name(vni: vni)
        return try netlink.withLock { nl throws(OverlayError) -> LinkInfo? in
            do throws(NetlinkError) {
                return try nl.link(named: name)
            } catch {
                throw .netlink(error, while: "looking for \(name)")
            }
        }
    }

    /// The link named flannel-v6.<vni> (its MAC is the BackendV6Data.VtepMAC an earlier run
    /// published); nil when there is none.
    public func existingIPv6Device(vni: UInt32) throws(OverlayError) -> LinkInfo? {
        let name = FlannelVXLANv6Device.name(vni: vni)
        return try netlink.withLock { nl throws(OverlayError) -> LinkInfo? in
            do throws(NetlinkError) {
                return try nl.link(named: name)
            } catch {
                throw .netlink(error, while: "looking for \(name)")
            }
        }
    }

    /// Deletes the device at `index` (flannel.<VNI>, when the userspace path needs its UDP port).
    public func deleteDevice(index: Int32) throws(OverlayError) {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                try nl.deleteLink(index: index)
            } catch {
                throw .netlink(error, while: "deleting the device at ifindex \(index)")
            }
        }
    }
}
