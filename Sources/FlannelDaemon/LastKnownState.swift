// Design note: booting without etcd. A node that reboots while etcd is unreachable would otherwise
// wait with its pods cut off from the cluster, although it knew a minute ago which subnet it owns and
// where every peer is. So the daemon keeps the leases etcd last confirmed on disk (LastKnownLeases,
// --last-known-state) and, at start-up, when etcd does not answer within --etcd-start-timeout and
// that file holds a lease of ours that has not expired, starts from it:
//
//   saved config + our saved lease + saved peers → data path attached, tables filled, subnet.env,
//   READY=1 (STATUS says degraded) — but /readyz answers 503 "degraded" until etcd confirms.
//
// LeaseRejoinService then waits for etcd like a normal start-up would, and checks, in this order,
// before anything is written: the network config is the one we booted with (else exit, so a restart
// applies the new one), our lease is still ours (acquire prefers our PublicIP's lease and then the
// saved subnet; if another node took the subnet meanwhile we exit without touching its lease, and
// the restart uses the lease we were given), then the peers are replaced by etcd's snapshot and the
// normal watch and renewal take over. Only confirmed state is ever saved: until etcd confirmed our
// lease the recorder writes nothing, so a degraded boot never overwrites the file it booted from.

import Dataplane
import Glibc
import Leases
import Logging
import NetTypes
import ServiceLifecycle

/// Saves the leases this node last confirmed with etcd to --last-known-state: the peers as the
/// watch sees them, our own lease once the SubnetManager holds it, and its expiry after each renewal.
public actor LastKnownRecorder {
    public let path: String
    let manager: SubnetManager
    let config: NetworkConfig
    let logger: Logger
    /// Every peer lease the watch reports, by subnet (updated per event, sorted only when written).
    private var peers: [IPv4Subnet: Lease]
    private var dirty = true
    private var ownRevision: Int64?
    private var ownExpiresAt: Int64?
    private var writeFailed = false

    public init(path: String, manager: SubnetManager, config: NetworkConfig, peers: [Lease], logger: Logger) {
        self.path = path
        self.manager = manager
        self.config = config
        self.peers = Self.bySubnet(peers)
        self.logger = logger
    }

    private static func bySubnet(_ leases: [Lease]) -> [IPv4Subnet: Lease] {
        var result: [IPv4Subnet: Lease] = Dictionary(minimumCapacity: leases.count)
        for lease in leases { result[lease.subnet] = lease }
        return result
    }

    /// All peer leases at once (a snapshot).
    public func replace(_ leases: [Lease]) {
        peers = Self.bySubnet(leases)
        dirty = true
    }

    /// One peer lease added or changed.
    public func update(_ lease: Lease) {
        peers[lease.subnet] = lease
        dirty = true
    }

    /// One peer lease gone.
    public func remove(_ subnet: IPv4Subnet) {
        if peers.removeValue(forKey: subnet) != nil { dirty = true }
    }

    /// Writes the file when something changed since the last write. Nothing is written before our
    /// lease has been confirmed by etcd (the manager holds it).
    @discardableResult
    public func flush(now: Int64 = Int64(time(nil))) async -> Bool {
        guard let own = await manager.ownLease else { return false }
        if own.revision != ownRevision {
            // Seen within a second of the renewal: count the TTL from a little earlier, so the saved
            // expiry is never later than etcd's.
            ownRevision = own.revision
            ownExpiresAt = own.isReservation ? nil : now + manager.options.leaseTTL.components.seconds - 2
            dirty = true
        }
        guard dirty else { return false }
        let state = LastKnownLeases(savedAt: now, etcdAPI: manager.registry.apiVersion, config: config, own: own,
                                    ownExpiresAt: ownExpiresAt, peers: peers.values.sorted { $0.subnet < $1.subnet })
        do {
            try state.write(to: path)
            if writeFailed { logger.info("last known state: \(path) written again") }
            writeFailed = false
            dirty = false
            return true
        } catch {
            // Traffic does not depend on it; only a boot without etcd would.
            if !writeFailed { logger.warning("cannot save the last known state (a boot without etcd will wait for it): \(error)") }
            writeFailed = true
            return false
        }
    }
}

/// Flushes the recorder every `interval` and once more at shutdown.
struct LastKnownRecorderService: Service {
    let recorder: LastKnownRecorder
    var interval: Duration = .seconds(1)

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            await recorder.flush()
        }
    }
}

/// Where the lease state comes from at start-up.
enum BootSource: Sendable {
    /// etcd answered: the usual start-up.
    case etcd(EtcdContact)
    /// etcd did not answer in time: the saved state, degraded until etcd confirms it.
    case lastKnown(LastKnownLeases)
}

/// What reaching etcd at start-up yields.
struct EtcdContact: Sendable {
    var manager: SubnetManager
    var config: NetworkConfig
    /// How the etcd API was chosen (--etcd-api, or what auto found), for `status`.
    var apiDetection: EtcdAPIDetection
}

/// The network as far as the data path is concerned (the saved config's text may differ in spacing).
func sameNetwork(_ a: NetworkConfig, _ b: NetworkConfig) -> Bool {
    var a = a
    var b = b
    a.rawJSON = ""
    b.rawJSON = ""
    return a == b
}

extension Startup {
    /// The saved state when it can stand in for etcd at this boot: readable, for this PublicIP, and
    /// our lease in it not expired (an expired lease may belong to another node by now). Says why not.
    static func lastKnownForBoot(path: String, publicIP: IPv4Address, logger: Logger,
                                 now: Int64 = Int64(time(nil))) -> LastKnownLeases? {
        guard !path.isEmpty else { return nil }
        let saved: LastKnownLeases
        do {
            guard let read = try LastKnownLeases.read(from: path) else { return nil }
            saved = read.state
            for skip in read.skipped { logger.warning("last known state: \(skip)") }
        } catch {
            logger.warning("\(error); start-up waits for etcd")
            return nil
        }
        guard saved.own.attributes.publicIP == publicIP else {
            logger.info("last known state \(path) is for PublicIP \(saved.own.attributes.publicIP), this node is \(publicIP): not used")
            return nil
        }
        guard saved.ownLeaseIsLive(now: now) else {
            logger.warning("last known state \(path): our lease \(saved.own.subnet) expired \(now - (saved.ownExpiresAt ?? 0)) s ago, so another node may hold it now; start-up waits for etcd")
            return nil
        }
        guard (try? backendKind(saved.config.backend)) != nil else { return nil }
        return saved
    }

    /// etcd's registry, the manager over it and the network config; waits (retrying) until all answer.
    static func reachEtcd(_ etcd: EtcdOptions, managerOptions: SubnetManagerOptions, logger: Logger) async throws -> EtcdContact {
        let (registry, detection) = try await connectRegistryDetecting(etcd, logger: logger)
        let manager = SubnetManager(registry: registry, options: managerOptions, logger: logger)
        let (config, _) = try await readConfig(manager, logger: logger)
        return EtcdContact(manager: manager, config: config, apiDetection: detection)
    }

    /// etcd if it answers within `limit`, else the saved state.
    static func bootSource(_ etcd: EtcdOptions, managerOptions: SubnetManagerOptions, lastKnown: LastKnownLeases?,
                           lastKnownPath: String, logger: Logger) async throws -> BootSource {
        guard let lastKnown else {
            return .etcd(try await reachEtcd(etcd, managerOptions: managerOptions, logger: logger))
        }
        let limit = Duration.seconds(etcd.startTimeout)
        if let contact = try await firstWithin(limit, { try await reachEtcd(etcd, managerOptions: managerOptions, logger: logger) }) {
            return .etcd(contact)
        }
        let age = Int64(time(nil)) - lastKnown.savedAt
        logger.warning("etcd did not answer within \(limit): starting from the last known state \(lastKnownPath) (saved \(age) s ago: lease \(lastKnown.own.subnet), \(lastKnown.peers.count) peer(s)); degraded until etcd confirms the lease")
        return .lastKnown(lastKnown)
    }

    /// The manager for a degraded boot: the saved API (or --etcd-api when given), not contacted yet.
    static func offlineManager(_ etcd: EtcdOptions, lastKnown: LastKnownLeases, managerOptions: SubnetManagerOptions,
                               logger: Logger) throws -> SubnetManager {
        let options = etcdClientOptions(etcd)
        let api = options.apiVersion == .auto ? lastKnown.etcdAPI : options.apiVersion
        let registry = try EtcdRegistryFactory.make(api: api, options: options)
        return SubnetManager(registry: registry, options: managerOptions, logger: logger)
    }

    /// `body`'s result if it finishes within `limit`, else nil — without waiting for it to notice
    /// its cancellation (an etcd request may sit in a connect timeout).
    static func firstWithin<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
        let (stream, continuation) = AsyncStream<Result<T, any Error>?>.makeStream()
        let work = Task {
            do { continuation.yield(.success(try await body())) } catch { continuation.yield(.failure(error)) }
        }
        let timer = Task {
            try? await Task.sleep(for: limit)
            continuation.yield(nil)
        }
        defer {
            timer.cancel()
            continuation.finish()
        }
        let first = await withTaskCancellationHandler {
            var iterator = stream.makeAsyncIterator()
            return await iterator.next()
        } onCancel: {
            work.cancel()
            timer.cancel()
            continuation.finish()
        }
        try Task.checkCancellation()
        guard let outcome = first ?? nil else {
            work.cancel()
            return nil
        }
        return try outcome.get()
    }
}

/// Errors that end a degraded boot once etcd answers (a restart then starts normally).
public enum DegradedBootError: Error, CustomStringConvertible {
    case configChanged(saved: String, current: String)
    case subnetTaken(saved: IPv4Subnet, acquired: IPv4Subnet)

    public var description: String {
        switch self {
        case let .configChanged(saved, current):
            "the network config in etcd (\(current)) is not the one this node started from (\(saved)); exiting so that a restart applies it"
        case let .subnetTaken(saved, acquired):
            "our subnet \(saved) from the last known state is held by another node now; we were given \(acquired) instead: exiting so that a restart moves this node to \(acquired) (pods must be restarted to get addresses in it)"
        }
    }
}

/// After a degraded boot: waits for etcd, confirms the config and our lease, replaces the saved
/// peers by etcd's, then runs the usual watch and renewal.
struct LeaseRejoinService: Service {
    let saved: LastKnownLeases
    let manager: SubnetManager
    let attributes: LeaseAttributes
    let policy: DesiredPeerPolicy
    let reconciler: Reconciler
    let readiness: Readiness
    let recorder: LastKnownRecorder?
    var ipv6: IPv6PeerFollower? = nil
    let logger: Logger

    func run() async throws {
        let started = ContinuousClock.now
        let joined: (PeerEventCursor, [Lease])
        do {
            joined = try await cancelWhenGracefulShutdown { [self] in try await confirm() }
        } catch is CancellationError {
            return
        }
        let (events, snapshot) = joined
        let before = await reconciler.desiredCount
        let (peers, skipped) = policy.peers(from: snapshot.map(RemoteLease.init))
        for skip in skipped { logger.info("lease \(skip.lease.subnet) ignored: \(skip.reason)") }
        await reconciler.setDesired(peers)
        _ = await reconciler.reconcile()
        if let ipv6 {
            await ipv6.replace(snapshot)
            _ = await ipv6.reconciler.reconcile()
        }
        await recorder?.replace(snapshot)
        await recorder?.flush()
        readiness.set(.leaseConfirmed, ok: true)
        logger.notice("etcd confirmed our lease \(saved.own.subnet) after \(ContinuousClock.now - started) degraded: \(peers.count) peer(s) now (\(before) from the last known state); leaving degraded mode")
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [self] in
                try await LeaseWatchService(events: events, policy: policy, reconciler: reconciler,
                                            recorder: recorder, ipv6: ipv6, logger: logger).run()
            }
            group.addTask { [self] in try await LeaseRenewService(manager: manager, logger: logger).run() }
        }
    }

    /// Waits for etcd; throws if it disagrees with the state we booted from.
    private func confirm() async throws -> (PeerEventCursor, [Lease]) {
        let (config, _) = try await Startup.readConfig(manager, logger: logger)
        guard sameNetwork(config, saved.config) else {
            throw DegradedBootError.configChanged(saved: saved.config.rawJSON, current: config.rawJSON)
        }
        let lease = try await Startup.acquireLease(manager, config: saved.config, attributes: attributes,
                                                   previousSubnet: saved.own.subnet, previousIPv6Subnet: saved.own.ipv6Subnet,
                                                   logger: logger)
        guard lease.subnet == saved.own.subnet, lease.ipv6Subnet == saved.own.ipv6Subnet else {
            throw DegradedBootError.subnetTaken(saved: saved.own.subnet, acquired: lease.subnet)
        }
        let events = PeerEventCursor(manager.watchPeers(config: saved.config))
        return (events, try await Startup.firstSnapshot(events))
    }
}
