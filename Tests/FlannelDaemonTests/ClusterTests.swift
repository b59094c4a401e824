// End-to-end: flanneld-xdp processes in network-namespace nodes, a real etcd on the lab's wire,
// real pods pinging and streaming through the BPF path.

import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport


/// A `ping -i 0.01` running in the background; `finish()` returns (sent, received).
struct BackgroundPing {
    let process: LabProcess
    let started = monotonicSeconds()
    init(_ lab: NetnsLab, from ns: String, to ip: IPv4Address, seconds: Double) throws {
        let count = Int(seconds / 0.01)
        // Not -q: the reply lines tell which sequence numbers went missing, for the failure message.
        process = try lab.spawn(ns, [LabTools.ping, "-n", "-i", "0.01", "-W", "1", "-c", "\(count)", "\(ip)"])
    }

    func finish(timeout: Double = 30) -> (sent: Int, received: Int) {
        _ = process.waitExit(timeout: timeout)
        let out = process.output()
        // "500 packets transmitted, 500 received, 0% packet loss, time 5012ms"
        guard let line = out.split(separator: "\n").first(where: { $0.contains("packets transmitted") }) else { return (0, 0) }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        return numbers.count >= 2 ? (numbers[0], numbers[1]) : (0, 0)
    }

    /// The sequence numbers without a reply, with their send time in seconds after the start (10 ms
    /// apart), e.g. "icmp_seq 212 (~2.12 s)": where in the test the loss happened.
    func missing(sent: Int) -> String {
        var seen = Set<Int>()
        for line in process.output().split(separator: "\n") {
            guard let range = line.firstRange(of: "icmp_seq=") else { continue }
            if let n = Int(line[range.upperBound...].prefix(while: { $0.isNumber })) { seen.insert(n) }
        }
        let lost = (1...max(1, sent)).filter { !seen.contains($0) }
        return lost.map { "icmp_seq \($0) (~\(String(format: "%.2f", Double($0 - 1) * 0.01)) s)" }.joined(separator: ", ")
    }
}

@Suite("Cluster: flanneld-xdp nodes in network namespaces with a real etcd", .serialized,
       .needsRoot, .ownThreads)
struct ClusterTests {
    @Test("three nodes: every pod reaches every pod through the BPF path", arguments: [ClusterEtcdAPI.v2, .v3])
    func allPodsReachAllPods(api: ClusterEtcdAPI) async throws {
        let cluster = try FlannelCluster(tag: "e2e", api: api, daemonPath: TestBinaries.flanneldXDP(), nodes: 3)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        // Each node's peers map converges to the two others.
        for node in cluster.nodes {
            let others = cluster.nodes.filter { $0.name != node.name }.map(\.podSubnet).sorted()
            let took = try waitUntil(5) { try cluster.pinnedPeerSubnets(node) == others }
            let have = (try? cluster.pinnedPeerSubnets(node)) ?? []
            #expect(took != nil, "\(node.name) peers: \(have), want \(others); log:\n\(cluster.daemonLog(node).suffix(3000))")
        }
        for a in cluster.nodes {
            for b in cluster.nodes where a.name != b.name {
                let r = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 3, interval: 0.05)
                #expect(r.received == r.sent, "\(a.podNamespace) → \(b.podIP): \(r)")
            }
        }
        for node in cluster.nodes {
            #expect(try cluster.pinnedCounter(node, FXDP_C_ENCAP_OK) > 0, "\(node.name) encapsulated nothing")
        }
        let bps = try cluster.lab.tcpThroughput(from: cluster.nodes[0].podNamespace, to: cluster.nodes[1].podNamespace,
                                                serverIP: cluster.nodes[1].podIP, seconds: 1)
        #expect(bps > 1e6)
        // subnet.env as flannel writes it.
        let env = readFile(cluster.subnetFile(cluster.nodes[0]))
        #expect(env == "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    }

    @Test("a node that joins later is reached within a second; a deleted lease leaves every peer table")
    func joinAndLeave() async throws {
        let cluster = try FlannelCluster(tag: "e2j", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let late = try cluster.addNode(3)
        try cluster.startDaemon(late)
        let first = cluster.nodes[0]
        let reached = try waitUntil(1.0) {
            try cluster.lab.ping(from: first.podNamespace, to: late.podIP, count: 1, interval: 0.01, timeoutPerReply: 1).received == 1
        }
        #expect(reached != nil, "node 3's pod not reached within 1 s of its daemon being ready")

        // flannel: a node whose own lease is deleted stops; its peers drop its entries.
        try cluster.delete(cluster.leaseKey(late.podSubnet))
        for node in cluster.nodes where node.name != late.name {
            let gone = try waitUntil(5) { try !cluster.pinnedPeerSubnets(node).contains(late.podSubnet) }
            #expect(gone != nil, "\(node.name) still has \(late.podSubnet)")
        }
    }

    @Test("mixed cluster: a stock-flannel node (kernel vxlan as flanneld sets it) and flanneld-xdp nodes, both ways")
    func mixedWithStockFlannel() async throws {
        let cluster = try FlannelCluster(tag: "e2m", api: .v2, daemonPath: TestBinaries.flanneldXDP(), nodes: 3)
        defer { cluster.cleanup() }
        let stock = cluster.nodes[2]
        // The stand-in: flannel.1 exactly as flanneld makes it, its lease exactly as flanneld writes it.
        // It joins after the flanneld-xdp nodes are up, so they learn it from the watch.
        for node in cluster.nodes.prefix(2) { try cluster.startDaemon(node) }
        try cluster.runStockFlannel(on: stock)
        for node in cluster.nodes.prefix(2) {
            let joined = try waitUntil(5) { try cluster.pinnedPeerSubnets(node).contains(stock.podSubnet) }
            #expect(joined != nil, "\(node.name) never learned the stock node's lease")
        }
        // What flanneld on the stock node does for each flanneld-xdp lease: neighbour, fdb, route.
        for node in cluster.nodes.prefix(2) {
            let vtep = try cluster.lab.linkMAC(node.name, "flannel.1")
            try cluster.lab.addFlannelPeerRoutes(on: stock, peer: Peer(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: vtep))
        }
        for node in cluster.nodes.prefix(2) {
            let toStock = try cluster.lab.ping(from: node.podNamespace, to: stock.podIP, count: 3, interval: 0.05)
            let fromStock = try cluster.lab.ping(from: stock.podNamespace, to: node.podIP, count: 3, interval: 0.05)
            #expect(toStock.received == toStock.sent && fromStock.received == fromStock.sent, "\(node.name) ↔ stock: \(toStock) \(fromStock)")
        }
        // The stock node leaves: its lease goes, the flanneld-xdp nodes drop it.
        try cluster.delete(cluster.leaseKey(stock.podSubnet))
        for node in cluster.nodes.prefix(2) {
            let gone = try waitUntil(5) { try !cluster.pinnedPeerSubnets(node).contains(stock.podSubnet) }
            #expect(gone != nil)
        }
    }

    @Test("SIGKILL and restart while a 10 ms ping and a TCP stream run: nothing lost, same subnet")
    func restartLosesNothing() async throws {
        let cluster = try FlannelCluster(tag: "e2r", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 5))
        let server = try cluster.lab.spawn(b.podNamespace, [LabTools.iperf3, "-s", "-1", "-B", "\(b.podIP)", "-p", "5301"])
        usleep(300_000)
        let stream = try cluster.lab.spawn(a.podNamespace, [LabTools.iperf3, "-c", "\(b.podIP)", "-p", "5301", "-t", "6", "-b", "50M"])
        let ping = try BackgroundPing(cluster.lab, from: a.podNamespace, to: b.podIP, seconds: 5)
        usleep(500_000)
        for _ in 0..<3 {
            cluster.killDaemon(a)
            try cluster.startDaemon(a)
            usleep(200_000)
        }
        let r = ping.finish()
        #expect(r.sent > 0 && r.received == r.sent, "pings lost across restarts: \(r); missing \(ping.missing(sent: r.sent))")
        #expect(stream.waitExit(timeout: 20) == 0, "TCP stream broke: \(stream.output().suffix(500))")
        server.terminate()
        #expect(readFile(cluster.subnetFile(a)).contains("FLANNEL_SUBNET=\(a.podSubnet.host(1))/24"))
        #expect(try cluster.leasedSubnets() == [a.podSubnet, b.podSubnet])
    }

    @Test("migration: a stock-flannel node is taken over with no ping lost, same subnet and VtepMAC, and handed back")
    func migrationFromStockFlannel() async throws {
        let cluster = try FlannelCluster(tag: "e2g", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let (stockNode, other) = (cluster.nodes[0], cluster.nodes[1])
        // Node 1 runs "stock flanneld": device, lease, and the routes for node 2 once it is up.
        let standIn = try cluster.runStockFlannel(on: stockNode)
        try cluster.startDaemon(other)
        let otherVTEP = try cluster.lab.linkMAC(other.name, "flannel.1")
        try cluster.lab.addFlannelPeerRoutes(on: stockNode, peer: Peer(subnet: other.podSubnet, publicIP: other.nodeIP, vtepMAC: otherVTEP))
        #expect(try cluster.lab.waitForPing(from: stockNode.podNamespace, to: other.podIP, timeout: 5))

        let ping = try BackgroundPing(cluster.lab, from: stockNode.podNamespace, to: other.podIP, seconds: 4)
        usleep(500_000)
        let takeover = monotonicSeconds() - ping.started
        try cluster.startDaemon(stockNode) // takes over
        let ready = monotonicSeconds() - ping.started
        usleep(1_000_000)
        #expect(try cluster.pinnedCounter(stockNode, FXDP_C_ENCAP_OK) > 0, "traffic did not move onto the BPF path")
        #expect(try cluster.lab.linkMAC(stockNode.name, "flannel.1") == standIn.vtepMAC)
        // Hand back: stop our daemon and detach BPF, keeping flannel.1 and the kernel routes.
        let handBack = monotonicSeconds() - ping.started
        cluster.stopDaemon(stockNode)
        let back = try cluster.runTool(stockNode, ["cleanup", "--keep-kernel-path", "--bpffs", cluster.bpffs(stockNode)])
        let handedBack = monotonicSeconds() - ping.started
        #expect(back.status == 0, "cleanup --keep-kernel-path: \(back.stderr)")
        let r = ping.finish()
        #expect(r.sent > 0 && r.received == r.sent,
                """
                pings lost during takeover/hand-back: \(r); missing \(ping.missing(sent: r.sent)); takeover started at \
                \(String(format: "%.2f", takeover)) s, ready at \(String(format: "%.2f", ready)) s, hand-back \
                \(String(format: "%.2f", handBack))–\(String(format: "%.2f", handedBack)) s; daemon log:
                \(cluster.daemonLog(stockNode).suffix(2000))
                """)
        #expect(try cluster.leasedSubnets().contains(stockNode.podSubnet))
        #expect(try cluster.lab.linkMAC(stockNode.name, "flannel.1") == standIn.vtepMAC)
        #expect(try cluster.lab.waitForPing(from: stockNode.podNamespace, to: other.podIP, timeout: 2))
    }

    @Test("cleanup removes our programs, pins, device and routes, and nothing else")
    func cleanupLeavesNodeClean() async throws {
        let cluster = try FlannelCluster(tag: "e2c", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let node = cluster.nodes[0]
        let routesBefore = try cluster.lab.sh(node.name, ["route", "show"])
        #expect(routesBefore.contains("flannel.1"))
        cluster.stopDaemon(node)
        let r = try cluster.runTool(node, ["cleanup", "--bpffs", cluster.bpffs(node)])
        #expect(r.status == 0, "cleanup: \(r.stderr)")
        let links = try cluster.lab.sh(node.name, ["-o", "link", "show"])
        #expect(!links.contains("flannel.1"))
        #expect(try cluster.lab.sh(node.name, ["route", "show"]).contains("flannel") == false)
        #expect(links.contains("eth0") && links.contains("cni0"), "cleanup touched interfaces that are not ours")
        #expect(try cluster.lab.sh(node.name, ["link", "show", "dev", "eth0"]).contains("xdp") == false)
        #expect(try cluster.lab.run(nil, ["/bin/ls", cluster.pinFolder(node)]).status != 0, "pins left behind")
    }
}
