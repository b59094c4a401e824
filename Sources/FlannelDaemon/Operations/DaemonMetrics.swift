// Prometheus metrics for --metrics-port: swift-metrics' API for what the daemon measures itself
// (reconcile passes and their duration, lease and etcd events), swift-prometheus as the backend and
// the text exposition, served by the same small NIO server as /healthz (HealthServer, on its own
// port). The factory is passed explicitly, never bootstrapped globally: tests run several daemons'
// worth of metrics in one process.
//
// The BPF counters are absolute values in a per-CPU map that outlives the daemon; Prometheus
// counters only go up from zero in this process. Each scrape reads the map and adds the difference
// since the previous read (a map that went backwards — recreated by `cleanup` and a restart, or
// reset — counts on from its new value, which Prometheus' rate() treats as a counter reset).
// Per-peer series (fxdp_peer_stats_v2, --metrics-per-peer only) follow the peers: a node that left
// has its series removed. They are off by default: 4 series per peer node (packets and bytes, tx and
// rx), so 20 000 series on every node of a 5000-node cluster.
//
// Every reconcile pass is observed (Reconciler.observePasses): the duration histogram, the pass and
// failure counters count each pass, not a sample per refresh. The process_* series (ProcessMetrics)
// and the userspace path's counters are appended to the exposition as text.

import CoreMetrics
import Dataplane
import Leases
import NetTypes
import Prometheus
import Synchronization

public final class DaemonMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    let bpffs: String?
    /// --metrics-per-peer: export the per-peer series.
    let perPeer: Bool
    /// More exposition text, appended as is (the userspace path's own counters).
    let appended: (@Sendable () -> String)?

    // Measured by the daemon (swift-metrics API).
    let reconcilePasses: CoreMetrics.Counter
    let reconcileFailures: CoreMetrics.Counter
    let reconcileDuration: CoreMetrics.Timer
    let peers: CoreMetrics.Gauge
    /// The IPv6 peers the leases want (dual-stack and IPv6-only networks).
    let ipv6Peers: CoreMetrics.Gauge
    let leaseExpiry: CoreMetrics.Gauge
    let etcdUp: CoreMetrics.Gauge

    // Mirrored from LeaseCounters (absolute values turned into increments).
    let leaseCounterSeries: [(LeaseCounterField, CoreMetrics.Counter)]

    private struct Seen {
        var bpf: [BPFCounter: PacketCount] = [:]
        var peers: [String: PeerTraffic] = [:]
        var peerSeries: [String: [Prometheus.Counter]] = [:]
        var lease: [Int] = []
    }
    private let seen = Mutex(Seen())

    public init(bpffs: String?, dataplane: String, backend: String, perPeer: Bool = false,
                appended: (@Sendable () -> String)? = nil) {
        self.appended = appended
        self.perPeer = perPeer
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets["flanneld_xdp_reconcile_duration_seconds"] =
            [.microseconds(100), .milliseconds(1), .milliseconds(5), .milliseconds(25), .milliseconds(100),
             .milliseconds(500), .seconds(2), .seconds(10)]
        self.registry = registry
        self.factory = factory
        self.bpffs = bpffs
        reconcilePasses = CoreMetrics.Counter(label: "flanneld_xdp_reconcile_passes_total", factory: factory)
        reconcileFailures = CoreMetrics.Counter(label: "flanneld_xdp_reconcile_failed_passes_total", factory: factory)
        reconcileDuration = CoreMetrics.Timer(label: "flanneld_xdp_reconcile_duration_seconds", factory: factory)
        peers = CoreMetrics.Gauge(label: "flanneld_xdp_peers", factory: factory)
        ipv6Peers = CoreMetrics.Gauge(label: "flanneld_xdp_ipv6_peers", factory: factory)
        leaseExpiry = CoreMetrics.Gauge(label: "flanneld_xdp_lease_expiry_timestamp_seconds", factory: factory)
        etcdUp = CoreMetrics.Gauge(label: "flanneld_xdp_etcd_up", factory: factory)
        leaseCounterSeries = [
            (.watchReconnects, CoreMetrics.Counter(label: "flanneld_xdp_etcd_watch_reconnects_total", factory: factory)),
            (.historyRelists, CoreMetrics.Counter(label: "flanneld_xdp_etcd_history_relists_total", factory: factory)),
            (.endpointFailovers, CoreMetrics.Counter(label: "flanneld_xdp_etcd_endpoint_failovers_total", factory: factory)),
            (.renewals, CoreMetrics.Counter(label: "flanneld_xdp_lease_renewals_total", factory: factory)),
            (.renewalFailures, CoreMetrics.Counter(label: "flanneld_xdp_lease_renewal_failures_total", factory: factory)),
            (.rejectedTotal, CoreMetrics.Counter(label: "flanneld_xdp_leases_rejected_total", factory: factory)),
        ]
        registry.gauge("flanneld_xdp_info",
                           labels: [("version", FlannelDaemonVersion.string), ("dataplane", dataplane), ("backend", backend)],
                           help: "Constant 1; the labels say which data path and backend this daemon runs.").set(Int64(1))
    }

    /// Records one reconcile pass (every pass: Reconciler.observePasses calls this).
    public func observePass(_ report: ReconcileReport) {
        reconcilePasses.increment()
        if !report.succeeded { reconcileFailures.increment() }
        let d = report.duration.components
        reconcileDuration.recordNanoseconds(d.seconds * 1_000_000_000 + d.attoseconds / 1_000_000_000)
        peers.record(report.desiredCount)
    }

    /// Records one IPv6 reconcile pass: the pass counters count it too (failures make the node unready alike).
    public func observeIPv6Pass(_ report: IPv6ReconcileReport) {
        reconcilePasses.increment()
        if !report.succeeded { reconcileFailures.increment() }
        ipv6Peers.record(report.desiredCount)
    }

    /// The peers the leases want now (between passes, from the state refresh).
    public func observeDesiredPeers(_ count: Int) {
        peers.record(count)
    }

    public func observeLease(expiryUnixSeconds: Int64, etcdReachable: Bool) {
        leaseExpiry.record(Double(expiryUnixSeconds))
        etcdUp.record(etcdReachable ? 1 : 0)
    }

    public func observeLeaseCounters(_ snapshot: LeaseCounters.Snapshot) {
        let values = leaseCounterSeries.map { $0.0.value(in: snapshot) }
        let deltas = seen.withLock { s -> [Int] in
            let previous = s.lease.isEmpty ? Array(repeating: 0, count: values.count) : s.lease
            s.lease = values
            return zip(values, previous).map { max(0, $0 - $1) }
        }
        for (delta, series) in zip(deltas, leaseCounterSeries) where delta > 0 {
            series.1.increment(by: delta)
        }
    }

    /// Reads the pinned counters and adds what changed since the last read.
    func refreshBPFCounters() {
        guard let bpffs, let pinned = PinnedDataplane.shared(bpffs: bpffs),
              let values = try? pinned.counterValues() else { return }
        let deltas = seen.withLock { s -> [(BPFCounter, UInt64, UInt64)] in
            var result: [(BPFCounter, UInt64, UInt64)] = []
            for (counter, count) in values {
                let before = s.bpf[counter] ?? PacketCount()
                // A map that went backwards was recreated or reset: count from its new value.
                let reset = count.packets < before.packets || count.bytes < before.bytes
                let dp = reset ? count.packets : count.packets - before.packets
                let db = reset ? count.bytes : count.bytes - before.bytes
                s.bpf[counter] = count
                result.append((counter, dp, db))
            }
            return result
        }
        for (counter, dp, db) in deltas {
            let labels = [("reason", counter.name), ("verdict", counter.verdict.rawValue)]
            let packets = registry.counter("flanneld_xdp_bpf_packets_total", labels: labels,
                                               help: "Packets the BPF programs saw, by verdict (ok, pass, drop) and its reason (the fxdp_counter code name).")
            let bytes = registry.counter("flanneld_xdp_bpf_bytes_total", labels: labels,
                                             help: "Bytes the BPF programs saw, by verdict and reason.")
            packets.increment(by: Int64(clamping: dp))
            bytes.increment(by: Int64(clamping: db))
            if counter.isDrop {
                registry.counter("flanneld_xdp_drops_total", labels: [("reason", counter.name)],
                                     help: "Packets the BPF programs dropped, by reason.").increment(by: Int64(clamping: dp))
            }
            if counter.isEncapsulated {
                registry.counter("flanneld_xdp_encap_packets_total", help: "Packets encapsulated by BPF.")
                    .increment(by: Int64(clamping: dp))
            }
            if counter.isDecapAccepted {
                registry.counter("flanneld_xdp_decap_packets_total",
                                     help: "VXLAN packets from peers decapsulated by XDP or accepted for kernel decap.")
                    .increment(by: Int64(clamping: dp))
            }
        }
    }

    /// The help of the per-peer series: says what they cost.
    static let perPeerHelp = "(--metrics-per-peer; with the bytes series that is 4 series per peer node: 20 000 on each node of a 5000-node cluster)"

    /// Per-peer series from fxdp_peer_stats_v2 (--metrics-per-peer); a departed peer's series are removed.
    func refreshPeerCounters() {
        guard perPeer, let bpffs, let pinned = PinnedDataplane.shared(bpffs: bpffs),
              let traffic = (try? pinned.peerTraffic()) ?? nil else { return }
        let current = Dictionary(uniqueKeysWithValues: traffic.map { ("\($0.key)", $0.value) })
        let (increments, departed) = seen.withLock { s -> ([(String, PeerTraffic)], [Prometheus.Counter]) in
            var increments: [(String, PeerTraffic)] = []
            for (peer, now) in current {
                increments.append((peer, now.since(s.peers[peer] ?? .zero)))
                s.peers[peer] = now
            }
            var departed: [Prometheus.Counter] = []
            for peer in s.peers.keys where current[peer] == nil {
                s.peers[peer] = nil
                departed += s.peerSeries.removeValue(forKey: peer) ?? []
            }
            return (increments, departed)
        }
        for counter in departed { registry.unregisterCounter(counter) }
        for (peer, d) in increments {
            let txP = registry.counter("flanneld_xdp_peer_packets_total", labels: [("peer", peer), ("direction", "tx")],
                                           help: "Packets BPF carried to (tx, encapsulated) and from (rx, decapsulated or accepted) each peer node \(Self.perPeerHelp).")
            let rxP = registry.counter("flanneld_xdp_peer_packets_total", labels: [("peer", peer), ("direction", "rx")],
                                           help: "Packets BPF carried to (tx, encapsulated) and from (rx, decapsulated or accepted) each peer node \(Self.perPeerHelp).")
            let txB = registry.counter("flanneld_xdp_peer_bytes_total", labels: [("peer", peer), ("direction", "tx")],
                                           help: "Bytes BPF carried to (tx, inner) and from (rx, outer) each peer node \(Self.perPeerHelp).")
            let rxB = registry.counter("flanneld_xdp_peer_bytes_total", labels: [("peer", peer), ("direction", "rx")],
                                           help: "Bytes BPF carried to (tx, inner) and from (rx, outer) each peer node \(Self.perPeerHelp).")
            txP.increment(by: Int64(clamping: d.txPackets))
            rxP.increment(by: Int64(clamping: d.rxPackets))
            txB.increment(by: Int64(clamping: d.txBytes))
            rxB.increment(by: Int64(clamping: d.rxBytes))
            seen.withLock { $0.peerSeries[peer] = [txP, rxP, txB, rxB] }
        }
    }

    /// The /metrics body.
    public func render() -> String {
        refreshBPFCounters()
        refreshPeerCounters()
        return registry.emitToString() + ProcessMetrics.read().prometheusText() + (appended?() ?? "")
    }
}

/// The LeaseCounters fields exported as counters.
enum LeaseCounterField: Sendable {
    case watchReconnects, historyRelists, endpointFailovers, renewals, renewalFailures, rejectedTotal

    func value(in s: LeaseCounters.Snapshot) -> Int {
        switch self {
        case .watchReconnects: s.watchReconnects
        case .historyRelists: s.historyRelists
        case .endpointFailovers: s.endpointFailovers
        case .renewals: s.renewals
        case .renewalFailures: s.renewalFailures
        case .rejectedTotal: s.rejectedTotal
        }
    }
}

extension PrometheusCollectorRegistry {
    // Our metric names are written whole (`flanneld_xdp_..._total`), so the descriptor carries them
    // as one component with no separate unit.
    func counter(_ name: String, labels: [(String, String)] = [], help: String) -> Prometheus.Counter {
        makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }

    func gauge(_ name: String, labels: [(String, String)] = [], help: String) -> Prometheus.Gauge {
        makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
    }
}
