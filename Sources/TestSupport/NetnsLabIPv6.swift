// IPv6 on the lab's nodes: a dual-stack (or IPv6-only) underlay on the same wire, IPv6 pods behind
// cni0, and `flannel-v6.<VNI>` configured with the ip CLI exactly as stock flanneld does (the
// reference the Swift overlay is compared with; docs/FLANNEL-COMPAT.md, "Dual-stack and IPv6-only").
// Node and pod addresses are added with `nodad` and the nodes have accept_dad=0, so that tests never
// wait out duplicate address detection (flannel-v6's own address is added as flanneld adds it).

import Glibc
import NetTypes

/// A lab node's IPv6 side.
public struct LabNodeIPv6: Sendable, CustomStringConvertible {
    public var node: LabNode
    /// The node's IPv6 address on the underlay (flannel's PublicIPv6).
    public var nodeIP: IPv6Address
    public var underlay: IPv6Subnet
    /// The node's IPv6 pod subnet (the lease's IPv6 half).
    public var podSubnet: IPv6Subnet
    /// The pod's address (<podSubnet>::2) and cni0's (<podSubnet>::1, the pod's gateway).
    public var podIP: IPv6Address
    public var podGateway: IPv6Address

    public var description: String { "\(node.name) (\(nodeIP), pods \(podSubnet))" }
}

/// What `makeFlannelV6StandIn` created: flannel-v6.<VNI> as stock flanneld makes it.
public struct FlannelV6StandIn: Sendable {
    public var node: LabNodeIPv6
    public var ifname: String
    public var vni: UInt32
    public var vtepMAC: MACAddress
    public var subnet: IPv6Subnet

    /// This node's IPv6 half as a peer of the others (BackendV6Data of its lease).
    public var asPeer: IPv6Peer { IPv6Peer(subnet: subnet, publicIP: node.nodeIP, vtepMAC: vtepMAC) }
}

extension NetnsLab {
    /// Gives `node` IPv6: `underlay.host(index)` on its underlay interface, IPv6 forwarding, and an
    /// IPv6 pod subnet on cni0 and the pod (default route via <podSubnet>::1). The pod subnet is
    /// `podSubnet` or <podNetwork with the node index in its 4th group>/64.
    @discardableResult
    public func addIPv6(to node: LabNode, underlay: IPv6Subnet = IPv6Subnet(cidr: "fd77::/64")!,
                        podNetwork: IPv6Subnet = IPv6Subnet(cidr: "fd00:5::/48")!, podSubnet: IPv6Subnet? = nil) throws -> LabNodeIPv6 {
        let pods = podSubnet ?? IPv6Subnet(containing: IPv6Address(podNetwork.address.value | UInt128(node.index) << 64), prefixLength: 64)
        let v6 = LabNodeIPv6(node: node, nodeIP: underlay.host(UInt128(node.index)), underlay: underlay, podSubnet: pods,
                             podIP: pods.host(2), podGateway: pods.host(1))
        try sysctl(node.name, ["net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        try sh(node.name, ["-6", "addr", "add", "\(v6.nodeIP)/\(underlay.prefixLength)", "dev", node.underlayIfname, "nodad"])
        try sh(node.name, ["-6", "addr", "add", "\(v6.podGateway)/\(pods.prefixLength)", "dev", "cni0", "nodad"])
        try sysctl(node.podNamespace, ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
        try sh(node.podNamespace, ["-6", "addr", "add", "\(v6.podIP)/\(pods.prefixLength)", "dev", "eth0", "nodad"])
        try sh(node.podNamespace, ["-6", "route", "add", "default", "via", "\(v6.podGateway)"])
        return v6
    }

    /// Configures `flannel-v6.<vni>` in the node exactly as stock flanneld does: vxlan id VNI,
    /// local = the node's IPv6 address, dev = the underlay, dstport `port`, nolearning, a random (or
    /// the given) MAC, the MTU the kernel gives it (underlay − 70); address <subnet>/128; up.
    @discardableResult
    public func makeFlannelV6StandIn(node: LabNodeIPv6, vni: UInt32 = 1, port: UInt16 = 8472, vtepMAC: MACAddress? = nil,
                                     subnet: IPv6Subnet? = nil) throws -> FlannelV6StandIn {
        let ifname = "flannel-v6.\(vni)"
        let subnet = subnet ?? node.podSubnet
        var add = ["link", "add", ifname]
        if let vtepMAC { add += ["address", "\(vtepMAC)"] }
        add += ["type", "vxlan", "id", "\(vni)", "local", "\(node.nodeIP)", "dev", node.node.underlayIfname, "dstport", "\(port)", "nolearning"]
        try sh(node.node.name, add)
        try sysctl(node.node.name, ["net/ipv6/conf/\(ifname)/accept_ra=0"])
        try sh(node.node.name, ["-6", "addr", "add", "\(subnet.address)/128", "dev", ifname])
        try sh(node.node.name, ["link", "set", ifname, "up"])
        return FlannelV6StandIn(node: node, ifname: ifname, vni: vni, vtepMAC: try linkMAC(node.node.name, ifname), subnet: subnet)
    }

    /// flanneld's three entries for one IPv6 peer on flannel-v6, in its order: neighbour, fdb, onlink route.
    public func addFlannelV6PeerRoutes(on node: LabNode, vni: UInt32 = 1, peer: IPv6Peer) throws {
        guard let mac = peer.vtepMAC else { throw LabError(command: [], message: "peer \(peer) has no VtepMAC") }
        let dev = "flannel-v6.\(vni)", gw = "\(peer.subnet.address)"
        try sh(node.name, ["-6", "neigh", "replace", gw, "lladdr", "\(mac)", "dev", dev, "nud", "permanent"])
        try sh(node.name, [LabTools.bridge, "fdb", "replace", "\(mac)", "dev", dev, "dst", "\(peer.publicIP)", "self", "permanent"])
        try sh(node.name, ["-6", "route", "replace", "\(peer.subnet)", "via", gw, "dev", dev, "onlink"])
    }

    /// Deletes what `addFlannelV6PeerRoutes` added (route, then neighbour and fdb entry).
    public func removeFlannelV6PeerRoutes(on node: LabNode, vni: UInt32 = 1, peer: IPv6Peer) throws {
        let dev = "flannel-v6.\(vni)"
        try sh(node.name, ["-6", "route", "del", "\(peer.subnet)", "via", "\(peer.subnet.address)", "dev", dev, "onlink"])
        try sh(node.name, ["-6", "neigh", "del", "\(peer.subnet.address)", "dev", dev])
        if let mac = peer.vtepMAC {
            try sh(node.name, [LabTools.bridge, "fdb", "del", "\(mac)", "dev", dev, "dst", "\(peer.publicIP)", "self"])
        }
    }

    /// Pings an IPv6 address from `ns`; returns packets sent and received (never throws on loss).
    public func ping6(from ns: String, to: IPv6Address, count: Int = 3, interval: Double = 0.2, timeoutPerReply: Int = 1) throws -> (sent: Int, received: Int) {
        let r = try run(ns, [LabTools.ping, "-6", "-n", "-q", "-c", "\(count)", "-i", "\(interval)", "-W", "\(timeoutPerReply)", "\(to)"])
        for line in r.stdout.split(separator: "\n") where line.contains("packets transmitted") {
            let nums = line.split(separator: ",").compactMap { part in part.split(separator: " ").first.flatMap { Int($0) } }
            if nums.count >= 2 { return (nums[0], nums[1]) }
        }
        throw LabError(command: [LabTools.ping, "-6", "\(to)"], status: r.status, stderr: r.stderr, message: "cannot parse ping output: \(r.stdout)")
    }

    /// Pings an IPv6 address until one reply comes back or `timeout` seconds pass; true if one came.
    public func waitForPing6(from ns: String, to: IPv6Address, timeout: Double = 5) throws -> Bool {
        let deadline = monotonicSeconds() + timeout
        repeat {
            if try ping6(from: ns, to: to, count: 1, interval: 0.2).received == 1 { return true }
        } while monotonicSeconds() < deadline
        return false
    }
}
