// The building blocks of the dual-stack cluster tests, checked on their own: two stock dual-stack
// flanneld stand-ins (both kernel devices as flanneld sets them, leases as flannel writes them) in a
// cluster with real etcd: the leases read back with both halves, and the pods reach each other over
// IPv6 and IPv4 through the stand-ins' devices.

import Leases
import NetTypes
import TestSupport
import TestTraits
import Testing

extension DaemonSuite {
@Suite("Dual-stack cluster building blocks: stock flanneld stand-ins (root, netns, etcd)", .needsRoot)
struct DualStackStandInTests {
    @Test("two dual-stack stand-ins: leases with both halves, pods reach each other over both families",
          arguments: [ClusterEtcdAPI.v2, .v3])
    func twoStandIns(_ api: ClusterEtcdAPI) throws {
        let ipv6Network = IPv6Subnet(cidr: "fd00:5::/48")!
        let config = #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"\#(ipv6Network)","Backend":{"Type":"vxlan"}}"#
        let cluster = try FlannelCluster(tag: "dss\(api.rawValue)", api: api, daemonPath: TestBinaries.flanneldXDP(), nodes: 2, config: config)
        defer { cluster.cleanup() }
        let nodes = try cluster.nodes.map { try cluster.addIPv6(to: $0, ipv6Network: ipv6Network) }
        let standIns = try nodes.map { try cluster.makeDualStackFlannelStandIn($0) }
        for (i, node) in nodes.enumerated() {
            try cluster.lab.addFlannelPeerRoutes(on: node.node, peer: standIns[1 - i].ipv4.asPeer)
            try cluster.lab.addFlannelV6PeerRoutes(on: node.node, peer: standIns[1 - i].ipv6.asPeer)
        }
        #expect(try cluster.leaseNames() == nodes.map { "\($0.node.podSubnet.leaseKey)&\($0.podSubnet.leaseKey)" }.sorted())
        #expect(readFile(cluster.subnetFile(nodes[0].node)).contains("FLANNEL_IPV6_SUBNET=\(nodes[0].podSubnet.host(1))/64"))

        // What a flanneld-xdp node reads of them (etcdctl runs in the lab's namespaces): both halves,
        // each with its own VtepMAC.
        let parsed = try NetworkConfig.parse(config)
        let leases = try cluster.leaseNames().compactMap { name -> Lease? in
            guard let value = try cluster.get(cluster.prefix + "/subnets/" + name) else { return nil }
            return try? LeaseDecoder.decode(key: name, value: Array(value.utf8), isReservation: false, ttl: nil, revision: 1, config: parsed).get()
        }
        #expect(leases.count == 2)
        #expect(Set(leases.compactMap(\.ipv6Peer)) == Set(standIns.map(\.ipv6.asPeer)))
        #expect(Set(leases.map(\.peer)) == Set(standIns.map(\.ipv4.asPeer)))

        #expect(try cluster.lab.waitForPing6(from: nodes[0].node.podNamespace, to: nodes[1].podIP))
        #expect(try cluster.lab.ping6(from: nodes[1].node.podNamespace, to: nodes[0].podIP, count: 2).received == 2)
        #expect(try cluster.lab.ping(from: nodes[0].node.podNamespace, to: nodes[1].node.podIP, count: 2).received == 2)
    }
}
}
