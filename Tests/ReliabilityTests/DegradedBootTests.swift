// A node reboots while etcd is unreachable: with the leases it last confirmed saved on disk
// (--last-known-state) it brings its overlay up anyway — data path, peers, subnet.env — and says
// "degraded" on /readyz until etcd confirms its lease; then etcd's peers replace the saved ones.
// A reboot is simulated by SIGKILL + `flanneld-xdp cleanup` (programs, pins, flannel.1 and its routes
// gone, as after a power cycle) + removing subnet.env (it lives on tmpfs in /run); the node's
// last-known file (its "disk") stays. "etcd unreachable" is a blackhole route in the node's
// namespace and one back to it on the wire: the other node and etcd keep working meanwhile.

import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("DegradedBootTests: booting from the last known state while etcd is unreachable", .serialized,
       .needsRoot, .ownThreads)
struct DegradedBootTests {
    /// Kills the node's daemon and wipes what a reboot wipes; the last known state stays.
    func reboot(_ cluster: FlannelCluster, _ node: LabNode) throws {
        cluster.killDaemon(node)
        let cleanup = try cluster.runTool(node, ["cleanup", "--bpffs", cluster.bpffs(node)])
        #expect(cleanup.status == 0, "\(cleanup.stdout)\(cleanup.stderr)")
        unlink(cluster.subnetFile(node))
    }

    func cutOff(_ cluster: FlannelCluster, _ node: LabNode, _ on: Bool) throws {
        let verb = on ? "add" : "del"
        try cluster.lab.sh(node.name, ["route", verb, "blackhole", "\(cluster.etcdIP)/32"])
        try cluster.lab.sh(cluster.lab.wireNamespace, ["route", verb, "blackhole", "\(node.nodeIP)/32"])
    }

    /// Waits until the node's daemon has started from the saved state (subnet.env written) and returns /readyz.
    func waitDegraded(_ cluster: FlannelCluster, _ node: LabNode, _ daemon: LabProcess) throws -> (status: Int, body: String)? {
        var readyz: (status: Int, body: String)?
        _ = try waitUntil(20) {
            guard daemon.isRunning else { return true }
            guard access(cluster.subnetFile(node), F_OK) == 0 else { return false }
            readyz = try cluster.httpGet(node, path: "/readyz")
            return readyz != nil
        }
        return readyz
    }

    @Test("rebooted with etcd unreachable: overlay up from the saved leases, /readyz degraded; etcd back: confirmed, peers as etcd has them")
    func bootsFromLastKnownState() throws {
        let (cluster, a, b) = try FlannelCluster.runningPair(tag: "rlb")
        defer { cluster.cleanup() }
        let leaver = try cluster.putStandInPeer(230, awaitedBy: a)
        let saved = cluster.lastKnownStateFile(a)
        #expect(waitUntil(5) { fileText(saved).contains(leaver.leaseKey) && fileText(saved).contains(b.podSubnet.leaseKey) } != nil,
                "last known state: \(fileText(saved))")
        let subnetBefore = subnetLine(cluster, a)

        // Reboot a while it cannot reach etcd; the cluster changes meanwhile.
        try reboot(cluster, a)
        #expect((try? cluster.pinnedPeerSubnets(a))?.isEmpty ?? true, "cleanup left peers pinned")
        try cutOff(cluster, a, true)
        try cluster.delete(cluster.leaseKey(leaver))
        let joiner = try cluster.putStandInPeer(231)

        let t0 = monotonicSeconds()
        let daemon = try cluster.spawnDaemon(a, extra: ["--etcd-start-timeout=2"])
        let readyz = try waitDegraded(cluster, a, daemon)
        let upAfter = monotonicSeconds() - t0
        let log = cluster.daemonLog(a)
        print("DegradedBootTests: overlay up from the last known state after \(String(format: "%.2f", upAfter)) s; /readyz \(readyz.map { "\($0.status) \($0.body)" } ?? "none")")
        #expect(daemon.isRunning, "the daemon exited:\n\(log.suffix(2000))")
        #expect(readyz?.status == 503 && readyz?.body.contains("degraded") == true, "readyz: \(String(describing: readyz))")
        #expect(log.contains("starting from the last known state"), "log:\n\(log.suffix(1500))")
        #expect(subnetLine(cluster, a) == subnetBefore, "subnet.env: \(subnetLine(cluster, a))")
        // The saved peers (the leaver too: a cannot know yet that it left).
        #expect(try pinnedPeers(cluster, a) == [b.podSubnet, leaver])
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP), "no traffic to b while degraded")
        let r = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 20, interval: 0.02)
        #expect(r.received == r.sent, "degraded traffic lost pings: \(r)")
        let status = try cluster.runTool(a, ["status", "--bpffs", cluster.bpffs(a), "--subnet-file", cluster.subnetFile(a)])
        #expect(status.stdout.contains("degraded"), "status does not say degraded:\n\(status.stdout)")
        #expect(fileText(saved).contains(leaver.leaseKey), "a degraded boot rewrote the saved state before etcd confirmed it")

        // etcd reachable again: confirmed, peers as etcd has them, the file follows.
        try cutOff(cluster, a, false)
        let confirmed = try waitUntil(15) { try cluster.httpStatus(a, path: "/readyz") == 200 }
        print("DegradedBootTests: confirmed by etcd \(confirmed.map { String(format: "%.2f s", $0) } ?? "never") after the path healed")
        #expect(confirmed != nil, "still not ready:\n\(cluster.daemonLog(a).suffix(1500))")
        #expect(try waitUntil(5) { try pinnedPeers(cluster, a) == [b.podSubnet, joiner] } != nil,
                "peers \((try? pinnedPeers(cluster, a)) ?? []); log:\n\(cluster.daemonLog(a).suffix(1500))")
        #expect(cluster.daemonLog(a).contains("leaving degraded mode"))
        #expect(waitUntil(5) { fileText(saved).contains(joiner.leaseKey) && !fileText(saved).contains(leaver.leaseKey) } != nil,
                "the saved state did not follow etcd: \(fileText(saved))")
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP))
        #expect(try waitUntil(5) { try pinnedPeers(cluster, b) == [a.podSubnet, joiner] } != nil)
    }

    @Test("degraded, and meanwhile another node took the subnet: on reconnect it never overwrites the owner, says so, exits")
    func subnetTakenWhileDegraded() throws {
        let (cluster, a, b) = try FlannelCluster.runningPair(tag: "rlq")
        defer { cluster.cleanup() }
        #expect(waitUntil(5) { fileText(cluster.lastKnownStateFile(a)).contains(b.podSubnet.leaseKey) } != nil)

        try reboot(cluster, a)
        try cutOff(cluster, a, true)
        let daemon = try cluster.spawnDaemon(a, extra: ["--etcd-start-timeout=1"])
        let readyz = try waitDegraded(cluster, a, daemon)
        #expect(readyz?.status == 503, "\(String(describing: readyz)); log:\n\(cluster.daemonLog(a).suffix(1500))")

        // a's lease goes (expired, say) and another node takes the subnet.
        let key = cluster.leaseKey(a.podSubnet)
        try cluster.delete(key)
        let newOwner = IPv4Address(192, 168, 77, 98)
        try cluster.putFlannelLease(subnet: a.podSubnet, publicIP: newOwner, vtepMAC: MACAddress("02:00:00:00:62:01")!)
        try cutOff(cluster, a, false)

        let exit = daemon.waitExit(timeout: 20)
        let log = cluster.daemonLog(a)
        print("DegradedBootTests: degraded node whose subnet was taken exited with \(exit.map(String.init) ?? "nothing (still running)")")
        #expect(exit != nil && exit != 0, "log:\n\(log.suffix(1500))")
        #expect(log.contains("held by another node"), "no line says why:\n\(log.suffix(1500))")
        #expect(try cluster.get(key)?.contains("\"PublicIP\":\"\(newOwner)\"") == true, "the new owner's lease was overwritten")
        #expect(try cluster.httpStatus(a, path: "/readyz") != 200)
    }

    @Test("an expired saved lease is not booted from: start-up waits for etcd")
    func expiredSavedLeaseWaitsForEtcd() throws {
        let (cluster, a) = try FlannelCluster.runningNode(tag: "rlw")
        defer { cluster.cleanup() }
        let saved = cluster.lastKnownStateFile(a)
        #expect(waitUntil(5) { fileText(saved).contains("expiresAt") } != nil)
        try reboot(cluster, a)
        // Age the saved lease past its expiry.
        let text = fileText(saved)
        let aged = text.replacingOccurrences(of: #""expiresAt":\d+"#, with: #""expiresAt":1000"#, options: .regularExpression)
        #expect(aged != text)
        try writeFile(saved, aged)
        try cutOff(cluster, a, true)
        let daemon = try cluster.spawnDaemon(a, extra: ["--etcd-start-timeout=1"])
        defer { try? cutOff(cluster, a, false) }
        // Waits for the daemon's verdict on the saved lease (a fixed 3 s was not always enough for
        // a daemon spawned on a loaded machine to log anything), then checks what it did.
        _ = waitUntil(30) { cluster.daemonLog(a).contains("expired") }
        let log = cluster.daemonLog(a)
        #expect(daemon.isRunning)
        #expect(access(cluster.subnetFile(a), F_OK) != 0, "it started from an expired lease")
        #expect(log.contains("expired") && !log.contains("starting from the last known state"), "log:\n\(log.suffix(1500))")
    }
}
