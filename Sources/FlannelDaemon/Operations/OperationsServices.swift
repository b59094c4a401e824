// What the operations side adds to a running daemon, in one call from Daemon.start (so the daemon's
// own files change by two lines): the state file `status` reads, the host rules (masquerade for
// --ip-masq, the FORWARD accepts, the blackhole route: HostRules.swift), and the metrics server
// (--metrics-port). `make` does the first write and the first host-rules pass synchronously, before
// subnet.env and READY=1: a pod that starts right after READY already has its traffic forwarded
// and masqueraded, and `status` works from the first moment.

import Dataplane
import Glibc
import Leases
import Logging
import NetTypes
import ServiceLifecycle
import Synchronization

/// The daemon's values the operations services read; gathered by Daemon.start.
public struct OperationsContext: Sendable {
    public var options: FlannelOptions
    public var external: ExternalInterface
    public var config: NetworkConfig
    public var backend: BackendKind
    public var lease: Lease
    public var manager: SubnetManager
    public var dataplane: ActiveDataPath
    public var dataplaneSummary: String
    public var mtu: Int
    public var reconciler: Reconciler
    public var readiness: Readiness
    /// How the etcd API was chosen (--etcd-api, what auto found, or the last known state's).
    public var etcdAPIDetail: String
    /// The data path's own metrics text, appended to /metrics (the userspace path's counters).
    public var dataplaneMetrics: (@Sendable () -> String)?
    /// The IPv6 peers' reconciler in a dual-stack or IPv6-only network.
    public var ipv6Reconciler: IPv6Reconciler?

    public init(options: FlannelOptions, external: ExternalInterface, config: NetworkConfig, backend: BackendKind,
                lease: Lease, manager: SubnetManager, dataplane: ActiveDataPath, dataplaneSummary: String, mtu: Int, reconciler: Reconciler,
                readiness: Readiness, etcdAPIDetail: String = "", dataplaneMetrics: (@Sendable () -> String)? = nil,
                ipv6Reconciler: IPv6Reconciler? = nil) {
        self.ipv6Reconciler = ipv6Reconciler
        self.etcdAPIDetail = etcdAPIDetail
        self.dataplaneMetrics = dataplaneMetrics
        self.options = options
        self.external = external
        self.config = config
        self.backend = backend
        self.lease = lease
        self.manager = manager
        self.dataplane = dataplane
        self.dataplaneSummary = dataplaneSummary
        self.mtu = mtu
        self.reconciler = reconciler
        self.readiness = readiness
    }
}

public enum OperationsServices {
    /// Writes the first state file, installs masquerade if asked, and returns the services that
    /// keep them (and /metrics) up to date.
    public static func make(_ context: OperationsContext, logger: Logger) async throws -> [any Service] {
        let options = context.options
        let statePath = NodeState.path(forSubnetFile: options.subnet.subnetFile)
        let now = TimeText.now()
        var state = NodeState()
        state.startedAt = now
        state.updatedAt = now
        state.dataplane = context.dataplane.kind
        state.dataplaneDetail = context.dataplaneSummary
        state.interface = context.external.interface.name
        state.interfaceIndex = Int(context.external.interface.index)
        state.publicIP = "\(context.external.publicIP)"
        state.network = "\(context.config.network)"
        state.subnet = "\(context.lease.subnet)"
        state.backend = "\(context.backend)"
        state.vni = Int(context.config.backend.vni)
        state.port = Int(context.config.backend.port)
        state.mtu = context.mtu
        state.bpffs = options.dataplane.bpffs
        state.ipMasq = options.subnet.ipMasq
        state.etcdEndpoints = options.etcd.endpointList.joined(separator: ",")
        state.etcdAPI = context.manager.registry.apiVersion.rawValue
        state.etcdAPIDetail = context.etcdAPIDetail
        state.forwardRules = options.hostRules.iptablesForwardRules
        state.ipMasqFullyRandom = !options.hostRules.ipMasqFullyRandomDisable
        state.blackholeRoute = options.hostRules.ipBlackholeRoute
        state.warnings = context.config.warnings.joined(separator: "\n")
        // A degraded boot (LastKnownState.swift) has not reached etcd yet.
        let degraded = context.readiness.unmet(.leaseConfirmed)
        state.etcdState = degraded ?? "connected"
        state.etcdLastContact = degraded == nil ? now : 0
        state.leaseExpiry = context.lease.isReservation ? 0 : now + context.manager.options.leaseTTL.components.seconds
        state.peerCount = await context.reconciler.desiredCount
        state.underlaySubnet = "\(context.external.underlaySubnet)"
        if let v6 = context.config.ipv6 {
            state.ipv6Network = "\(v6.network)"
            state.ipv6Subnet = context.lease.ipv6Subnet.map { "\($0)" } ?? ""
            state.publicIPv6 = context.external.publicIPv6.map { "\($0)" } ?? ""
            state.ipv6PeerCount = await context.ipv6Reconciler?.desiredCount ?? 0
        }
        let writer = NodeStateWriter(state: state, path: statePath, logger: logger)
        // Written now (not ready yet: subnet.env comes after) and again whenever readiness changes,
        // before /readyz answers differently: `status` says "ready" as soon as /readyz does.
        context.readiness.observe { reason in
            writer.update { state in
                state.ready = reason == nil
                state.notReadyReason = reason ?? ""
            }
        }
        // The peer count as soon as a pass changes it (not only at the 5 s refresh).
        await context.reconciler.observePasses { report in
            if writer.state.peerCount != report.desiredCount { writer.update { $0.peerCount = report.desiredCount } }
        }
        await context.ipv6Reconciler?.observePasses { report in
            if writer.state.ipv6PeerCount != report.desiredCount { writer.update { $0.ipv6PeerCount = report.desiredCount } }
        }

        var services: [any Service] = []
        var plan = HostRulesPlan(network: context.config.network, subnet: context.lease.subnet, options: options)
        plan.ipv4 = context.config.enableIPv4
        if let v6 = context.config.ipv6, let subnet6 = context.lease.ipv6Subnet { (plan.ipv6Network, plan.ipv6Subnet) = (v6.network, subnet6) }
        try HostRules.setUp(plan, logger: logger)
        if !plan.isEmpty { services.append(HostRulesService(plan: plan, logger: logger)) }
        var metrics: DaemonMetrics?
        let port = options.serving.metricsPort
        if port != 0 {
            if port == options.serving.healthzPort {
                logger.error("--metrics-port \(port) is the --healthz-port: give the metrics their own port; /metrics is off")
            } else {
                let m = DaemonMetrics(bpffs: context.dataplane.usesBPF ? options.dataplane.bpffs : nil,
                                      dataplane: state.dataplane, backend: state.backend,
                                      perPeer: options.serving.metricsPerPeer, appended: context.dataplaneMetrics)
                metrics = m
                await context.reconciler.observePasses { m.observePass($0) }
                await context.ipv6Reconciler?.observePasses { m.observeIPv6Pass($0) }
                services.append(HealthServer(host: options.serving.healthzIP.description, port: port,
                                             readiness: context.readiness, metrics: { m.render() }, logger: logger))
            }
        }
        services.append(NodeStateService(writer: writer, context: context, metrics: metrics, logger: logger))
        return services
    }
}

/// The state file and the one copy of what it holds; every change is written at once (atomically).
final class NodeStateWriter: Sendable {
    let path: String
    let logger: Logger
    private struct Held {
        var state: NodeState
        var writeFailed = false
    }
    private let held: Mutex<Held>

    init(state: NodeState, path: String, logger: Logger) {
        self.path = path
        self.logger = logger
        held = Mutex(Held(state: state))
    }

    var state: NodeState { held.withLock { $0.state } }

    /// Changes the state and writes the file; a failed write is logged once until one succeeds
    /// (`status` loses its daemon half; traffic does not depend on it).
    func update(_ change: (inout NodeState) -> Void) {
        held.withLock { held in
            change(&held.state)
            held.state.updatedAt = TimeText.now()
            do {
                try held.state.write(to: path)
                held.writeFailed = false
            } catch {
                if !held.writeFailed { logger.warning("cannot write the state file for `flanneld-xdp status`: \(error)") }
                held.writeFailed = true
            }
        }
    }
}

/// Refreshes the state file and the daemon-side metrics every `interval` (5 s); checks etcd every
/// `etcdCheckEvery` refreshes (30 s) with one read of our own lease key (cheap, and it proves both that
/// etcd answers and that the lease is still ours).
struct NodeStateService: Service {
    let writer: NodeStateWriter
    let context: OperationsContext
    let metrics: DaemonMetrics?
    let logger: Logger
    var interval: Duration = .seconds(5)
    var etcdCheckEvery = 6

    func run() async throws {
        // A local copy of the fields this loop owns; readiness is the observer's (see make).
        var state = writer.state
        var round = 0
        var lastRevision = context.lease.revision
        var loggedStrangers: Set<IPv4Address> = []
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            round += 1
            let now = TimeText.now()
            // A renewal changes our lease's revision: the TTL restarted then (within one interval).
            if let own = await context.manager.ownLease, own.revision != lastRevision {
                lastRevision = own.revision
                state.leaseExpiry = own.isReservation ? 0 : now + context.manager.options.leaseTTL.components.seconds
            }
            if round % etcdCheckEvery == 0 {
                do {
                    _ = try await context.manager.registry.getLease(name: context.lease.key)
                    state.etcdState = "connected"
                    state.etcdLastContact = now
                } catch {
                    state.etcdState = "unreachable: \(error)"
                }
            }
            if let degraded = context.readiness.unmet(.leaseConfirmed) { state.etcdState = degraded }
            // The programs only add per-peer entries; departed nodes' go here.
            if context.dataplane.usesBPF, let pinned = PinnedDataplane.shared(bpffs: state.bpffs) {
                let strangers = await pinned.housekeeping()
                let warning = Stranger.underlayWarning(strangers, underlay: context.external.underlaySubnet)
                // Logged when an address joins the list, not on every refresh.
                let named = Set(Stranger.onUnderlay(strangers, underlay: context.external.underlaySubnet).map(\.address))
                if let warning, !named.isSubset(of: loggedStrangers) { logger.warning("\(warning)") }
                loggedStrangers = named
                context.readiness.setWarning("strangers", warning)
            }
            let reconciler = context.reconciler
            state.peerCount = await reconciler.desiredCount
            if let reconciler6 = context.ipv6Reconciler { state.ipv6PeerCount = await reconciler6.desiredCount }
            if let metrics {
                metrics.observeDesiredPeers(state.peerCount)
                metrics.observeLease(expiryUnixSeconds: state.leaseExpiry, etcdReachable: state.etcdState == "connected")
                metrics.observeLeaseCounters(context.manager.counters.snapshot())
            }
            let owned = state
            writer.update { file in
                file.leaseExpiry = owned.leaseExpiry
                file.etcdState = owned.etcdState
                file.etcdLastContact = owned.etcdLastContact
                file.peerCount = owned.peerCount
                file.ipv6PeerCount = owned.ipv6PeerCount
            }
        }
    }
}
