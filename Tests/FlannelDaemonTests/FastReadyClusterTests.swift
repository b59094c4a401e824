// End-to-end: peers reachable at map speed. The covering route brings every pod packet for the
// network to the encap program, so a peer needs its map entry and nothing of the kernel; the kernel's
// per-peer state (neighbour, fdb, route, as flanneld programs it) follows in the background, is
// complete before a handover, and is left alone by a restart that finds it in place.

@testable import BenchKit
import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

@Suite("Cluster: the maps first, the kernel's state in the background", .serialized, .needsRoot, .ownThreads)
struct FastReadyClusterTests {
    @Test("a peer is reached through the covering route and its map entry alone; a handover first completes the kernel state")
    func coveringRouteAndHandover() async throws {
        let cluster = try FlannelCluster(tag: "e2f", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        // No timed full pass during the test: nothing repairs the state deleted below behind its back.
        for node in cluster.nodes { try cluster.startDaemon(node, extra: ["--reconcile-interval", "3600"]) }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let lab = cluster.lab
        #expect(try lab.sh(a.name, ["route", "show", "\(cluster.network)"]).contains("via 169.254.255.254 dev flannel.1 onlink"))
        #expect(try lab.sh(a.name, ["neigh", "show", "169.254.255.254", "dev", "flannel.1"]).contains("PERMANENT"))

        // Node b's kernel state on node a gone: only its map entry and the covering route remain.
        let vtepB = try lab.linkMAC(b.name, "flannel.1")
        try lab.sh(a.name, ["route", "del", "\(b.podSubnet)", "dev", "flannel.1"])
        try lab.sh(a.name, ["neigh", "del", "\(b.podSubnet.address)", "dev", "flannel.1"])
        try lab.sh(a.name, [LabTools.bridge, "fdb", "del", "\(vtepB)", "dev", "flannel.1"])
        // The underlay neighbour for b expires too: the covering route's packets must resolve it
        // themselves (there is no kernel state for the kernel device to send them by).
        try lab.sh(a.name, ["neigh", "flush", "dev", a.underlayIfname])
        let encapsulated = try cluster.pinnedCounter(a, FXDP_C_ENCAP_OK) + cluster.pinnedCounter(a, FXDP_C_ENCAP_OK_NEIGH)
        // The first packet may be lost while the next hop is resolved (bpf_redirect_neigh on a veth).
        _ = try lab.ping(from: a.podNamespace, to: b.podIP, count: 1, interval: 0.05)
        let r = try lab.ping(from: a.podNamespace, to: b.podIP, count: 3, interval: 0.05)
        let counters = [FXDP_C_ENCAP_OK, FXDP_C_ENCAP_OK_NEIGH, FXDP_C_ENCAP_PASS_NO_PEER, FXDP_C_ENCAP_PASS_FIB, FXDP_C_ENCAP_PASS_NO_NEIGH,
                        FXDP_C_ENCAP_PASS_DISABLED, FXDP_C_ENCAP_PASS_NOT_IPV4].map { (try? cluster.pinnedCounter(a, $0)) ?? 0 }
        #expect(r.received == r.sent, """
            \(a.podNamespace) → \(b.podIP) with no per-peer kernel state: \(r); encap ok/ok neigh/no peer/fib/no neigh/disabled/not ipv4 \(counters);             route: \((try? lab.sh(a.name, ["route", "get", "\(b.podIP)", "from", "\(a.podIP)", "iif", "cni0"])) ?? "?");             \((try? lab.sh(a.name, ["-s", "link", "show", "flannel.1"])) ?? "")
            """)
        #expect(try cluster.pinnedCounter(a, FXDP_C_ENCAP_OK) + cluster.pinnedCounter(a, FXDP_C_ENCAP_OK_NEIGH) >= encapsulated + 4)
        #expect(try cluster.pinnedCounter(a, FXDP_C_ENCAP_OK_NEIGH) >= 1, "the unresolved next hop was resolved by bpf_redirect_neigh")
        #expect(try !lab.sh(a.name, ["route", "show", "dev", "flannel.1"]).contains("\(b.podSubnet) via"))

        // Handing the node to the kernel path: the missing state is programmed first, then the
        // programs and the covering route go; the kernel path alone carries the traffic.
        cluster.stopDaemon(a)
        let back = try cluster.runTool(a, ["cleanup", "--keep-kernel-path", "--bpffs", cluster.bpffs(a)])
        #expect(back.status == 0, "cleanup --keep-kernel-path: \(back.stderr)")
        #expect((back.stdout + back.stderr).contains("the kernel state lacked 1 of 1 peer(s)"), "\(back.stdout)\(back.stderr)")
        let routes = try lab.sh(a.name, ["route", "show"])
        #expect(routes.contains("\(b.podSubnet) via \(b.podSubnet.address) dev flannel.1 onlink"), "\(routes)")
        #expect(!routes.contains("169.254.255.254"), "\(routes)")
        #expect(try lab.sh(a.name, ["neigh", "show", "dev", "flannel.1"]).contains("\(b.podSubnet.address) lladdr \(vtepB) PERMANENT"))
        #expect(try lab.sh(a.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"]).contains("\(vtepB) dst \(b.nodeIP) self permanent"))
        #expect(try lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 2))
        #expect(try lab.waitForPing(from: b.podNamespace, to: a.podIP, timeout: 2))
    }

    @Test("a restart with pinned maps writes no map entry and no kernel state when nothing changed")
    func restartWritesNothing() async throws {
        let cluster = try FlannelCluster(tag: "e2w", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 3)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let node = cluster.nodes[0]
        #expect(cluster.daemonLog(node).contains("data path tables filled"))
        cluster.stopDaemon(node)
        try cluster.startDaemon(node)
        let log = cluster.daemonLog(node)
        #expect(log.contains("data path tables filled") && log.contains("bpf-maps: +0 -0 of 2"), "\(log.suffix(3000))")
        // The kernel stage's pass found its state in place: no "reconciled" line (written only on a change).
        #expect(!log.contains("reconciled "), "\(log.suffix(3000))")
        let others = cluster.nodes.dropFirst().map(\.podSubnet).sorted()
        #expect(try cluster.pinnedPeerSubnets(node) == others)
        #expect(try cluster.lab.waitForPing(from: node.podNamespace, to: cluster.nodes[1].podIP, timeout: 2))
    }

    @Test("5 000 peers: subnet.env and READY=1 come with the maps full, before the kernel's state; /readyz says how far it got")
    func earlyReadyAtFiveThousand() async throws {
        let n = 5000
        let cluster = try FlannelCluster(tag: "e25", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 1,
                                         network: ControlPlaneBench.network)
        defer { cluster.cleanup() }
        let node = cluster.nodes[0]
        let etcd = GatewayConnection(namespace: cluster.lab.wireNamespace, host: cluster.etcdIP, port: 2379)
        let lease = try etcd.grant(ttl: 86400)
        try etcd.putAll((0..<n).map { i in
            let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
            return (cluster.leaseKey(subnet), attributes.json)
        }, lease: lease)
        // The first peer's gateway made a local address: the kernel refuses its onlink route, so
        // the kernel stage stays one short (and says so) until the address goes.
        let (first, _) = ControlPlaneBench.syntheticLease(0)
        try cluster.lab.sh(node.name, ["addr", "add", "\(first.address)/32", "dev", "lo"])

        let listener = try NotifyListener(name: cluster.nodeDir(node) + "/notify.sock")
        let process = try cluster.lab.spawn(node.name, cluster.daemonArguments(node), env: ["NOTIFY_SOCKET": listener.name],
                                            stdout: cluster.logFile(node))
        var ready: String?
        for _ in 0..<12 where ready == nil { // 5 s each
            if let message = listener.receive(), message.hasPrefix("READY=1") { ready = message }
            if !process.isRunning { break }
        }
        let readyMessage = try #require(ready, "no READY=1; log:\n\(cluster.daemonLog(node).suffix(3000))")
        #expect(readyMessage.contains("STATUS=up, programming peers: maps \(n)/\(n), kernel 0/\(n);"), "\(readyMessage)")
        // subnet.env is written before READY=1.
        #expect(readFile(cluster.subnetFile(node)).contains("FLANNEL_NETWORK=10.0.0.0/8\nFLANNEL_SUBNET=\(node.podSubnet.host(1))/24\n"))
        #expect(try cluster.pinnedPeerSubnets(node).count == n)

        var body = ""
        let stuck = waitUntil(30) {
            guard let r = try? cluster.httpGet(node, path: "/readyz") else { return false }
            body = r.body
            return r.status == 503 && r.body.contains("peers: maps \(n)/\(n), kernel \(n - 1)/\(n)")
        }
        #expect(stuck != nil, "/readyz: \(body); log:\n\(cluster.daemonLog(node).suffix(2000))")
        try cluster.lab.sh(node.name, ["addr", "del", "\(first.address)/32", "dev", "lo"])
        try cluster.waitReady(node, process: process, timeout: 60)
        // The kernel's state is complete: a route, a neighbour and an fdb entry per peer (and the
        // covering route with its neighbour).
        func lines(_ args: [String]) throws -> Int { try cluster.lab.sh(node.name, args).split(separator: "\n").count }
        #expect(try lines(["route", "show", "dev", "flannel.1"]) == n + 1)
        #expect(try lines(["neigh", "show", "dev", "flannel.1"]) == n + 1)
        #expect(try lines([LabTools.bridge, "fdb", "show", "dev", "flannel.1"]) == n)
        process.terminate(grace: 5)
    }
}
