// Node-level overlay helpers: the userspace path's TUN, and removing the overlay for
// `flanneld-xdp cleanup` — only what flanneld/flanneld-xdp made.
//
// Deleting `flannel.<VNI>` takes its address, its onlink routes, its neighbours and its fdb with it
// (the kernel flushes everything bound to a device it deletes). What survives a device deletion are
// routes on the underlay — host-gw and DirectRouting peers — and those are removed precisely: main
// table, unicast, with a gateway, out of the given underlay, destination inside the flannel network
// but not the network itself. Nothing else is touched.

import Glibc
import Logging
import NetTypes
import Netlink

public enum Overlay {
    /// flanneld's DirectRouting test: `address` is reached without a gateway (it is on one of our
    /// links' subnets), so a peer there can get a plain route instead of the vxlan triple.
    public static func isDirectlyReachable<A: IPAddressType>(_ address: A, netlink nl: inout NetlinkSocket) throws(OverlayError) -> Bool {
        do {
            guard let route = try nl.routeGet(to: address) else { return false }
            return route.gateway == nil
        } catch {
            throw .netlink(error, while: "checking whether \(address) is directly reachable")
        }
    }

    /// What `removeAll` did.
    public struct Removal: Hashable, Sendable {
        public var deletedDevices: [String]
        /// The destinations of the routes deleted ("10.5.3.0/24", "fd00:5:0:3::/64").
        public var deletedRoutes: [String]
    }

    /// Deletes `flannel.<vni>` and `flannel-v6.<vni>` (every `flannel.<N>` / `flannel-v6.<N>` whose
    /// vxlan id is N when `vni` is nil) — only vxlan devices whose VNI matches their name — and, when
    /// `network` (`ipv6Network`) and `underlayIndex` are given, our host-gw / DirectRouting routes on
    /// the underlay.
    @discardableResult
    public static func removeAll(
        vni: UInt32? = nil, network: IPv4Subnet? = nil, ipv6Network: IPv6Subnet? = nil, underlayIndex: Int32? = nil,
        netlink nl: inout NetlinkSocket, logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) -> Removal {
        var removal = Removal(deletedDevices: [], deletedRoutes: [])
        do {
            for link in try nl.links() {
                let prefix = link.name.hasPrefix("flannel-v6.") ? "flannel-v6." : "flannel."
                guard link.name.hasPrefix(prefix), let n = UInt32(link.name.dropFirst(prefix.count)) else { continue }
                if let vni, n != vni { continue }
                guard link.kind == "vxlan", link.vxlan?.vni == n else {
                    logger.warning("\(link.name) exists but is not our vxlan device (kind \(link.kind ?? "none"), vni \(link.vxlan.map { "\($0.vni)" } ?? "none")); left in place")
                    continue
                }
                try ignoringMissing { () throws(NetlinkError) in try nl.deleteLink(index: link.index) }
                removal.deletedDevices.append(link.name)
                logger.info("deleted \(link.name)")
            }
            if let underlayIndex {
                if let network { try removeRoutes(in: network, underlayIndex: underlayIndex, into: &removal, nl: &nl, logger: logger) }
                if let ipv6Network { try removeRoutes(in: ipv6Network, underlayIndex: underlayIndex, into: &removal, nl: &nl, logger: logger) }
            }
        } catch {
            throw .netlink(error, while: "removing the overlay" + (vni.map { " for vni \($0)" } ?? ""))
        }
        return removal
    }

    /// The userspace path's IPv6 side of its TUN (dual-stack and IPv6-only networks): <IPv6
    /// subnet>/128 (the source for host-to-pod IPv6, as flannel-v6's address) and a route for the
    /// whole IPv6 network into the TUN with `mtu` (underlay − 70: the TUN's own MTU is IPv4's,
    /// underlay − 50, and IPv6 needs 20 bytes more of outer header), so that the kernel answers
    /// larger pod packets with Packet Too Big as flannel-v6's MTU makes it do. Idempotent; another
    /// address of `network` on the TUN (an older lease) is removed.
    public static func configureTUNIPv6(
        name: String, subnet: IPv6Subnet, network: IPv6Subnet, mtu: Int,
        netlink nl: inout NetlinkSocket, logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) {
        try OverlayError.configuring(name, operation: "configureTUNIPv6",
                                     while: "configuring \(name) with \(subnet.address)/128 and a route to \(network)") {
            let link = try tun(named: name, holdingOnly: subnet.address, within: network, nl: &nl, logger: logger)
            if !link.isUp { try nl.setLink(index: link.index, up: true) }
            try nl.replaceRoute(IPv6Route(destination: network, outputIndex: link.index, mtu: mtu))
        }
    }

    /// The TUN `name` (it must exist: the userspace path made it), with `address` as its host
    /// address of `network`, as both families' configureTUN want it.
    private static func tun<S: IPSubnetType>(named name: String, holdingOnly address: S.Address, within network: S,
                                            nl: inout NetlinkSocket, logger: Logger) throws -> LinkInfo {
        guard let link = try nl.link(named: name) else { throw OverlayError.deviceMissing(name: name, index: 0) }
        try ensureOnlyHostAddress(address, within: network, link: link, nl: &nl, logger: logger)
        return link
    }

    /// `address` as a host address (/32, /128) on `link`, and no other address of `network` there
    /// (an older lease's); addresses outside the network are left alone.
    private static func ensureOnlyHostAddress<S: IPSubnetType>(_ address: S.Address, within network: S, link: LinkInfo,
                                                              nl: inout NetlinkSocket, logger: Logger) throws(NetlinkError) {
        let prefix = S.Address.family.addressLength * 8
        var hasAddress = false
        for a in try nl.addressDump(S.Address.self, index: link.index) {
            if a.address == address && a.prefixLength == prefix {
                hasAddress = true
            } else if network.contains(a.address) {
                try nl.deleteAddress(a.address, prefixLength: a.prefixLength, index: link.index)
                logger.info("removed stale address \(a.address)/\(a.prefixLength) from \(link.name)")
            }
        }
        if !hasAddress { try nl.addAddress(address, prefixLength: prefix, index: link.index) }
    }

    /// net.ipv6.conf.<device>.accept_ra = 0, as flanneld sets it on flannel.<VNI> and
    /// flannel-v6.<VNI> (no router advertisement may configure an overlay device). /proc/sys/net
    /// belongs to the network namespace of the calling thread: call it on a thread in the device's
    /// namespace. A kernel without IPv6 has no such file: nothing to do.
    public static func disableRouterAdvertisements(on device: String) throws(OverlayError) {
        guard !device.isEmpty, !device.contains("/"), device.utf8.count <= 15 else {
            throw .netlink(NetlinkError(operation: "sysctl accept_ra", object: "\"\(device)\"", errno: EINVAL), while: "naming the device")
        }
        let path = "/proc/sys/net/ipv6/conf/\(device)/accept_ra"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT && access("/proc/sys/net/ipv6", F_OK) != 0 { return }
            throw .netlink(NetlinkError(operation: "open", object: path, errno: errno), while: "turning off router advertisements on \(device)")
        }
        defer { close(fd) }
        var written: Int
        repeat { written = write(fd, "0\n", 2) } while written < 0 && errno == EINTR
        guard written == 2 else {
            throw .netlink(NetlinkError(operation: "write", object: path, errno: errno), while: "turning off router advertisements on \(device)")
        }
    }

    /// Our host-gw / DirectRouting routes: main table, unicast, with a gateway, out of the underlay,
    /// inside `network` but not the network itself.
    private static func removeRoutes<S: IPSubnetType>(in network: S, underlayIndex: Int32, into removal: inout Removal,
                                                      nl: inout NetlinkSocket, logger: Logger) throws(NetlinkError) {
        for r in try nl.routeDump(S.self) where r.type == 1 && r.gateway != nil && r.outputIndex == underlayIndex
            && network.contains(r.destination) && r.destination != network {
            try ignoringMissing { () throws(NetlinkError) in
                try nl.deleteRoute(IPRoute(destination: r.destination, gateway: r.gateway, outputIndex: r.outputIndex))
            }
            removal.deletedRoutes.append(r.destination.description)
            logger.info("deleted route \(r.destination) via \(r.gateway!)")
        }
    }

    /// The userspace path's TUN as flanneld's udp backend sets it: <subnet>.0/32 (a source address
    /// for host-to-pod traffic, /32 so that no broadcast routes appear), the MTU, up, and a route for
    /// the whole flannel network into the TUN. Idempotent; an address of an older lease inside
    /// `network` is removed.
    public static func configureTUN(
        name: String, subnet: IPv4Subnet, network: IPv4Subnet, mtu: Int,
        netlink nl: inout NetlinkSocket, logger: Logger = Logger(label: "flanneld-xdp.overlay")
    ) throws(OverlayError) {
        try OverlayError.configuring(name, operation: "configureTUN",
                                     while: "configuring \(name) with \(subnet.address)/32 and a route to \(network)") {
            let link = try tun(named: name, holdingOnly: subnet.address, within: network, nl: &nl, logger: logger)
            if link.mtu != mtu { try nl.setMTU(index: link.index, mtu: mtu) }
            if !link.isUp { try nl.setLink(index: link.index, up: true) }
            try nl.replaceRoute(Route(destination: network, outputIndex: link.index))
        }
    }
}
