// Removing the overlay for `flanneld-xdp cleanup`: only what flanneld/flanneld-xdp made.
//
// Deleting `flannel.<VNI>` takes its address, its onlink routes, its neighbours and its fdb with it
// (the kernel flushes everything bound to a device it deletes). What survives a device deletion are
// routes on the underlay — host-gw and DirectRouting peers — and those are removed precisely: main
// table, unicast, with a gateway, out of the given underlay, destination inside the flannel network
// but not the network itself. Nothing else is touched.

import Logging
import NetTypes
import Netlink

public enum Overlay {
    /// flanneld's DirectRouting test: `address` is reached without a gateway (it is on one of our
    /// links' subnets), so a peer there can get a plain route instead of the vxlan triple.
    public static func isDirectlyReachable(_ address: IPv4Address, netlink nl: inout NetlinkSocket) throws(OverlayError) -> Bool {
        do {
            guard let route = try nl.routeGet(to: address) else { return false }
            return route.gateway == nil
        } catch {
            throw .netlink(error, while: "checking whether \(address) is directly reachable")
        }
    }

    /// What `removeAll` did.
    public struct Removal: Hashable, Sendable {
        public var deletedDevice: String?
        public var deletedRoutes: [IPv4Subnet]
    }

    /// Deletes `flannel.<vni>` if it exists (only if it is a vxlan device with that VNI), and, when
    /// `network` and `underlayIndex` are given, our host-gw / DirectRouting routes.
    @discardableResult
    public static func removeAll(
        vni: UInt32, network: IPv4Subnet? = nil, underlayIndex: Int32? = nil,
        netlink nl: inout NetlinkSocket, logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) -> Removal {
        var removal = Removal(deletedDevice: nil, deletedRoutes: [])
        let name = FlannelVXLANDevice.name(vni: vni)
        do {
            if let link = try nl.link(named: name) {
                if link.kind == "vxlan" && link.vxlan?.vni == vni {
                    try ignoringMissing { () throws(NetlinkError) in try nl.deleteLink(index: link.index) }
                    removal.deletedDevice = name
                    logger.info("deleted \(name)")
                } else {
                    logger.warning("\(name) exists but is not our vxlan device (kind \(link.kind ?? "none"), vni \(link.vxlan.map { "\($0.vni)" } ?? "none")); left in place")
                }
            }
            if let network, let underlayIndex {
                for r in try nl.routes() where r.type == 1 && r.gateway != nil && r.outputIndex == underlayIndex
                    && network.contains(r.destination) && r.destination != network {
                    try ignoringMissing { () throws(NetlinkError) in
                        try nl.deleteRoute(Route(destination: r.destination, gateway: r.gateway, outputIndex: r.outputIndex))
                    }
                    removal.deletedRoutes.append(r.destination)
                    logger.info("deleted route \(r.destination) via \(r.gateway!)")
                }
            }
        } catch {
            throw .netlink(error, while: "removing the overlay for vni \(vni)")
        }
        return removal
    }
}
