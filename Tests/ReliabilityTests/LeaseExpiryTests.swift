// A node cut off from etcd past its lease TTL, with real expiry: node a runs with a short
// `--subnet-lease-ttl` (4 s), is cut off from etcd (blackhole routes both ways, as in
// ClusterFaultTests), and etcd itself expires its lease (the test waits until the key is gone; it
// never deletes it). Then either
// - another node (a stand-in lease written with etcdctl, as stock flannel writes it) takes the
//   subnet: when a returns it never overwrites the new owner, says so and exits non-zero, and a
//   restart acquires another subnet; or
// - nobody takes it: a re-creates its lease with the same subnet, says so, keeps running, and pod
//   traffic flows again once the peer has seen the lease come back.
// Both for the v3 and the v2 API (v2 sets the TTL per key in the PUT, v3 through an etcd lease).
// The daemons reach etcd over plain http on the lab's wire (another host): each logs the
// plain-http warning exactly once, reconnects included.

import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

/// Blackhole routes both ways between a node and etcd (one side alone still lets etcd's pushes in).
func cutOffFromEtcd(_ cluster: FlannelCluster, _ node: LabNode) throws {
    try cluster.lab.sh(node.name, ["route", "add", "blackhole", "\(cluster.etcdIP)/32"])
    try cluster.lab.sh(cluster.lab.wireNamespace, ["route", "add", "blackhole", "\(node.nodeIP)/32"])
}

func reconnectToEtcd(_ cluster: FlannelCluster, _ node: LabNode) throws {
    try cluster.lab.sh(node.name, ["route", "del", "blackhole", "\(cluster.etcdIP)/32"])
    try cluster.lab.sh(cluster.lab.wireNamespace, ["route", "del", "blackhole", "\(node.nodeIP)/32"])
}

/// How often `needle` occurs in `text`.
func occurrences(of needle: String, in text: String) -> Int {
    text.components(separatedBy: needle).count - 1
}

/// The start-up warning's fixed words (EtcdEndpoint.plainTextWarning).
let plainHTTPWarning = "is reached over plain http from another host"

@Suite("LeaseExpiryTests: a short lease TTL that really expires while the node is cut off", .serialized,
       .needsRoot, .ownThreads)
struct LeaseExpiryTests {
    static let ttl = 4

    /// Two nodes on `api`'s etcd, both daemons started; a's holds its lease with a `ttl`-second TTL
    /// (`daemon` is its process), b's with flannel's default. The caller cleans the cluster up.
    static func shortLeaseOnA(tag: String, api: ClusterEtcdAPI)
        throws -> (cluster: FlannelCluster, a: LabNode, b: LabNode, daemon: LabProcess) {
        let cluster = try FlannelCluster(tag: tag, api: api, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        do {
            let (a, b) = (cluster.nodes[0], cluster.nodes[1])
            let daemon = try cluster.startDaemon(a, extra: ["--subnet-lease-ttl=\(ttl)"])
            try cluster.startDaemon(b)
            return (cluster, a, b, daemon)
        } catch {
            cluster.cleanup()
            throw error
        }
    }

    @Test("expired while cut off and taken by another node: never overwritten, said, exit non-zero, a restart gets another subnet",
          arguments: [ClusterEtcdAPI.v3, .v2])
    func expiredAndTaken(_ api: ClusterEtcdAPI) throws {
        let (cluster, a, b, daemon) = try Self.shortLeaseOnA(tag: "lxt\(api.rawValue)", api: api)
        defer { cluster.cleanup() }
        #expect(try waitUntil(10) { try pinnedPeers(cluster, b) == [a.podSubnet] } != nil)
        let key = cluster.leaseKey(a.podSubnet)

        // Renewal keeps the short lease: still there after two TTLs.
        usleep(UInt32(2 * Self.ttl) * 1_000_000)
        #expect(try cluster.get(key) != nil, "a's \(Self.ttl) s lease was not renewed; log:\n\(cluster.daemonLog(a).suffix(1500))")

        try cutOffFromEtcd(cluster, a)
        let expired = try waitUntil(Double(Self.ttl) + 15) { try cluster.get(key) == nil }
        print("LeaseExpiryTests.expiredAndTaken(\(api)): etcd expired the lease \(expired.map { String(format: "%.1f s", $0) } ?? "never") after the cut")
        try #require(expired != nil, "etcd never expired a's lease (TTL \(Self.ttl) s)")
        let newOwner = IPv4Address(192, 168, 77, 99)
        try cluster.putFlannelLease(subnet: a.podSubnet, publicIP: newOwner, vtepMAC: MACAddress("02:00:00:00:63:01")!)
        usleep(1_000_000)
        try reconnectToEtcd(cluster, a)

        let status = daemon.waitExit(timeout: 20)
        let log = cluster.daemonLog(a)
        print("LeaseExpiryTests.expiredAndTaken(\(api)): daemon exit status \(status.map(String.init) ?? "still running")")
        #expect(status != nil && status != 0, "the daemon kept running on a subnet it no longer holds; log:\n\(log.suffix(1500))")
        #expect(log.contains("our lease \(a.podSubnet) was lost"), "no log line says the lease was lost:\n\(log.suffix(1500))")
        let value = try cluster.get(key) ?? ""
        #expect(value.contains("\"PublicIP\":\"\(newOwner)\""), "the new owner's lease was overwritten: \(value)")
        #expect(occurrences(of: plainHTTPWarning, in: log) == 1, "plain-http warning not exactly once:\n\(log.suffix(2000))")
        #expect(try waitUntil(10) { try pinnedPeers(cluster, b) == [a.podSubnet] } != nil)

        // Recovery (docs/ETCD.md): a restart acquires a lease again, another subnet.
        try cluster.startDaemon(a, extra: ["--subnet-lease-ttl=\(Self.ttl)"])
        let subnet = subnetLine(cluster, a)
        print("LeaseExpiryTests.expiredAndTaken(\(api)): after restart \(subnet)")
        #expect(!subnet.isEmpty && !subnet.contains("=\(a.podSubnet.host(1))/"), "restarted on the taken subnet: \(subnet)")
        #expect(try cluster.get(key)?.contains("\"PublicIP\":\"\(newOwner)\"") == true, "the restart overwrote the new owner")
    }

    @Test("expired while cut off, nobody took it: re-created with the same subnet, said, no exit, traffic flows again",
          arguments: [ClusterEtcdAPI.v3, .v2])
    func expiredAndRecreated(_ api: ClusterEtcdAPI) throws {
        let (cluster, a, b, daemon) = try Self.shortLeaseOnA(tag: "lxr\(api.rawValue)", api: api)
        defer { cluster.cleanup() }
        #expect(try waitUntil(10) { try pinnedPeers(cluster, b) == [a.podSubnet] && pinnedPeers(cluster, a) == [b.podSubnet] } != nil)
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP))
        let key = cluster.leaseKey(a.podSubnet)
        let subnetBefore = subnetLine(cluster, a)

        try cutOffFromEtcd(cluster, a)
        let expired = try waitUntil(Double(Self.ttl) + 15) { try cluster.get(key) == nil }
        print("LeaseExpiryTests.expiredAndRecreated(\(api)): etcd expired the lease \(expired.map { String(format: "%.1f s", $0) } ?? "never") after the cut")
        try #require(expired != nil, "etcd never expired a's lease (TTL \(Self.ttl) s)")
        // The peer follows etcd: a's subnet is gone from its maps.
        #expect(try waitUntil(10) { try pinnedPeers(cluster, b).isEmpty } != nil)
        try reconnectToEtcd(cluster, a)

        let back = try waitUntil(15) { try cluster.get(key)?.contains("\"PublicIP\":\"\(a.nodeIP)\"") == true }
        let log = cluster.daemonLog(a)
        print("LeaseExpiryTests.expiredAndRecreated(\(api)): lease back \(back.map { String(format: "%.2f s", $0) } ?? "never") after reconnecting")
        #expect(back != nil, "a did not re-create its lease; log:\n\(log.suffix(1500))")
        #expect(log.contains("our lease \(a.podSubnet) had expired; re-created it"), "no log line says so:\n\(log.suffix(1500))")
        #expect(!log.contains("was lost"), "a declared its own expired lease lost:\n\(log.suffix(1500))")
        #expect(try waitUntil(10) { try pinnedPeers(cluster, b) == [a.podSubnet] } != nil, "b never saw a's lease again")
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 10))
        #expect(try cluster.lab.waitForPing(from: b.podNamespace, to: a.podIP, timeout: 10))

        // Renewals resumed: still held two TTLs later, same subnet, daemon alive, warned once.
        usleep(UInt32(2 * Self.ttl) * 1_000_000)
        #expect(daemon.isRunning, "the daemon exited; log:\n\(cluster.daemonLog(a).suffix(1500))")
        #expect(try cluster.get(key)?.contains("\"PublicIP\":\"\(a.nodeIP)\"") == true, "the re-created lease was not renewed")
        #expect(subnetLine(cluster, a) == subnetBefore)
        #expect(occurrences(of: plainHTTPWarning, in: cluster.daemonLog(a)) == 1,
                "plain-http warning not exactly once:\n\(cluster.daemonLog(a).suffix(2000))")
    }
}
