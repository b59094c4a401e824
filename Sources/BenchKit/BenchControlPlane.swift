// BenchControlPlane — how fast N peer leases in a real etcd become BPF map entries, against
// programming the same N peers into the kernel as flannel's vxlan backend does.
//
// Everything goes through the production code, in-process: N leases are written in flannel's JSON
// (LeaseAttributes.json) through the Leases v3 registry; then, timed from the moment they all exist,
// SubnetManager.watchPeers delivers its first snapshot (list + decode), DesiredPeerPolicy turns it
// into peers, and a FlannelDaemon.Reconciler bound to a BPFPeerTable fills fresh pinned maps. The
// kernel comparison is the same desired set through a Reconciler bound to Overlay's
// KernelVXLANPeerTable (neighbour + fdb + onlink route per peer over netlink) on a flannel.1 made by
// FlannelVXLANDevice.ensure, in a namespace of its own.
// Then the watch path: LeaseWatchService and Reconciler.run as the daemon runs them; one lease's
// VtepMAC is rewritten in etcd and the BPF map is polled (sleeping 100 µs between looks) until the entry holds the
// new MAC; p50/p99 over many changes.
//
// RSS here is this process's own VmRSS/VmHWM at each N and its growth over the baseline before the
// first N (the bench holds much more than a daemon would); the daemon binary's own memory and cold
// start are measured separately (BenchDaemon).

import BPFDataplane
import BPFLoader
import CBPF
import Dataplane
import FlannelDaemon
import Glibc
import Leases
import Logging
import NetTypes
import Netlink
import Overlay
import TestSupport

struct ConvergenceResult: Codable, Sendable {
    var peers: Int
    var leaseWriteSeconds: Double
    /// Leases exist → first snapshot decoded (etcd list + JSON decode + validation).
    var listSeconds: Double
    /// Desired set → BPF maps hold all peers (one reconcile pass).
    var bpfReconcileSeconds: Double
    /// Leases exist → BPF maps hold all peers.
    var bpfTotalSeconds: Double
    var bpfEntries: Int
    /// The same desired set → kernel neighbour/fdb/route for every peer (one reconcile pass).
    var kernelReconcileSeconds: Double
    var kernelEntries: Int
    var watchP50Milliseconds: Double?
    var watchP99Milliseconds: Double?
    var watchSamples: Int
    var processRSSKiB: Int?
    var processHWMKiB: Int?
    var rssGrowthKiB: Int?
    var failures: [String]
}

enum ControlPlaneBench {
    static let network = IPv4Subnet(cidr: "10.0.0.0/8")!
    static let ownSubnet = IPv4Subnet(cidr: "10.250.0.0/24")!

    /// The i-th synthetic peer: subnet 10.<1+i/256>.<i%256>.0/24, node 172.16.0.0/12, a unicast MAC.
    static func syntheticLease(_ i: Int) -> (IPv4Subnet, LeaseAttributes) {
        let subnet = IPv4Subnet(address: IPv4Address(10, UInt8(1 + i / 256), UInt8(i % 256), 0), prefixLength: 24)!
        let ip = IPv4Address(172, UInt8(16 + (i >> 16)), UInt8((i >> 8) & 0xff), UInt8(i & 0xff))
        let mac = MACAddress(bytes: [0x0e, 0xfb, 0, UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])
        return (subnet, .vxlan(publicIP: ip, vni: 1, vtepMAC: mac))
    }

    static func now() -> Double { Double(RRSocket.now()) / 1e9 }

    static func run(sizes: [Int], watchChanges: Int, cleanup: BenchCleanup, log: (String) -> Void) async throws -> [ConvergenceResult] {
        var logger = Logger(label: "fxbench.controlplane")
        logger.logLevel = .warning
        let etcd = try await EtcdServer.start(tag: "fxbench")
        cleanup.add(etcd: etcd)
        defer { etcd.cleanup() }
        let prefix = "/coreos.com/network"
        let configJSON = #"{"Network":"\#(network)","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#
        _ = try etcd.etcdctlChecked(api: 3, ["put", prefix + "/config", configJSON])
        let registry = try EtcdRegistryFactory.make(api: .v3, options: EtcdClientOptions(endpoints: [etcd.clientURL], prefix: prefix))
        let config = try await registry.getConfig()

        let mount = "/run/fxbench-\(getpid())-cp-bpffs"
        try BPFFS.ensureMounted(at: mount)
        cleanup.add(bpffs: mount)
        defer { BPFFS.unmount(mount); rmdir(mount) }

        let baseline = ProcessMemory.parse(status: readFile("/proc/self/status"))
        var results: [ConvergenceResult] = []
        var written = 0
        for n in sizes.sorted() {
            try cleanup.checkInterrupted()
            var failures: [String] = []
            // Grow the lease set to n (sizes ascend; the earlier leases stay).
            let w0 = now()
            try await writeLeases(registry, from: written, to: n)
            let writeSeconds = now() - w0
            written = n
            log("control plane: \(n) leases written in \(BenchFormat.number(writeSeconds)) s")

            // Fresh maps for every n.
            try FlannelBPF.removePins(bpffs: mount)
            let bpf = try FlannelBPF(bpffs: mount, logger: logger)
            let table = try bpf.peerTable()
            let reconciler = Reconciler(tables: [PeerTableBinding(table, selects: { !$0.direct })], logger: logger)
            let policy = DesiredPeerPolicy(ownSubnet: ownSubnet, backend: .vxlan(directRouting: false), underlaySubnet: nil)

            let t0 = now()
            let manager = SubnetManager(registry: registry, logger: logger)
            let events = PeerEventCursor(manager.watchPeers(config: config))
            let snapshot = try await Startup.firstSnapshot(events)
            let t1 = now()
            let (peers, skipped) = policy.peers(from: snapshot.map(RemoteLease.init))
            await reconciler.setDesired(peers)
            let report = await reconciler.reconcile()
            let t2 = now()
            if !report.succeeded { failures.append("bpf reconcile: \(report)") }
            if !skipped.isEmpty { failures.append("\(skipped.count) leases skipped, e.g. \(skipped[0].reason)") }
            let bpfEntries = try table.currentPeers().count
            let memory = ProcessMemory.parse(status: readFile("/proc/self/status"))

            // Kernel: the same peers as flannel's vxlan backend programs them.
            let (kernelSeconds, kernelEntries, kernelFailure) = try await kernelConvergence(peers, cleanup: cleanup, logger: logger)
            if let kernelFailure { failures.append(kernelFailure) }

            // Watch: one lease change in etcd → the map entry changes.
            var latencies: [Double] = []
            if watchChanges > 0 {
                let watch = LeaseWatchService(events: events, policy: policy, reconciler: reconciler, logger: logger)
                let watchTask = Task { try? await watch.run() }
                let loopTask = Task { await reconciler.run(interval: .seconds(60)) }
                do {
                    latencies = try await watchLatencies(registry, bpf: bpf, peers: n, changes: watchChanges)
                } catch {
                    failures.append("watch: \(error)")
                }
                watchTask.cancel()
                loopTask.cancel()
                _ = await watchTask.value
                _ = await loopTask.value
            }
            let result = ConvergenceResult(
                peers: n, leaseWriteSeconds: writeSeconds, listSeconds: t1 - t0, bpfReconcileSeconds: t2 - t1,
                bpfTotalSeconds: t2 - t0, bpfEntries: bpfEntries, kernelReconcileSeconds: kernelSeconds, kernelEntries: kernelEntries,
                watchP50Milliseconds: latencies.isEmpty ? nil : BenchMath.percentile(latencies, 50),
                watchP99Milliseconds: latencies.isEmpty ? nil : BenchMath.percentile(latencies, 99),
                watchSamples: latencies.count, processRSSKiB: memory?.rssKiB, processHWMKiB: memory?.hwmKiB,
                rssGrowthKiB: memory.flatMap { m in baseline.map { m.rssKiB - $0.rssKiB } }, failures: failures)
            log("control plane: \(n) peers: BPF \(BenchFormat.number(result.bpfTotalSeconds * 1000, 1)) ms, "
                + "netlink \(BenchFormat.number(kernelSeconds * 1000, 1)) ms, watch p50 \(BenchFormat.number(result.watchP50Milliseconds, 2)) ms")
            results.append(result)
        }
        return results
    }

    /// Creates leases from..<to with 32 writes in flight (flanneld's 24 h TTL).
    static func writeLeases(_ registry: any SubnetRegistry, from: Int, to: Int) async throws {
        guard to > from else { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = from
            func addOne() {
                let i = next
                next += 1
                group.addTask {
                    let (subnet, attributes) = syntheticLease(i)
                    _ = try await registry.createLease(name: subnet.leaseKey, value: attributes.json, ttl: .seconds(86400))
                }
            }
            for _ in 0..<min(32, to - from) { addOne() }
            while try await group.next() != nil {
                if next < to { addOne() }
            }
        }
    }

    /// A flannel.1 in a namespace of its own, then one reconcile pass of `peers` into the kernel.
    static func kernelConvergence(_ peers: Set<Peer>, cleanup: BenchCleanup, logger: Logger) async throws -> (Double, Int, String?) {
        let lab = try NetnsLab(tag: "bench")
        cleanup.add(lab: lab)
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        let nsPath = "/run/netns/\(node.name)"
        var nl = try NetlinkSocket(networkNamespace: nsPath)
        guard let eth0 = try nl.link(named: node.underlayIfname) else {
            return (0, 0, "kernel: no \(node.underlayIfname) in \(node.name)")
        }
        let device = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index, subnet: ownSubnet,
                                                   network: network, netlink: &nl, logger: logger)
        let table = try KernelVXLANPeerTable(device: device, network: network, networkNamespace: nsPath, logger: logger)
        let reconciler = Reconciler(tables: [PeerTableBinding(table)], logger: logger)
        await reconciler.setDesired(peers)
        let t0 = now()
        let report = await reconciler.reconcile()
        let seconds = now() - t0
        let entries = try table.currentPeers().count
        return (seconds, entries, report.succeeded ? nil : "kernel reconcile: \(String(describing: report).prefix(300))")
    }

    /// Rewrites one lease's VtepMAC `changes` times (cycling over the first leases) and waits for
    /// the BPF entry to follow; returns milliseconds per change.
    static func watchLatencies(_ registry: any SubnetRegistry, bpf: FlannelBPF, peers: Int, changes: Int) async throws -> [Double] {
        var latencies: [Double] = []
        for c in 0..<changes {
            let i = (c * 7919) % peers
            let (subnet, attributes) = syntheticLease(i)
            guard let record = try await registry.getLease(name: subnet.leaseKey) else {
                throw LabError(command: [], message: "lease \(subnet.leaseKey) vanished")
            }
            var changed = attributes
            let newMAC = MACAddress(bytes: [0x0e, 0xfc, UInt8(c & 0xff), UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])
            changed.vtepMAC = newMAC
            var key = fxdp_peer_key()
            key.prefixlen = UInt32(subnet.prefixLength)
            key.subnet = subnet.address.tuple
            let t0 = now()
            _ = try await registry.updateLease(name: subnet.leaseKey, value: changed.json, ttl: .seconds(86400),
                                               expectedRevision: record.revision)
            var seen = false
            while now() - t0 < 10 {
                if let v = try bpf.peers.lookup(key), MACAddress(tuple: v.vtep_mac) == newMAC { seen = true; break }
                try await Task.sleep(for: .microseconds(100))
            }
            guard seen else { throw LabError(command: [], message: "the BPF entry for \(subnet) did not change within 10 s") }
            latencies.append((now() - t0) * 1000)
        }
        return latencies
    }
}

extension GatewayConnection {
    /// Writes the synthetic peers `indices` (`ControlPlaneBench.syntheticLease`) as flannel leases
    /// of `cluster` in one batch: the benches that run the daemon binary start it against these.
    func putSyntheticLeases(_ indices: Range<Int>, of cluster: FlannelCluster, lease: String) throws {
        try putAll(indices.map { i in
            let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
            return (cluster.leaseKey(subnet), attributes.json)
        }, lease: lease)
    }
}
