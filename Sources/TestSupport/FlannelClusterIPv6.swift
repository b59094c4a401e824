// Dual-stack and IPv6-only clusters: IPv6 on the cluster's nodes (underlay fd77::<i>, pods
// <IPv6 network>:<i>::/64), the subnet.env a dual-stack flanneld finds (so each node keeps the pod
// subnets its pod namespace uses), and a stock flanneld node's lease written as flannel writes it
// (docs/FLANNEL-COMPAT.md, "Dual-stack and IPv6-only"). etcd stays on the IPv4 wire.

import NetTypes

extension FlannelCluster {
    public static let ipv6Underlay = IPv6Subnet(cidr: "fd77::/64")!

    /// IPv6 for `node`, and its subnet.env rewritten with FLANNEL_IPV6_NETWORK/FLANNEL_IPV6_SUBNET
    /// (without the IPv4 lines when `ipv4` is false: an IPv6-only node's file).
    @discardableResult
    public func addIPv6(to node: LabNode, ipv6Network: IPv6Subnet, ipv4: Bool = true) throws -> LabNodeIPv6 {
        let v6 = try lab.addIPv6(to: node, underlay: Self.ipv6Underlay, podNetwork: ipv6Network)
        var text = ipv4 ? "FLANNEL_NETWORK=\(network)\nFLANNEL_SUBNET=\(node.podSubnet.host(1))/\(node.podSubnet.prefixLength)\n" : ""
        text += "FLANNEL_IPV6_NETWORK=\(ipv6Network)\nFLANNEL_IPV6_SUBNET=\(v6.podSubnet.host(1))/\(v6.podSubnet.prefixLength)\n"
        try writeFile(subnetFile(node), text + "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        return v6
    }

    /// flannel's key for a dual-stack (`ipv4` given) or IPv6-only lease.
    public func leaseKey(_ ipv4: IPv4Subnet?, _ ipv6: IPv6Subnet) -> String {
        "\(prefix)/subnets/\(ipv4?.leaseKey ?? "0.0.0.0-0")&\(ipv6.leaseKey)"
    }

    /// A dual-stack (or, without `ipv4`, IPv6-only) lease exactly as stock flannel's vxlan backend
    /// writes it: PublicIP (0.0.0.0 when IPv6-only), PublicIPv6, BackendType, BackendData (IPv4 only),
    /// BackendV6Data with the flannel-v6 device's MAC.
    public func putFlannelDualStackLease(ipv4: (subnet: IPv4Subnet, publicIP: IPv4Address, vtepMAC: MACAddress)?,
                                         ipv6: (subnet: IPv6Subnet, publicIP: IPv6Address, vtepMAC: MACAddress),
                                         vni: Int = 1, ttl: Int = 86400) throws {
        var value = #"{"PublicIP":"\#(ipv4?.publicIP.description ?? "0.0.0.0")","PublicIPv6":"\#(ipv6.publicIP)","BackendType":"vxlan""#
        if let ipv4 { value += #","BackendData":{"VNI":\#(vni),"VtepMAC":"\#(ipv4.vtepMAC)"}"# }
        value += #","BackendV6Data":{"VNI":\#(vni),"VtepMAC":"\#(ipv6.vtepMAC)"}}"#
        try put(leaseKey(ipv4?.subnet, ipv6.subnet), value, ttl: ttl)
    }

    /// A stock dual-stack flanneld node: flannel.<VNI> and flannel-v6.<VNI> set up as flanneld
    /// does, and its lease written as flannel writes it. The other nodes' peer entries are the
    /// caller's (`lab.addFlannelPeerRoutes`, `lab.addFlannelV6PeerRoutes`).
    public func makeDualStackFlannelStandIn(_ v6: LabNodeIPv6, vni: UInt32 = 1) throws -> (ipv4: FlannelStandIn, ipv6: FlannelV6StandIn) {
        let standIn4 = try lab.makeFlannelStandIn(node: v6.node, vni: vni)
        let standIn6 = try lab.makeFlannelV6StandIn(node: v6, vni: vni)
        try putFlannelDualStackLease(ipv4: (v6.node.podSubnet, v6.node.nodeIP, standIn4.vtepMAC),
                                     ipv6: (v6.podSubnet, v6.nodeIP, standIn6.vtepMAC), vni: Int(vni))
        return (standIn4, standIn6)
    }

    /// The names of the lease keys in etcd, below `<prefix>/subnets/` (dual-stack ones included).
    public func leaseNames() throws -> [String] {
        let out: String
        switch api {
        case .v2: out = (try? etcdctlChecked(2, ["ls", prefix + "/subnets"])) ?? ""
        case .v3: out = try etcdctlChecked(3, ["get", "--prefix", "--keys-only", prefix + "/subnets/"])
        }
        return out.split(separator: "\n").compactMap { line in line.split(separator: "/").last.map(String.init) }.sorted()
    }
}
