// Dual-stack and IPv6-only clusters end to end: flanneld-xdp processes in network-namespace nodes on
// a dual-stack underlay, a real etcd (both API generations), pods pinging each other over IPv4 and
// IPv6 through the BPF path (both decap modes) and the userspace path; an IPv6-only cluster; a mixed
// cluster with a stock dual-stack flanneld stand-in; a restart that keeps the IPv6 half as it was.

import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

private let ipv6Network = IPv6Subnet(cidr: "fd00:5::/48")!
private let dualStackConfig = #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"\#(ipv6Network)","Backend":{"Type":"vxlan"}}"#

extension DaemonSuite {
@Suite("Dual-stack clusters: flanneld-xdp nodes over a dual-stack underlay (root, netns, etcd)", .needsRoot)
struct DualStackClusterTests {
    /// Pings every other node's pod over both families (`ipv4` false: IPv6 only); returns the failures.
    static func unreachable(_ cluster: FlannelCluster, _ nodes: [LabNodeIPv6], ipv4: Bool = true) throws -> [String] {
        var failures: [String] = []
        for a in nodes {
            for b in nodes where a.node.name != b.node.name {
                if try !cluster.lab.waitForPing6(from: a.node.podNamespace, to: b.podIP, timeout: 5) {
                    failures.append("\(a.node.name) → \(b.podIP)")
                }
                if ipv4, try !cluster.lab.waitForPing(from: a.node.podNamespace, to: b.node.podIP, timeout: 5) {
                    failures.append("\(a.node.name) → \(b.node.podIP)")
                }
            }
        }
        return failures
    }

    static func logs(_ cluster: FlannelCluster) -> String {
        cluster.nodes.map { "\($0.name):\n\(cluster.daemonLog($0).suffix(2500))" }.joined(separator: "\n")
    }

    @Test("three dual-stack nodes: pods reach each other over IPv4 and IPv6",
          arguments: zip([ClusterEtcdAPI.v2, .v3, .v3, .v2], ["xdp", "tc", "userspace", "auto"]))
    func threeDualStackNodes(api: ClusterEtcdAPI, dataplane: String) throws {
        let cluster = try FlannelCluster(tag: "ds\(api.rawValue)\(dataplane.prefix(1))", api: api, daemonPath: TestBinaries.flanneldXDP(),
                                         nodes: 3, config: dualStackConfig)
        defer { cluster.cleanup() }
        let nodes = try cluster.nodes.map { try cluster.addIPv6(to: $0, ipv6Network: ipv6Network) }
        let metricsPort = 9472
        for node in cluster.nodes { try cluster.startDaemon(node, extra: ["--dataplane", dataplane, "--ip-masq", "--metrics-port=\(metricsPort)"]) }

        // The leases as flannel writes them: both halves in the key, PublicIPv6 and BackendV6Data.
        #expect(try cluster.leaseNames() == nodes.map { "\($0.node.podSubnet.leaseKey)&\($0.podSubnet.leaseKey)" }.sorted())
        let value = try #require(try cluster.get(cluster.leaseKey(nodes[0].node.podSubnet, nodes[0].podSubnet)))
        #expect(value.contains(#""PublicIPv6":"\#(nodes[0].nodeIP)""#) && value.contains(#""BackendV6Data":{"VNI":1,"VtepMAC":"#), "\(value)")
        if dataplane != "userspace" {
            let mac6 = try cluster.lab.linkMAC(nodes[0].node.name, "flannel-v6.1")
            #expect(value.contains(#""BackendV6Data":{"VNI":1,"VtepMAC":"\#(mac6)"}"#), "the lease publishes flannel-v6.1's MAC: \(value)")
        }
        // subnet.env with the IPv6 lines, in flannel's order.
        let env = readFile(cluster.subnetFile(nodes[0].node))
        #expect(env == "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_IPV6_NETWORK=\(ipv6Network)\n"
            + "FLANNEL_IPV6_SUBNET=\(nodes[0].podSubnet.host(1))/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")

        let failures = try Self.unreachable(cluster, nodes)
        #expect(failures.isEmpty, "unreachable: \(failures); logs:\n\(Self.logs(cluster))")
        if dataplane != "userspace" {
            for node in cluster.nodes {
                #expect(try cluster.pinnedCounter(node, FXDP_C_ENCAP6_OK) > 0, "\(node.name) encapsulated no IPv6 in BPF")
                #expect(try cluster.pinnedCounter(node, FXDP_C_ENCAP_OK) > 0, "\(node.name) encapsulated no IPv4 in BPF")
            }
        }
        // `peers` and `status` show the IPv6 half.
        let peers = try cluster.runTool(cluster.nodes[0], ["peers", "--bpffs", cluster.bpffs(cluster.nodes[0])])
        if dataplane != "userspace" {
            #expect(peers.stdout.contains("\(nodes[1].podSubnet)") && peers.stdout.contains("\(nodes[1].nodeIP)"), "peers: \(peers.stdout)")
        }
        // The host rules for IPv6: the ip6 masquerade table and the ip6tables FORWARD accepts.
        let masq6 = try cluster.lab.run(nodes[0].node.name, ["/usr/sbin/nft", "list", "table", "ip6", "flanneld-xdp"])
        #expect(masq6.status == 0 && masq6.stdout.contains("ip6 saddr \(ipv6Network)"), "\(masq6.stdout) \(masq6.stderr)")
        let forward6 = try cluster.lab.run(nodes[0].node.name, ["/usr/sbin/ip6tables", "-S"])
        #expect(forward6.stdout.contains("\(ipv6Network)"), "ip6tables: \(forward6.stdout)")
        // /metrics: the IPv6 peers, and the IPv6 counters of the BPF path.
        let metrics = try cluster.httpGet(cluster.nodes[0], path: "/metrics", port: metricsPort)?.body ?? ""
        #expect(metrics.contains("flanneld_xdp_ipv6_peers 2"), "\(metrics.prefix(3000))")
        if dataplane != "userspace" {
            #expect(metrics.contains(#"reason="encap6_ok""#))
        }
        let status = try cluster.runTool(cluster.nodes[0], ["status", "--bpffs", cluster.bpffs(cluster.nodes[0]),
                                                            "--subnet-file", cluster.subnetFile(cluster.nodes[0])])
        #expect(status.stdout.contains("\(nodes[0].podSubnet)"), "status: \(status.stdout)")
    }

    @Test("an IPv6-only cluster: pods reach each other over IPv6 through flannel-v6.1", arguments: [ClusterEtcdAPI.v2, .v3])
    func ipv6Only(api: ClusterEtcdAPI) throws {
        let config = #"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"\#(ipv6Network)","Backend":{"Type":"vxlan"}}"#
        let cluster = try FlannelCluster(tag: "d6o\(api.rawValue)", api: api, daemonPath: TestBinaries.flanneldXDP(), nodes: 3, config: config)
        defer { cluster.cleanup() }
        let nodes = try cluster.nodes.map { try cluster.addIPv6(to: $0, ipv6Network: ipv6Network, ipv4: false) }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        #expect(try cluster.leaseNames() == nodes.map { "0.0.0.0-0&\($0.podSubnet.leaseKey)" }.sorted())
        let value = try #require(try cluster.get(cluster.leaseKey(nil, nodes[0].podSubnet)))
        #expect(value.hasPrefix(#"{"PublicIP":"0.0.0.0","PublicIPv6":"\#(nodes[0].nodeIP)","BackendType":"vxlan","BackendV6Data":{"#), "\(value)")
        #expect(readFile(cluster.subnetFile(nodes[0].node)) == "FLANNEL_IPV6_NETWORK=\(ipv6Network)\n"
            + "FLANNEL_IPV6_SUBNET=\(nodes[0].podSubnet.host(1))/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        let failures = try Self.unreachable(cluster, nodes, ipv4: false)
        #expect(failures.isEmpty, "unreachable: \(failures); logs:\n\(Self.logs(cluster))")
        // No flannel.1: the IPv6 half alone.
        #expect(try cluster.lab.run(nodes[0].node.name, ["link", "show", "flannel.1"]).status != 0)
    }

    @Test("mixed: two flanneld-xdp nodes and a stock dual-stack flanneld stand-in reach each other's pods over both families")
    func mixedWithDualStackStandIn() throws {
        let cluster = try FlannelCluster(tag: "dsm", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 3, config: dualStackConfig)
        defer { cluster.cleanup() }
        let nodes = try cluster.nodes.map { try cluster.addIPv6(to: $0, ipv6Network: ipv6Network) }
        let stock = nodes[2]
        let standIn = try cluster.makeDualStackFlannelStandIn(stock)
        for node in nodes.prefix(2) { try cluster.startDaemon(node.node) }
        // The stand-in learns our nodes as flanneld would from their leases: both devices' entries.
        for node in nodes.prefix(2) {
            let mac = try cluster.lab.linkMAC(node.node.name, "flannel.1"), mac6 = try cluster.lab.linkMAC(node.node.name, "flannel-v6.1")
            try cluster.lab.addFlannelPeerRoutes(on: stock.node, peer: Peer(subnet: node.node.podSubnet, publicIP: node.node.nodeIP, vtepMAC: mac))
            try cluster.lab.addFlannelV6PeerRoutes(on: stock.node, peer: IPv6Peer(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: mac6))
        }
        #expect(standIn.ipv6.vtepMAC != standIn.ipv4.vtepMAC)
        let failures = try Self.unreachable(cluster, nodes)
        #expect(failures.isEmpty, "unreachable: \(failures); logs:\n\(Self.logs(cluster))")
        for node in nodes.prefix(2) {
            #expect(try cluster.pinnedCounter(node.node, FXDP_C_ENCAP6_OK) > 0, "\(node.node.name) encapsulated no IPv6 in BPF")
        }
    }

    @Test("a restart keeps the IPv6 half: the same lease, the same flannel-v6.1 MAC, traffic flows again")
    func restartKeepsIPv6State() throws {
        let cluster = try FlannelCluster(tag: "dsr", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2, config: dualStackConfig)
        defer { cluster.cleanup() }
        let nodes = try cluster.nodes.map { try cluster.addIPv6(to: $0, ipv6Network: ipv6Network) }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let first = nodes[0].node
        let leases = try cluster.leaseNames()
        let value = try cluster.get(cluster.leaseKey(first.podSubnet, nodes[0].podSubnet))
        let mac6 = try cluster.lab.linkMAC(first.name, "flannel-v6.1")
        #expect(try Self.unreachable(cluster, nodes).isEmpty)

        cluster.stopDaemon(first)
        try cluster.startDaemon(first)
        #expect(try cluster.leaseNames() == leases)
        #expect(try cluster.lab.linkMAC(first.name, "flannel-v6.1") == mac6)
        #expect(try cluster.get(cluster.leaseKey(first.podSubnet, nodes[0].podSubnet)) == value)
        #expect(cluster.daemonLog(first).contains("flannel-v6.1 exists with MAC \(mac6)"))
        let failures = try Self.unreachable(cluster, nodes)
        #expect(failures.isEmpty, "unreachable after the restart: \(failures); logs:\n\(Self.logs(cluster))")
    }
}
}
