// Security posture: the daemon runs under a capability bounding set (as systemd's
// CapabilityBoundingSet= would give it; setpriv from util-linux here) holding only what
// docs/SECURITY.md lists, starts, carries pod traffic, and restarts over its own pins with the same
// set; nothing it leaves on disk or in bpffs is writable by other users.

import BPFLoader
import CBPF
import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("SecurityPostureTests: least privilege and file modes", .serialized, .needsRoot, .ownThreads)
struct SecurityPostureTests {
    /// The capabilities docs/SECURITY.md documents (the bpffs is mounted beforehand, as on a node
    /// where systemd or the kubelet mounted /sys/fs/bpf).
    /// CAP_PERFMON: the verifier refuses a packet pointer plus a variable offset (the IPv4 header
    /// length) from programs loaded without it (Spectre v1 sanitising cannot cover packet pointers).
    static let capabilities = ["bpf", "net_admin", "perfmon"]

    /// A wrapper that execs flanneld-xdp with a bounding set of only `caps` (uid 0 keeps no other).
    static func wrapper(caps: [String]) throws -> String {
        let path = "/run/fxrel-caps-\(getpid())-\(caps.joined(separator: "-")).sh"
        let script = "#!/bin/sh\nexec /usr/bin/setpriv --bounding-set=-all,\(caps.map { "+" + $0 }.joined(separator: ",")) "
            + "--inh-caps=-all -- \(TestBinaries.flanneldXDP()) \"$@\"\n"
        // Not Foundation's atomic write: its descriptor is not close-on-exec, and a daemon another
        // suite spawns meanwhile would keep the script open for writing (exec fails: ETXTBSY).
        try writeFile(path, script)
        chmod(path, 0o755)
        return path
    }

    @Test("starts, carries traffic and restarts with only the documented capabilities")
    func leastPrivilege() throws {
        let wrapper = try SecurityPostureTests.wrapper(caps: SecurityPostureTests.capabilities)
        defer { unlink(wrapper) }
        let cluster = try FlannelCluster(tag: "rlc", api: .v3, daemonPath: wrapper, nodes: 2)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        // The running daemon really holds only those capabilities.
        let pid = try #require(cluster.daemons[a.name]?.pid)
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let bound = status.split(separator: "\n").first { $0.hasPrefix("CapBnd:") }.map { String($0.split(separator: "\t").last ?? "") } ?? ""
        // CAP_NET_ADMIN = 12, CAP_PERFMON = 38, CAP_BPF = 39.
        #expect(UInt64(bound, radix: 16) == (UInt64(1) << 12 | UInt64(1) << 38 | UInt64(1) << 39), "CapBnd \(bound)")
        let log = cluster.daemonLog(a)
        // With too few capabilities `--dataplane=auto` would fall back silently to another path.
        #expect(log.contains("data path: BPF"), "not on the BPF path:\n\(log.suffix(2500))")
        #expect(waitUntil(5) { ((try? pinnedPeers(cluster, a)) ?? []) == [b.podSubnet] } != nil)
        // The first echo may wait for neighbour resolution on a fresh node; then none may be lost.
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP))
        let r = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 5, interval: 0.05)
        #expect(r.received == r.sent, "\(r)")
        // A restart over the existing pins and attachments, with the same set.
        let idsBefore = try dataplaneIDs(cluster, a)
        cluster.killDaemon(a)
        try cluster.startDaemon(a)
        let restartLog = cluster.daemonLog(a) // the log file starts afresh with each start
        #expect(try dataplaneIDs(cluster, a) == idsBefore, "restart replaced programs or maps:\n\(restartLog.suffix(2000))")
        // No warning beyond the plain-http one (the lab's etcd is another host reached over http).
        let warnings = restartLog.split(separator: "\n").filter { $0.contains(" warning ") && !$0.contains(plainHTTPWarning) }
        #expect(restartLog.contains("data path: BPF") && warnings.isEmpty, "\(warnings)\n\(restartLog.suffix(2500))")
        let again = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 5, interval: 0.05)
        #expect(again.received == again.sent, "after restart: \(again); log:\n\(cluster.daemonLog(a).suffix(1500))")
    }

    @Test("pins, the pin folder and subnet.env are not writable by group or others")
    func fileModes() throws {
        let (cluster, node) = try FlannelCluster.runningNode(tag: "rlm")
        defer { cluster.cleanup() }
        #expect(waitUntil(5) { access(cluster.lastKnownStateFile(node), F_OK) == 0 } != nil)
        var paths = [cluster.pinFolder(node), cluster.subnetFile(node), cluster.lastKnownStateFile(node)]
        paths += ((try? FileManager.default.contentsOfDirectory(atPath: cluster.pinFolder(node))) ?? []).map { cluster.pinFolder(node) + "/" + $0 }
        #expect(paths.count >= 5, "\(paths)")
        for path in paths {
            var st = stat()
            #expect(stat(path, &st) == 0, "\(path)")
            #expect(st.st_mode & 0o022 == 0, "\(path) has mode \(String(st.st_mode & 0o7777, radix: 8))")
            #expect(st.st_uid == 0, "\(path) owned by uid \(st.st_uid)")
        }
    }
}
