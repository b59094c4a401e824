// --ip-blackhole-route (current flannel's flag): a blackhole route for this node's own subnet, so a
// packet for one of our pod addresses that no pod holds is dropped here instead of following the
// default route out of the node (flannel added it for setups without a bridge, such as Canal, where
// the pods' /32 routes are the only routes into the subnet). Where a bridge holds the subnet's route
// (cni0 10.5.1.0/24), the kernel refuses a second route for the same prefix: that is reported once,
// and the blackhole is added at the next check after the bridge's route is gone. Checked every
// --iptables-resync seconds (HostRules.swift); `cleanup` removes it (only the blackhole, never the
// bridge's route of the same prefix).

import Netlink
import NetTypes

public enum BlackholeRoute {
    /// rtm_type RTN_BLACKHOLE.
    static let blackholeType: UInt8 = 6

    public enum Outcome: Sendable, Equatable {
        case present
        case added
        /// Another route (a bridge's) holds the subnet's prefix; the blackhole waits until it is gone.
        case heldByAnotherRoute(String)
    }

    static func route(_ subnet: IPv4Subnet) -> Route {
        Route(destination: subnet, type: blackholeType)
    }

    /// Adds the blackhole route for `subnet` in the calling thread's network namespace when missing.
    public static func ensure(subnet: IPv4Subnet) throws(OperationsError) -> Outcome {
        try OperationsError.netlink("ensure the blackhole route for \(subnet)") { () throws(NetlinkError) in try ensureRoute(subnet) }
    }

    private static func ensureRoute(_ subnet: IPv4Subnet) throws(NetlinkError) -> Outcome {
        var nl = try NetlinkSocket()
        let routes = try nl.routes()
        if routes.contains(where: { $0.destination == subnet && $0.type == blackholeType }) { return .present }
        do {
            try nl.addRoute(route(subnet))
            return .added
        } catch where error.isExists {
            let holder = routes.first { $0.destination == subnet }.map(\.description) ?? "a route for \(subnet)"
            return .heldByAnotherRoute(holder)
        }
    }

    /// Deletes the blackhole routes whose destination lies inside `network`; returns them.
    @discardableResult
    public static func remove(inside network: IPv4Subnet) throws(OperationsError) -> [IPv4Subnet] {
        try OperationsError.netlink("remove the blackhole routes inside \(network)") { () throws(NetlinkError) in try removeRoutes(inside: network) }
    }

    private static func removeRoutes(inside network: IPv4Subnet) throws(NetlinkError) -> [IPv4Subnet] {
        var nl = try NetlinkSocket()
        var removed: [IPv4Subnet] = []
        for r in try nl.routes() where r.type == blackholeType && network.contains(r.destination) {
            try nl.deleteRoute(route(r.destination))
            removed.append(r.destination)
        }
        return removed
    }
}
