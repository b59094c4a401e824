// The node's side of flannel's subnet protocol, over either registry.
//
// acquire   flannel's tryAcquireLease: reuse our own lease (same PublicIP) if it fits the config,
//           else the previous subnet.env's subnet if free, else a random pick among the first 100
//           free subnets; create with compare-and-swap; a lost race re-lists and tries again (10x).
//           A TTL-less key (an administrator's reservation) is reused and kept TTL-less.
// renew     margin before expiry, retry every `renewRetryInterval` on error. Conditional: it only
//           rewrites the key at the revision we wrote; if the key changed and is not ours any more,
//           `ownLeaseLost` fires and renewing stops (flannel exits then; so should the daemon, and a
//           restart re-acquires). If the key simply expired (etcd was away longer than the TTL), it is
//           re-created.
// watch     list, then watch from the next revision, as one clean stream: `.snapshot` first, then
//           `.added/.changed/.removed`. Connection errors resume the watch after a capped exponential
//           backoff (100 ms doubling to 5 s); compaction (v3) or a cleared index (v2) re-lists and
//           diffs; a periodic re-list repairs anything missed. Logs are rate-limited per error class.
// release   deletes our key (conditional). The daemon does NOT call it on SIGTERM: the lease is kept so
//           a restart reuses the subnet without disturbing flows.

import Logging
import NetTypes
import RuntimeSupport

public struct SubnetManagerOptions: Sendable {
    /// flannel: 24 h; `--subnet-lease-ttl` (ours) for tests and small labs.
    public var leaseTTL: Duration = .seconds(24 * 3600)
    /// `--subnet-lease-renew-margin` (flannel: 60 minutes). Clamped to half the TTL.
    public var renewMargin: Duration = .seconds(60 * 60)
    /// flannel retries a failed renewal every minute. Clamped to an eighth of the TTL (at least
    /// 250 ms), so a short lease gets several tries before it expires.
    public var renewRetryInterval: Duration = .seconds(60)
    /// Full re-list that repairs anything a watch missed.
    public var relistInterval: Duration = .seconds(300)
    public var backoffInitial: Duration = .milliseconds(100)
    public var backoffMax: Duration = .seconds(5)
    /// At most one log line per error class per interval.
    public var errorLogInterval: Duration = .seconds(60)
    /// flannel retries a lost compare-and-swap race up to 10 times.
    public var acquireAttempts = 10

    public init() {}
}

/// What `watchPeers` delivers. The node's own lease never appears.
public enum PeerEvent: Sendable, Equatable {
    /// Every valid peer lease at the first successful list; always the first event.
    case snapshot([Lease])
    case added(Lease)
    /// Same subnet, different attributes (e.g. a node restarted with a new VtepMAC).
    case changed(Lease)
    case removed(Lease)
}

/// Our lease was taken or deleted by someone else.
public struct LeaseLost: Error, Sendable, Equatable, CustomStringConvertible {
    public var lease: Lease
    /// Who holds the subnet now, if anyone.
    public var holder: LeaseAttributes?
    public var reason: String

    public var description: String {
        "our lease \(lease.subnet) was lost: \(reason)" + (holder.map { " (now held by \($0.publicIP))" } ?? "")
    }
}

public enum AcquireError: Error, Sendable, CustomStringConvertible {
    case noFreeSubnet(network: IPv4Subnet, subnetLen: Int, taken: Int)
    case tooManyConflicts(attempts: Int)
    case notAcquired

    public var description: String {
        switch self {
        case .noFreeSubnet(let n, let len, let taken):
            "no free /\(len) subnet left in \(n) (\(taken) keys taken): enlarge Network or remove stale leases"
        case .tooManyConflicts(let attempts):
            "lost the race for a subnet \(attempts) times in a row: other nodes are acquiring at the same moment; retry"
        case .notAcquired: "no lease acquired yet: call acquireLease first"
        }
    }
}

public actor SubnetManager {
    public nonisolated let registry: any SubnetRegistry
    public nonisolated let counters: LeaseCounters
    public nonisolated let options: SubnetManagerOptions
    /// Fires once when our lease is taken or deleted by someone else (flannel logs and exits).
    public nonisolated let ownLeaseLost: AsyncStream<LeaseLost>
    private let lostContinuation: AsyncStream<LeaseLost>.Continuation
    let logger: Logger
    private let errorLog: RateLimitedLog

    public private(set) var ownLease: Lease?
    /// The config of the last `acquireLease`.
    public private(set) var acquiredConfig: NetworkConfig?
    private var ownExpiry: ContinuousClock.Instant?
    private var lost = false
    private var lostEvent: LeaseLost?
    /// Whether our lease was declared lost (taken or deleted by someone else).
    var hasLostLease: Bool { lost }
    private var releasing = false

    public init(registry: any SubnetRegistry, counters: LeaseCounters = LeaseCounters(),
                options: SubnetManagerOptions = SubnetManagerOptions(),
                logger: Logger = Logger(label: "flanneld-xdp.leases")) {
        self.registry = registry
        self.counters = counters
        self.options = options
        self.logger = logger
        errorLog = RateLimitedLog(window: options.errorLogInterval)
        (ownLeaseLost, lostContinuation) = AsyncStream<LeaseLost>.makeStream()
    }

    /// Reads and validates `<prefix>/config`.
    public func getConfig() async throws -> NetworkConfig {
        try await registry.getConfig()
    }

    // MARK: acquire

    /// Acquires a subnet for a node with `attributes` (its PublicIP identifies it).
    public func acquireLease(config: NetworkConfig, attributes: LeaseAttributes,
                             previousSubnet: IPv4Subnet? = nil) async throws -> Lease {
        acquiredConfig = config
        let value = attributes.json
        for attempt in 1...max(1, options.acquireAttempts) {
            let listing = try await registry.listLeases()
            var taken = Set<IPv4Subnet>()
            var odd: [IPv4Subnet] = []
            for rec in listing.records {
                // What any flannel node reads as taken (alias keys included) is never handed out.
                guard let s = LeaseDecoder.flannelSubnet(fromKey: rec.name) else { continue }
                taken.insert(s)
                if s.prefixLength != config.subnetLen { odd.append(s) }
            }
            func free(_ s: IPv4Subnet) -> Bool {
                !taken.contains(s) && !odd.contains(where: { $0.overlaps(s) })
            }

            // Our leases from an older config (another Network or SubnetLen) are deleted, as flannel
            // does; reservations are an administrator's and stay.
            for rec in listing.records where !rec.isReservation {
                guard let s = LeaseDecoder.subnet(fromKey: rec.name), !config.allows(s),
                      case .success(let a) = LeaseDecoder.parseAttributes(rec.value), a.publicIP == attributes.publicIP else { continue }
                logger.info("deleting our lease \(s): it does not fit the current config (\(config.network), /\(config.subnetLen))")
                try? await registry.deleteLease(name: rec.name, expectedRevision: rec.revision)
            }

            // 1. Our own lease (or a reservation made for our PublicIP).
            // (An IPv4-only key: renewals write `subnet.leaseKey`, so that is the key we hold.)
            let mine = listing.records.first { rec in
                guard let s = LeaseDecoder.subnet(fromKey: rec.name), rec.name == s.leaseKey, config.allows(s),
                      case .success(let a) = LeaseDecoder.parseAttributes(rec.value) else { return false }
                return a.publicIP == attributes.publicIP
            }
            if let rec = mine, let subnet = LeaseDecoder.subnet(fromKey: rec.name) {
                let ttl = rec.isReservation ? nil : options.leaseTTL
                do {
                    let rev = try await registry.updateLease(name: rec.name, value: value, ttl: ttl, expectedRevision: rec.revision)
                    logger.info("reusing our lease \(subnet)\(rec.isReservation ? " (reservation, kept without TTL)" : "")")
                    return adopt(Lease(subnet: subnet, attributes: attributes, isReservation: rec.isReservation, ttl: ttl, revision: rev))
                } catch RegistryError.conflict {
                    counters.update { $0.acquireConflicts += 1 }
                    logger.debug("our lease \(subnet) changed while reusing it (attempt \(attempt)); re-listing")
                    continue
                }
            }

            // 2. The previous subnet.env's subnet, 3. a random one among the first 100 free.
            let choice: IPv4Subnet
            if let prev = previousSubnet, config.allows(prev), free(prev) {
                choice = prev
            } else {
                var firstFree: [IPv4Subnet] = []
                for s in config.candidateSubnets where free(s) {
                    firstFree.append(s)
                    if firstFree.count == 100 { break }
                }
                guard let pick = firstFree.randomElement() else {
                    throw AcquireError.noFreeSubnet(network: config.network, subnetLen: config.subnetLen, taken: taken.count)
                }
                choice = pick
            }
            do {
                let rev = try await registry.createLease(name: choice.leaseKey, value: value, ttl: options.leaseTTL)
                logger.info("acquired lease \(choice)")
                return adopt(Lease(subnet: choice, attributes: attributes, ttl: options.leaseTTL, revision: rev))
            } catch RegistryError.conflict {
                counters.update { $0.acquireConflicts += 1 }
                logger.debug("lost the race for \(choice) (attempt \(attempt)); trying another subnet")
            }
        }
        throw AcquireError.tooManyConflicts(attempts: options.acquireAttempts)
    }

    private func adopt(_ lease: Lease) -> Lease {
        ownLease = lease
        ownExpiry = lease.isReservation ? nil : ContinuousClock.now + options.leaseTTL
        lost = false
        lostEvent = nil
        return lease
    }

    // MARK: renew

    /// Renews now. Throws `LeaseLost` (and fires `ownLeaseLost`) if the subnet is someone else's.
    @discardableResult
    public func renewLease() async throws -> Lease {
        if lost, let lostEvent { throw lostEvent }
        guard var own = ownLease else { throw AcquireError.notAcquired }
        let ttl: Duration? = own.isReservation ? nil : options.leaseTTL
        let value = own.attributes.json
        for _ in 0..<3 {
            do {
                let rev = try await registry.updateLease(name: own.subnet.leaseKey, value: value, ttl: ttl, expectedRevision: own.revision)
                own.revision = rev
                counters.update { $0.renewals += 1 }
                return adopt(own)
            } catch RegistryError.conflict {
                // Changed since we wrote it: find out by whom.
                guard let rec = try await registry.getLease(name: own.subnet.leaseKey) else {
                    // Gone (expired while etcd was unreachable): take it back if no one else did.
                    do {
                        let rev = try await registry.createLease(name: own.subnet.leaseKey, value: value, ttl: ttl)
                        logger.warning("our lease \(own.subnet) had expired; re-created it")
                        own.revision = rev
                        counters.update { $0.renewals += 1 }
                        return adopt(own)
                    } catch RegistryError.conflict {
                        continue
                    }
                }
                let holder = try? LeaseDecoder.parseAttributes(rec.value).get()
                if let holder, holder.publicIP == own.attributes.publicIP {
                    own.revision = rec.revision
                    continue
                }
                throw declareLost(own, holder: holder, reason: "the key was rewritten by another node")
            }
        }
        throw RegistryError.conflict(key: own.subnet.leaseKey)
    }

    private func declareLost(_ lease: Lease, holder: LeaseAttributes?, reason: String) -> LeaseLost {
        let event = LeaseLost(lease: lease, holder: holder, reason: reason)
        if !lost {
            lost = true
            lostEvent = event
            logger.error("\(event): stopping renewals; restart to acquire a lease again")
            lostContinuation.yield(event)
        }
        return event
    }

    /// Renews `renewMargin` before expiry until cancelled; retries every `renewRetryInterval` on
    /// errors. Returns by throwing `LeaseLost` when our lease is gone (the daemon should exit, as
    /// flannel does) or `CancellationError`.
    public func runRenewLoop() async throws {
        let margin = min(options.renewMargin, options.leaseTTL / 2)
        let retryInterval = max(.milliseconds(250), min(options.renewRetryInterval, options.leaseTTL / 8))
        while true {
            try Task.checkCancellation()
            guard let own = ownLease else { throw AcquireError.notAcquired }
            if lost, let lostEvent { throw lostEvent }
            guard let expiry = ownExpiry else {
                // A reservation does not expire; the watch reports if someone takes it.
                try await Task.sleep(for: options.relistInterval)
                continue
            }
            let due = expiry - margin
            let now = ContinuousClock.now
            if now < due {
                try await Task.sleep(until: due, clock: .continuous)
                continue
            }
            do {
                try await renewLease()
                logger.debug("renewed lease \(own.subnet)")
            } catch let e as LeaseLost {
                throw e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                counters.update { $0.renewalFailures += 1 }
                if errorLog.allow("renew") {
                    logger.warning("renewing lease \(own.subnet) failed: \(error); retrying every \(retryInterval)")
                }
                try await Task.sleep(for: retryInterval)
            }
        }
    }

    // MARK: release

    /// Deletes our lease (only if it is still the key we wrote). Not for SIGTERM: see the design note.
    public func releaseLease() async throws {
        guard let own = ownLease else { return }
        releasing = true
        defer { releasing = false }
        try await registry.deleteLease(name: own.subnet.leaseKey, expectedRevision: own.revision)
        ownLease = nil
        ownExpiry = nil
        logger.info("released lease \(own.subnet)")
    }

    // MARK: watch

    /// Called by the watcher for events on our own key.
    func ownKeyEvent(_ event: LeaseWatchEvent, holder: LeaseAttributes?) async {
        guard let own = ownLease, !lost, !releasing else { return }
        switch event {
        case .put(let rec):
            guard rec.revision > own.revision else { return }
            if let holder, holder.publicIP == own.attributes.publicIP {
                ownLease?.revision = rec.revision
            } else {
                _ = declareLost(own, holder: holder, reason: "the key was overwritten")
            }
        case .delete(_, let rev, let expired):
            guard rev > own.revision else { return }
            let pastExpiry = ownExpiry.map { ContinuousClock.now >= $0 - .seconds(1) } ?? false
            if expired || pastExpiry {
                logger.warning("our lease \(own.subnet) expired; re-creating it unless another node took the subnet")
                do { try await renewLease() } catch {
                    if errorLog.allow("recreate") { logger.warning("re-creating lease \(own.subnet) failed: \(error)") }
                }
            } else {
                _ = declareLost(own, holder: nil, reason: "the key was deleted by someone else")
            }
        case .progress:
            break
        }
    }

    func ownIdentity() -> (subnet: IPv4Subnet?, publicIP: IPv4Address?) {
        (ownLease?.subnet, ownLease?.attributes.publicIP)
    }

    /// `watchPeers(config:)` with the config the lease was acquired under.
    public func watchPeers() throws -> AsyncStream<PeerEvent> {
        guard let acquiredConfig else { throw AcquireError.notAcquired }
        return watchPeers(config: acquiredConfig)
    }

    /// The peers' leases as one clean event stream (see `PeerEvent`). Runs until the consumer stops
    /// iterating (or drops the stream). Leases with our subnet or our PublicIP are left out.
    public nonisolated func watchPeers(config: NetworkConfig) -> AsyncStream<PeerEvent> {
        let (stream, continuation) = AsyncStream<PeerEvent>.makeStream()
        let watcher = PeerWatcher(manager: self, config: config, continuation: continuation)
        let task = Task { await watcher.run() }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }
}

/// The watch loop's state; lives in one task.
private final class PeerWatcher: Sendable {
    let manager: SubnetManager
    let config: NetworkConfig
    let continuation: AsyncStream<PeerEvent>.Continuation

    init(manager: SubnetManager, config: NetworkConfig, continuation: AsyncStream<PeerEvent>.Continuation) {
        self.manager = manager
        self.config = config
        self.continuation = continuation
    }

    private enum Input: Sendable {
        case batch([LeaseWatchEvent])
        case failed(any Error)
        case relistDue
    }

    private enum ListReason { case initial, history, periodic }

    func run() async {
        var state = State()
        let options = manager.options
        let counters = manager.counters
        let logger = manager.logger
        let errorLog = RateLimitedLog(window: options.errorLogInterval)
        var backoff = options.backoffInitial
        var listReason: ListReason? = .initial
        var revision: Int64 = 0
        var failures = 0

        while !Task.isCancelled {
            do {
                if let reason = listReason {
                    revision = try await reconcile(state: &state, counting: reason != .initial)
                    listReason = nil
                }
                if failures > 0 { counters.update { $0.watchReconnects += 1 } }
                let started = ContinuousClock.now
                let (inputs, inputContinuation) = AsyncStream<Input>.makeStream()
                let registry = manager.registry
                let from = revision + 1
                let forwarder = Task {
                    do {
                        for try await batch in registry.watchLeases(fromRevision: from) { inputContinuation.yield(.batch(batch)) }
                        inputContinuation.yield(.failed(EtcdClientError.closed(endpoint: "watch")))
                    } catch {
                        inputContinuation.yield(.failed(error))
                    }
                }
                let timer = Task {
                    guard (try? await Task.sleep(for: options.relistInterval)) != nil else { return }
                    inputContinuation.yield(.relistDue)
                }
                defer {
                    forwarder.cancel()
                    timer.cancel()
                    inputContinuation.finish()
                }
                loop: for await input in inputs {
                    switch input {
                    case .batch(let events):
                        failures = 0
                        backoff = options.backoffInitial
                        for ev in events {
                            revision = max(revision, ev.revision)
                            await apply(ev, state: &state)
                        }
                    case .failed(let error):
                        // A watch that stayed up a while is not part of a failure streak.
                        if ContinuousClock.now - started >= options.backoffMax {
                            failures = 0
                            backoff = options.backoffInitial
                        }
                        throw error
                    case .relistDue:
                        counters.update { $0.periodicRelists += 1 }
                        listReason = .periodic
                        break loop
                    }
                }
            } catch RegistryError.historyUnavailable(let requested, let detail) {
                counters.update { $0.historyRelists += 1 }
                if errorLog.allow("history") {
                    logger.notice("lease watch cannot resume at \(requested) (\(detail)); re-listing")
                }
                listReason = .history
            } catch {
                if Task.isCancelled { break }
                failures += 1
                if errorLog.allow(errorClass(error)) {
                    logger.warning("lease watch: \(error); reconnecting with backoff (up to \(options.backoffMax))")
                }
                // A pending list (initial, history) is retried as such; otherwise the watch resumes
                // from `revision`, and if that was compacted meanwhile it comes back as historyUnavailable.
                do { try await Task.sleep(for: backoff) } catch { break }
                backoff = min(backoff * 2, options.backoffMax)
            }
        }
        continuation.finish()
    }

    private func errorClass(_ error: any Error) -> String {
        let text = "\(error)"
        if let e = error as? EtcdClientError {
            switch e {
            case .connect: return "connect"
            case .tls: return "tls"
            case .timeout: return "timeout"
            case .closed: return "closed"
            case .allEndpointsFailed: return "all-endpoints"
            default: return "client"
            }
        }
        if error is RegistryError { return "registry:" + String(text.prefix(30)) }
        return String(describing: type(of: error))
    }

    struct State {
        /// The peers as last told to the consumer: one lease per subnet.
        var known: [IPv4Subnet: Lease] = [:]
        /// Every valid peer lease by key. Two keys can name one IPv4 subnet (an IPv4-only and a
        /// dual-stack node that raced for it): the one created first speaks for the subnet, and
        /// removing the other changes nothing.
        var byKey: [String: (lease: Lease, created: Int64)] = [:]
        var keysBySubnet: [IPv4Subnet: Set<String>] = [:]
        var snapshotSent = false
        /// "key@revision" of rejections already logged, so a periodic re-list does not repeat them.
        var loggedRejections: Set<String> = []

        /// The lease that speaks for `subnet`: of its keys, the one created first (then by name).
        func winner(_ subnet: IPv4Subnet) -> Lease? {
            keysBySubnet[subnet]?.compactMap { key in byKey[key].map { (key, $0) } }
                .min { ($0.1.created, $0.0) < ($1.1.created, $1.0) }?.1.lease
        }

        mutating func set(_ key: String, _ lease: Lease, created: Int64) {
            if let old = byKey[key], old.lease.subnet != lease.subnet { drop(key) }
            byKey[key] = (lease, created)
            keysBySubnet[lease.subnet, default: []].insert(key)
        }

        /// Forgets `key`; returns the subnet it named.
        @discardableResult
        mutating func drop(_ key: String) -> IPv4Subnet? {
            guard let old = byKey.removeValue(forKey: key) else { return nil }
            keysBySubnet[old.lease.subnet]?.remove(key)
            if keysBySubnet[old.lease.subnet]?.isEmpty == true { keysBySubnet[old.lease.subnet] = nil }
            return old.lease.subnet
        }
    }

    private func decode(_ rec: LeaseRecord, state: inout State) -> Lease? {
        switch LeaseDecoder.decode(key: rec.name, value: rec.value, isReservation: rec.isReservation, ttl: rec.ttl,
                                   revision: rec.revision, config: config) {
        case .success(let lease): return lease
        case .failure(let rejected):
            let tag = "\(rec.name.prefix(128))@\(rec.revision)"
            if !state.loggedRejections.contains(tag) {
                if state.loggedRejections.count > 10_000 { state.loggedRejections.removeAll() }
                state.loggedRejections.insert(tag)
                manager.counters.reject(rejected.reason)
                manager.logger.warning("\(LeaseRejected(key: String(rec.name.prefix(64)), reason: rejected.reason, detail: rejected.detail))")
            }
            return nil
        }
    }

    /// Lists every lease, decoding each as it arrives (the listing is never held whole), and tells
    /// the consumer what changed; returns the listing's revision.
    private func reconcile(state: inout State, counting: Bool) async throws -> Int64 {
        let (ownSubnet, ownIP) = await manager.ownIdentity()
        state.byKey = [:]
        state.keysBySubnet = [:]
        let (listed, revision) = try await manager.registry.reduceLeases(into: state) { state, rec in
            guard let lease = decode(rec, state: &state) else { return }
            if lease.subnet == ownSubnet || lease.attributes.publicIP == ownIP { return }
            state.set(rec.name, lease, created: rec.createRevision)
        }
        state = listed
        var desired: [IPv4Subnet: Lease] = [:]
        for subnet in state.keysBySubnet.keys { desired[subnet] = state.winner(subnet) }
        if !state.snapshotSent {
            state.snapshotSent = true
            state.known = desired
            continuation.yield(.snapshot(desired.values.sorted { $0.subnet < $1.subnet }))
            return revision
        }
        var repaired = 0
        for (subnet, old) in state.known where desired[subnet] == nil {
            continuation.yield(.removed(old))
            repaired += 1
        }
        for (subnet, lease) in desired.sorted(by: { $0.key < $1.key }) {
            if let old = state.known[subnet] {
                if !old.sameContent(as: lease) {
                    continuation.yield(.changed(lease))
                    repaired += 1
                }
            } else {
                continuation.yield(.added(lease))
                repaired += 1
            }
        }
        state.known = desired
        if counting, repaired > 0 {
            manager.counters.update { $0.repairedByRelist += repaired }
            manager.logger.notice("lease re-list repaired \(repaired) peer change(s) the watch had not delivered")
        }
        return revision
    }

    private func apply(_ event: LeaseWatchEvent, state: inout State) async {
        let (ownSubnet, ownIP) = await manager.ownIdentity()
        switch event {
        case .put(let rec):
            // Our own key, by name: another key naming our subnet is someone else's lease.
            if let ownSubnet, rec.name == ownSubnet.leaseKey {
                let holder = try? LeaseDecoder.parseAttributes(rec.value).get()
                await manager.ownKeyEvent(event, holder: holder)
                return
            }
            let previous = state.drop(rec.name)
            if let lease = decode(rec, state: &state), lease.subnet != ownSubnet, lease.attributes.publicIP != ownIP {
                state.set(rec.name, lease, created: rec.createRevision)
                publish(lease.subnet, state: &state)
            }
            // Now invalid, ours, or naming another subnet: what it named before is re-decided.
            if let previous { publish(previous, state: &state) }
        case .delete(let name, _, _):
            if let ownSubnet, name == ownSubnet.leaseKey {
                await manager.ownKeyEvent(event, holder: nil)
                return
            }
            if let subnet = state.drop(name) { publish(subnet, state: &state) }
        case .progress:
            break
        }
    }

    /// Tells the consumer what changed for `subnet` now that its keys changed.
    private func publish(_ subnet: IPv4Subnet, state: inout State) {
        let now = state.winner(subnet)
        let before = state.known[subnet]
        state.known[subnet] = now
        switch (before, now) {
        case (nil, let lease?): continuation.yield(.added(lease))
        case (let old?, nil): continuation.yield(.removed(old))
        case (let old?, let lease?) where !old.sameContent(as: lease): continuation.yield(.changed(lease))
        default: break
        }
    }
}
