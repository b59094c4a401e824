// The operations side through real daemons (root, netns, etcd): `status`, `peers`, `stats` against
// a running and then a stopped daemon, /metrics on --metrics-port, --ip-masq installed by the daemon
// (an outside namespace sees the node's address), recreated after removal, and `cleanup`.

import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

@Suite("Operations: through real daemons (root, netns, etcd)", .serialized,
       .needsRoot, .ownThreads)
struct OperationsClusterTests {
    @Test("status/peers/stats/metrics on a running and a stopped daemon; --ip-masq kept and cleaned up")
    func operateACluster() async throws {
        let cluster = try FlannelCluster(tag: "opc", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let (n1, n2) = (cluster.nodes[0], cluster.nodes[1])
        let lab = cluster.lab
        // An outside namespace behind node 1.
        let outside = lab.name("out")
        try lab.addNamespace(outside)
        try lab.sh(n1.name, ["link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", outside])
        try lab.sh(n1.name, ["addr", "add", "203.0.113.1/24", "dev", "vo"])
        try lab.sh(n1.name, ["link", "set", "vo", "up"])
        try lab.sh(outside, ["addr", "add", "203.0.113.2/24", "dev", "eth0"])
        try lab.sh(outside, ["link", "set", "eth0", "up"])

        let metricsPort = 9472
        try cluster.startDaemon(n1, extra: ["--ip-masq", "--metrics-port=\(metricsPort)", "--metrics-per-peer"])
        try cluster.startDaemon(n2)
        let converged = try waitUntil(5) { try cluster.pinnedPeerSubnets(n1) == [n2.podSubnet] }
        #expect(converged != nil)
        #expect(try lab.waitForPing(from: n1.podNamespace, to: n2.podIP, timeout: 5))
        let ping = try lab.ping(from: n1.podNamespace, to: n2.podIP, count: 3, interval: 0.05)
        #expect(ping.received >= ping.sent - 1, "\(ping)")

        let bpffs = cluster.bpffs(n1)
        let status = try cluster.runTool(n1, ["status", "--bpffs", bpffs, "--subnet-file", cluster.subnetFile(n1)])
        #expect(status.status == 0)
        #expect(status.stdout.contains("daemon:     running, pid "), "\(status.stdout)")
        #expect(status.stdout.contains("ready:      yes\n"), "\(status.stdout)")
        #expect(status.stdout.contains("subnet:     \(n1.podSubnet)"))
        #expect(status.stdout.contains("interface:  eth0 "))
        #expect(status.stdout.contains("etcd:       connected (API v3"))
        #expect(status.stdout.contains("lease:      expires "))
        #expect(status.stdout.contains("masquerade: on: nftables table ip flanneld-xdp, 6 rules"))
        #expect(status.stdout.contains("forward:    on: iptables filter FORWARD jumps to FLANNEL-FWD"), "\(status.stdout)")
        #expect(status.stdout.contains("etcd API:   given by --etcd-api"), "\(status.stdout)")
        #expect(status.stdout.contains("fxdp_encap id "))
        #expect(status.stdout.contains("data path:  bpf-"))

        let peers = try cluster.runTool(n1, ["peers", "--bpffs", bpffs, "--json"])
        #expect(peers.stdout.contains(#"{"subnet":"\#(n2.podSubnet)","nodeIP":"\#(n2.nodeIP)""#), "\(peers.stdout)")
        // The pings went through BPF both ways: node 2 has per-peer traffic in both directions.
        #expect(!peers.stdout.contains(#""txPackets":0,"#) && !peers.stdout.contains(#""rxPackets":0,"#) && peers.stdout.contains(#""perPeerCounters":true"#),
                "\(peers.stdout)")
        let stats = try cluster.runTool(n1, ["stats", "--bpffs", bpffs])
        #expect(stats.stdout.contains("encap_ok"))

        // FXOPS_DOC_OUTPUT=<file>: keep the real outputs (docs/OPERATIONS.md quotes them).
        if let path = getenv("FXOPS_DOC_OUTPUT").map({ String(cString: $0) }), let file = fopen(path, "w") {
            sleep(6) // one state refresh after the peer joined
            let fresh = try cluster.runTool(n1, ["status", "--bpffs", bpffs, "--subnet-file", cluster.subnetFile(n1)])
            fputs("$ flanneld-xdp status\n\(fresh.stdout)\n$ flanneld-xdp peers\n", file)
            fputs(try cluster.runTool(n1, ["peers", "--bpffs", bpffs]).stdout, file)
            fputs("\n$ flanneld-xdp stats\n" + stats.stdout, file)
            fclose(file)
        }

        // /metrics from the same small server as /healthz, on its own port.
        let script = "exec 3<>/dev/tcp/127.0.0.1/\(metricsPort) && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        let metrics = try lab.sh(n1.name, ["/bin/bash", "-c", script])
        #expect(metrics.hasPrefix("HTTP/1.0 200") || metrics.hasPrefix("HTTP/1.1 200"), "\(metrics.prefix(200))")
        #expect(metrics.contains("flanneld_xdp_info{"))
        #expect(metrics.contains(#"flanneld_xdp_bpf_packets_total{reason="encap_ok",verdict="ok"}"#))
        #expect(metrics.contains("\nprocess_resident_memory_bytes ") && metrics.contains("\nprocess_start_time_seconds "))
        // Every pass counted: the start-up fill and the pass of node 2's arrival at least.
        let passes = metrics.split(separator: "\n").first { $0.hasPrefix("flanneld_xdp_reconcile_passes_total ") }
            .flatMap { Int($0.split(separator: " ")[1]) } ?? 0
        #expect(passes >= 2 && metrics.contains("flanneld_xdp_reconcile_duration_seconds_count \(passes)\n"), "\(metrics)")
        #expect(metrics.contains("flanneld_xdp_encap_packets_total"))
        #expect(metrics.contains(#"flanneld_xdp_drops_total{reason="decap_drop_not_peer"}"#))
        #expect(metrics.contains(#"flanneld_xdp_peer_packets_total{peer="\#(n2.nodeIP)",direction="tx"}"#))
        #expect(metrics.contains(#"flanneld_xdp_peer_bytes_total{peer="\#(n2.nodeIP)",direction="rx"}"#))

        // Masquerade by the daemon: outside sees node 1's address, pod 2 sees pod 1's.
        let port: UInt16 = 48_000 + UInt16(getpid() % 1000)
        let outsideReceiver = try opsUDPSocket(in: outside, bindTo: IPv4Address(203, 0, 113, 2), port: port)
        let pod2Receiver = try opsUDPSocket(in: n2.podNamespace, bindTo: n2.podIP, port: port)
        let pod1Sender = try opsUDPSocket(in: n1.podNamespace, bindTo: nil, port: 0)
        defer { [outsideReceiver, pod2Receiver, pod1Sender].forEach { close($0) } }
        #expect(opsSourceSeen(sender: pod1Sender, receiver: outsideReceiver, to: IPv4Address(203, 0, 113, 2), port: port)
                == IPv4Address(203, 0, 113, 1))
        #expect(opsSourceSeen(sender: pod1Sender, receiver: pod2Receiver, to: n2.podIP, port: port) == n1.podIP)
        #expect(readFile(cluster.subnetFile(n1)).contains("FLANNEL_IPMASQ=true"))

        // Removed by someone: back within the daemon's check interval (10 s).
        try lab.sh(n1.name, ["/usr/sbin/nft", "delete", "table", "ip", "flanneld-xdp"])
        let back = try waitUntil(15) { try lab.run(n1.name, ["/usr/sbin/nft", "list", "table", "ip", "flanneld-xdp"]).status == 0 }
        #expect(back != nil, "masquerade table not recreated; log:\n\(cluster.daemonLog(n1).suffix(2000))")

        // Stopped: status says so and still shows the kernel side; peers still read the pins.
        cluster.stopDaemon(n1)
        let after = try cluster.runTool(n1, ["status", "--bpffs", bpffs, "--subnet-file", cluster.subnetFile(n1)])
        #expect(after.stdout.contains("NOT running"), "\(after.stdout)")
        #expect(after.status == 3, "status of a stopped daemon exits 3")
        #expect(after.stdout.contains("fxdp_encap id "))
        let peersAfter = try cluster.runTool(n1, ["peers", "--bpffs", bpffs])
        #expect(peersAfter.stdout.contains("\(n2.podSubnet)"))

        // cleanup removes the table with the rest.
        let cleanup = try cluster.runTool(n1, ["cleanup", "--bpffs", bpffs])
        #expect(cleanup.status == 0, "\(cleanup.stdout)\(cleanup.stderr)")
        #expect(try lab.run(n1.name, ["/usr/sbin/nft", "list", "table", "ip", "flanneld-xdp"]).status != 0)
        let gone = try cluster.runTool(n1, ["peers", "--bpffs", bpffs])
        #expect(gone.status != 0)
    }
}
