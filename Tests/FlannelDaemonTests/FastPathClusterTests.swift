// The fast path's boundaries, end to end: flanneld-xdp nodes with flannel's --ip-masq (which, like
// kube-proxy on any Kubernetes node, turns connection tracking on), pods talking TCP and UDP. Each
// test says which way the packets went by the counters that moved, and what each end of the flow
// saw: a flow that needs the stack (NAT, FORWARD's verdict on a new connection, TTL expiry) must
// get exactly what the kernel path gives it, and an established plain flow must skip both stacks.

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

/// The fast path's counters of one node, read from its pins.
struct FastCounters: CustomStringConvertible {
    var values: [FXDPCounter: UInt64] = [:]

    static let all: [FXDPCounter] = FXDPCounter.allCases.filter { $0.name.hasPrefix("fast_") } + [.decapCheckOK, .encapOK]

    static func read(_ cluster: FlannelCluster, _ node: LabNode) throws -> FastCounters {
        var c = FastCounters()
        for counter in all { c.values[counter] = try cluster.pinnedCounter(node, counter.cValue) }
        return c
    }

    subscript(_ counter: FXDPCounter) -> UInt64 { values[counter] ?? 0 }

    /// What moved since `before`.
    func since(_ before: FastCounters) -> FastCounters {
        var d = FastCounters()
        for (k, v) in values { d.values[k] = v &- before[k] }
        return d
    }

    var description: String {
        values.filter { $0.value > 0 }.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.name) \($0.value)" }.joined(separator: ", ")
    }
}

@Suite("Fast path: established flows skip both stacks; what needs the stack gets it (root, netns, real etcd)", .serialized,
       .needsRoot, .ownThreads)
struct FastPathClusterTests {
    /// A two-node cluster with daemons up and each knowing the other.
    static func cluster(_ tag: String, nodes: Int = 2, extra: [String] = ["--ip-masq"]) throws -> FlannelCluster {
        let cluster = try FlannelCluster(tag: tag, api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: nodes)
        do {
            for node in cluster.nodes { try cluster.startDaemon(node, extra: extra) }
            for node in cluster.nodes {
                let others = cluster.nodes.filter { $0.name != node.name }.map(\.podSubnet).sorted()
                guard try waitUntil(5, { try cluster.pinnedPeerSubnets(node) == others }) != nil else {
                    throw FlowProbeError("\(node.name) never learned its peers")
                }
            }
            // The pods' first exchange (ARP, the bridges' fdb) on the kernel path, and the daemons'
            // next pass (every second) putting the pods in the fast path's table.
            for (from, to) in [(cluster.nodes[0], cluster.nodes[1]), (cluster.nodes[1], cluster.nodes[0])] {
                guard try cluster.lab.waitForPing(from: from.podNamespace, to: to.podIP, timeout: 5) else {
                    throw FlowProbeError("\(from.name) pod cannot ping \(to.name) pod")
                }
            }
            for node in cluster.nodes {
                guard try waitUntil(5, { try podsKnown(cluster, node) >= 1 }) != nil else {
                    throw FlowProbeError("\(node.name): no pod in \(FXDP_MAP_LOCAL) after 5 s\n\(cluster.daemonLog(node).suffix(2000))")
                }
                // And its veth hooked: a pass that could not attach there retries a second later.
                guard try waitUntil(5, { try podsHooked(cluster, node) >= 1 }) != nil else {
                    throw FlowProbeError("\(node.name): no pod veth carries fxdp_fast_encap after 5 s\n\(cluster.daemonLog(node).suffix(2000))")
                }
            }
        } catch {
            cluster.cleanup()
            throw error
        }
        return cluster
    }

    static func podsHooked(_ cluster: FlannelCluster, _ node: LabNode) throws -> Int {
        try NetnsThread.run(namespace: node.name) { try FlannelBPF.fastEncapInterfaces() }.count
    }

    static func podsKnown(_ cluster: FlannelCluster, _ node: LabNode) throws -> Int {
        try BPFMap.openPinned(path: cluster.pinFolder(node) + "/" + FXDP_MAP_LOCAL, key: fxdp_local_key.self, value: fxdp_local_value.self).keys().count
    }

    @Test("an established TCP flow and a UDP flow between pods skip both stacks, both ways; GSO super-packets reach the pod; the first packets and ICMP take the kernel path")
    func establishedFlowsTakeTheFastPath() async throws {
        let cluster = try Self.cluster("fpe")
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let beforeA = try FastCounters.read(cluster, a), beforeB = try FastCounters.read(cluster, b)

        let ends = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (b.podIP, 7101), exchanges: 300)
        #expect(ends.clientAsSeenByServer.0 == a.podIP && ends.serverAsSeenByClient == (b.podIP, 7101), "\(ends)")
        let movedA = try FastCounters.read(cluster, a).since(beforeA), movedB = try FastCounters.read(cluster, b).since(beforeB)
        // Requests a → b and answers b → a, each skipping the sender's and the receiver's stack.
        #expect(movedA[.fastEncapOK] >= 250 && movedB[.fastDecapOK] >= 250, "a: \(movedA)\nb: \(movedB)")
        #expect(movedB[.fastEncapOK] >= 250 && movedA[.fastDecapOK] >= 250, "a: \(movedA)\nb: \(movedB)")
        // The handshake went through the stack (conntrack learnt the flow there).
        #expect(movedA[.fastEncapPassConntrack] >= 1 && movedB[.fastEncapPassConntrack] >= 1, "a: \(movedA)\nb: \(movedB)")

        // UDP: the first exchange through the stack, then the datagrams skip it.
        let udpBefore = try FastCounters.read(cluster, b)
        let udp = try UDPProbe.ttlsSeen(from: a.podNamespace, to: b.podNamespace, server: (b.podIP, 7102), ttl: 64, count: 20)
        #expect(udp.ends.clientAsSeenByServer.0 == a.podIP && udp.ends.serverAsSeenByClient == (b.podIP, 7102))
        #expect(udp.ttls == Array(repeating: 62, count: 20), "two forwarding hops, as the kernel path: \(udp.ttls)")
        #expect(try FastCounters.read(cluster, b).since(udpBefore)[.fastDecapOK] >= 20)

        // Bulk TCP: the receiving pod gets the sender's GSO super-packets (more than the 1450-byte
        // MTU in one frame), as on the kernel path: nothing was segmented on the way.
        let capture = try PacketCapture(namespace: b.podNamespace, ifname: "eth0") { frame in
            guard frame.count >= 34, frame[frame.startIndex + 12] == 0x08, frame[frame.startIndex + 13] == 0x00 else { return [] }
            let total = Int(frame[frame.startIndex + 16]) << 8 | Int(frame[frame.startIndex + 17])
            return total > 1450 ? ["super"] : []
        }
        let bulkBefore = try FastCounters.read(cluster, b)
        let bps = try cluster.lab.tcpThroughput(from: a.podNamespace, to: b.podNamespace, serverIP: b.podIP, seconds: 1, port: 7103)
        #expect(bps > 0)
        #expect(capture.count(label: "super") > 0, "no GSO super-packet reached the pod")
        #expect(try FastCounters.read(cluster, b).since(bulkBefore)[.fastDecapOK] > 100)

        // ICMP is not a flow conntrack can vouch for here: the kernel path.
        let pingBefore = try FastCounters.read(cluster, a)
        let ping = try cluster.lab.ping(from: a.podNamespace, to: b.podIP, count: 3, interval: 0.05)
        #expect(ping.received == 3)
        #expect(try FastCounters.read(cluster, a).since(pingBefore)[.fastEncapPassConntrack] >= 3)
    }

    @Test("TTL: a datagram arriving with TTL 1 or 2 is dropped as on the kernel path, 3 arrives with 1")
    func ttlAsTheKernelPath() async throws {
        let cluster = try Self.cluster("fpt")
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        for (ttl, expected) in [(Int32(3), [1, 1, 1]), (2, []), (1, [])] {
            let before = (try FastCounters.read(cluster, a), try FastCounters.read(cluster, b))
            let port = UInt16(7200 + ttl)
            let probe = try UDPProbe.ttlsSeen(from: a.podNamespace, to: b.podNamespace, server: (b.podIP, port), ttl: ttl, count: 3,
                                              timeout: 1)
            #expect(probe.ttls == expected, "TTL \(ttl)")
            let movedA = try FastCounters.read(cluster, a).since(before.0), movedB = try FastCounters.read(cluster, b).since(before.1)
            switch ttl {
            case 1: #expect(movedA[.fastEncapPassLimits] >= 3, "TTL 1 leaves a only through the stack (which drops it): \(movedA)")
            case 2: #expect(movedA[.fastEncapOK] >= 3 && movedB[.fastDecapPassLimits] >= 3, "TTL 2: a forwards it, b's stack drops it: a \(movedA) b \(movedB)")
            default: #expect(movedA[.fastEncapOK] >= 3 && movedB[.fastDecapOK] >= 3, "a \(movedA) b \(movedB)")
            }
        }
    }

    @Test("a service DNAT as kube-proxy installs it: the replies reach the client from the service address (bridge-nf-call-iptables 1 and 0)",
          arguments: [true, false])
    func serviceDNATRepliesAreUnNATed(bridgeNetfilter: Bool) async throws {
        let cluster = try Self.cluster(bridgeNetfilter ? "fpd" : "fpn")
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let service = IPv4Address(10, 96, 0, 10)
        try cluster.lab.sysctl(a.name, ["net.bridge.bridge-nf-call-iptables=\(bridgeNetfilter ? 1 : 0)"])
        try cluster.lab.sh(a.name, ["/usr/sbin/iptables", "-w", "5", "-t", "nat", "-A", "PREROUTING", "-d", "\(service)/32", "-p", "tcp",
                                    "--dport", "80", "-j", "DNAT", "--to-destination", "\(b.podIP):8080"])
        let beforeA = try FastCounters.read(cluster, a), beforeB = try FastCounters.read(cluster, b)
        let ends = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (service, 80),
                                           listenOn: (b.podIP, 8080), exchanges: 200)
        #expect(ends.serverAsSeenByClient == (service, 80), "the client must see the service, un-NATed: \(ends)")
        #expect(ends.clientAsSeenByServer.0 == a.podIP, "\(ends)")
        let movedA = try FastCounters.read(cluster, a).since(beforeA), movedB = try FastCounters.read(cluster, b).since(beforeB)
        // On a, the node that translates, every packet of the flow takes the stack.
        #expect(movedA[.fastEncapOK] == 0 && movedA[.fastDecapOK] == 0, "a: \(movedA)")
        #expect(movedA[.fastDecapPassConntrack] >= 190, "a: \(movedA)")
        // On b the flow is a plain one: both directions skip its stack.
        #expect(movedB[.fastDecapOK] >= 190 && movedB[.fastEncapOK] >= 190, "b: \(movedB)")
    }

    @Test("masquerade: a pod-to-pod flow SNATed on its node takes that node's stack both ways, the fast path on the other")
    func masqueradedFlows() async throws {
        let cluster = try Self.cluster("fpm")
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        try cluster.lab.sh(a.name, ["/usr/sbin/iptables", "-w", "5", "-t", "nat", "-I", "POSTROUTING", "1", "-s", "\(a.podIP)/32",
                                    "-d", "\(b.podIP)/32", "-p", "tcp", "-j", "MASQUERADE"])
        let beforeA = try FastCounters.read(cluster, a), beforeB = try FastCounters.read(cluster, b)
        let ends = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (b.podIP, 7301), exchanges: 200)
        // flannel.1's address on a (<subnet>.0) is the masquerade source toward the overlay.
        #expect(ends.clientAsSeenByServer.0 == a.podSubnet.address, "the server sees the masqueraded source: \(ends)")
        #expect(ends.serverAsSeenByClient == (b.podIP, 7301), "\(ends)")
        let movedA = try FastCounters.read(cluster, a).since(beforeA), movedB = try FastCounters.read(cluster, b).since(beforeB)
        #expect(movedA[.fastEncapOK] == 0 && movedA[.fastEncapPassConntrack] >= 190, "a: \(movedA)")
        #expect(movedA[.fastDecapOK] == 0 && movedA[.fastDecapPassNotPod] >= 190, "answers to a's own address are a's stack's: \(movedA)")
        #expect(movedB[.fastDecapOK] >= 190 && movedB[.fastEncapOK] >= 190, "b: \(movedB)")
    }

    @Test("Docker's FORWARD policy DROP: with flannel's accepts the fast path carries; without them no connection is made, on either path")
    func forwardPolicyDrop() async throws {
        let cluster = try FlannelCluster(tag: "fpf", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 3)
        defer { cluster.cleanup() }
        try cluster.dropForwardedTrafficByDefault()
        let (a, b, c) = (cluster.nodes[0], cluster.nodes[1], cluster.nodes[2])
        try cluster.startDaemon(a, extra: ["--ip-masq"])
        try cluster.startDaemon(b, extra: ["--ip-masq"])
        try cluster.startDaemon(c, extra: ["--ip-masq", "-iptables-forward-rules=false"])
        for node in cluster.nodes {
            let others = cluster.nodes.filter { $0.name != node.name }.map(\.podSubnet).sorted()
            #expect(try waitUntil(5) { try cluster.pinnedPeerSubnets(node) == others } != nil, "\(node.name) peers")
        }
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 5))
        #expect(try waitUntil(5) { try Self.podsKnown(cluster, a) >= 1 && Self.podsKnown(cluster, b) >= 1 } != nil)
        #expect(try waitUntil(5) { try Self.podsHooked(cluster, a) >= 1 && Self.podsHooked(cluster, b) >= 1 } != nil)
        let before = try FastCounters.read(cluster, a)
        _ = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (b.podIP, 7401), exchanges: 100)
        #expect(try FastCounters.read(cluster, a).since(before)[.fastEncapOK] >= 90)
        // c keeps the DROP policy and no accepts: the SYN dies in FORWARD, conntrack never confirms
        // the flow, nothing may skip the stack.
        let beforeC = try FastCounters.read(cluster, c)
        #expect(throws: FlowProbeError.self) {
            _ = try TCPConversation.run(from: a.podNamespace, to: c.podNamespace, connectTo: (c.podIP, 7402), exchanges: 1, timeout: 1.5)
        }
        let movedC = try FastCounters.read(cluster, c).since(beforeC)
        #expect(movedC[.fastDecapOK] == 0 && movedC[.fastEncapOK] == 0, "c: \(movedC)")
    }

    @Test("a TCP stream keeps flowing, checked byte by byte, through fast path on, a restart with --fast-path=false, on again, and the hand-back to the kernel path (cleanup --keep-kernel-path)")
    func handBackIsSeamless() async throws {
        let cluster = try Self.cluster("fph")
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        // kube-proxy's KUBE-FORWARD drops what conntrack calls INVALID: packets conntrack did not
        // follow must not become that when they take the stack again.
        for node in [a, b] {
            try cluster.lab.sh(node.name, ["/usr/sbin/iptables", "-w", "5", "-I", "FORWARD", "1", "-m", "conntrack", "--ctstate", "INVALID",
                                           "-j", "DROP"])
        }
        let stream = try TCPStream(from: a.podNamespace, to: b.podNamespace, address: b.podIP, port: 7501)
        defer { stream.stop() }
        func phase(_ name: String, fast: Bool) throws {
            let before = try FastCounters.read(cluster, a)
            #expect(stream.waitForProgress(bytes: 4 << 20), "\(name): the stream stalled at \(stream.received) bytes: \(stream.failure ?? "")")
            let moved = try FastCounters.read(cluster, a).since(before)
            if fast {
                #expect(moved[.fastEncapOK] > 50, "\(name): \(moved)")
            } else {
                #expect(moved[.fastEncapOK] == 0, "\(name): \(moved)")
            }
        }
        try phase("fast path on", fast: true)
        for node in [a, b] {
            cluster.stopDaemon(node)
            try cluster.startDaemon(node, extra: ["--ip-masq", "--fast-path=false"])
        }
        #expect(try NetnsThread.run(namespace: a.name) { try FlannelBPF.fastEncapInterfaces() }.isEmpty)
        try phase("--fast-path=false", fast: false)
        for node in [a, b] {
            cluster.stopDaemon(node)
            try cluster.startDaemon(node, extra: ["--ip-masq"])
        }
        #expect(try waitUntil(5) { try Self.podsKnown(cluster, a) >= 1 && Self.podsHooked(cluster, a) >= 1 } != nil)
        try phase("on again", fast: true)
        // Hand-back: the daemons stop, cleanup removes every program; flannel.1 and its routes stay,
        // which is a stock flannel node.
        for node in [a, b] {
            cluster.stopDaemon(node)
            let cleanup = try cluster.runTool(node, ["cleanup", "--keep-kernel-path", "--bpffs", cluster.bpffs(node)])
            #expect(cleanup.status == 0, "\(cleanup.stderr)")
            #expect(try NetnsThread.run(namespace: node.name) { try FlannelBPF.fastEncapInterfaces() }.isEmpty,
                    "cleanup must take the encap off the pods' veths")
        }
        #expect(stream.waitForProgress(bytes: 4 << 20), "after the hand-back: stalled at \(stream.received) bytes: \(stream.failure ?? "")")
        let (received, failure) = stream.stop()
        #expect(failure == nil, "\(failure ?? "")")
        #expect(received > 16 << 20)
        for node in [a, b] {
            let invalid = try cluster.lab.sh(node.name, ["/usr/sbin/iptables", "-w", "5", "-L", "FORWARD", "1", "-v", "-x", "-n"])
            #expect(invalid.split(separator: " ", omittingEmptySubsequences: true).first == "0", "INVALID drops on \(node.name): \(invalid)")
        }
    }

    @Test("with a stock flanneld peer (the kernel vxlan device as flanneld configures it): our side's fast path both ways")
    func withAStockPeer() async throws {
        let cluster = try FlannelCluster(tag: "fps", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let (ours, stock) = (cluster.nodes[0], cluster.nodes[1])
        try cluster.runStockFlannel(on: stock)
        try cluster.startDaemon(ours, extra: ["--ip-masq"])
        let vtep = try cluster.lab.linkMAC(ours.name, "flannel.1")
        try cluster.lab.addFlannelPeerRoutes(on: stock, peer: Peer(subnet: ours.podSubnet, publicIP: ours.nodeIP, vtepMAC: vtep))
        #expect(try waitUntil(5) { try cluster.pinnedPeerSubnets(ours) == [stock.podSubnet] } != nil)
        #expect(try cluster.lab.waitForPing(from: ours.podNamespace, to: stock.podIP, timeout: 5))
        #expect(try waitUntil(5) { try Self.podsKnown(cluster, ours) >= 1 && Self.podsHooked(cluster, ours) >= 1 } != nil)
        for (from, to, port) in [(ours, stock, UInt16(7601)), (stock, ours, 7602)] {
            let before = try FastCounters.read(cluster, ours)
            let ends = try TCPConversation.run(from: from.podNamespace, to: to.podNamespace, connectTo: (to.podIP, port), exchanges: 200)
            #expect(ends.clientAsSeenByServer.0 == from.podIP, "\(ends)")
            let moved = try FastCounters.read(cluster, ours).since(before)
            #expect(moved[.fastEncapOK] >= 190 && moved[.fastDecapOK] >= 190, "\(from.name) → \(to.name): \(moved)")
        }
    }

    @Test("decap mode xdp: what XDP stripped goes from the TC steer straight to the pod")
    func xdpModeSteersToThePod() async throws {
        let cluster = try Self.cluster("fpx", extra: ["--ip-masq", "--dataplane", "xdp"])
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let before = try FastCounters.read(cluster, b)
        _ = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (b.podIP, 7701), exchanges: 200)
        let moved = try FastCounters.read(cluster, b).since(before)
        #expect(moved[.fastDecapOK] >= 190 && moved[.fastEncapOK] >= 190, "b: \(moved)")
    }

    @Test("no connection tracking in the namespace (no --ip-masq, no kube-proxy): everything takes the kernel path and works")
    func withoutConntrackTheKernelPathCarries() async throws {
        let cluster = try Self.cluster("fpc", extra: [])
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let before = try FastCounters.read(cluster, a)
        _ = try TCPConversation.run(from: a.podNamespace, to: b.podNamespace, connectTo: (b.podIP, 7801), exchanges: 100)
        let moved = try FastCounters.read(cluster, a).since(before)
        #expect(moved[.fastEncapOK] == 0 && moved[.fastEncapPassConntrack] >= 100, "\(moved)")
    }
}
