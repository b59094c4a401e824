// The node's side of flannel's subnet protocol, over either registry.
//
// acquire   flannel's tryAcquireLease: reuse our own lease (same PublicIP; PublicIPv6 in an IPv6-only
//           network) if it fits the config, else the previous subnet.env's subnet if free, else a
//           random pick among the first 100 free subnets, per family (flannel ≥ 0.18 picks the IPv6
//           subnet independently); create with compare-and-swap; a lost race re-lists and tries
//           again (10x). A TTL-less key (an administrator's reservation) is reused and kept TTL-less.
//           Keys differ per family set ("10.5.3.0-24" vs "10.5.3.0-24&fd00::-64"), so etcd's
//           compare-and-swap cannot stop an IPv4-only and a dual-stack node creating keys for the same
//           subnet at the same moment: after creating, the listing is read again and a key for an
//           overlapping subnet created before ours wins; ours is deleted and the pick repeated. The
//           watcher uses the same rule (the key created first speaks for a subnet), so every
//           flanneld-xdp node agrees on the owner even when a stock flannel node keeps its key.
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
    /// Whether the caller runs networks with IPv6 (dual-stack, IPv6-only; the daemon does): until
    /// it says so, `getConfig` refuses such a config by name instead of handing it to a program
    /// (a bench, a tool) that would serve only its IPv4 half.
    public var servesIPv6Networks = false

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
    case noFreeIPv6Subnet(network: IPv6Subnet, subnetLen: Int, taken: Int)
    /// The config enables IPv6 but the node's attributes carry no PublicIPv6.
    case missingPublicIPv6(network: IPv6Subnet)
    case tooManyConflicts(attempts: Int)
    case notAcquired

    public var description: String {
        switch self {
        case .noFreeSubnet(let n, let len, let taken):
            "no free /\(len) subnet left in \(n) (\(taken) keys taken): enlarge Network or remove stale leases"
        case .noFreeIPv6Subnet(let n, let len, let taken):
            "no free /\(len) IPv6 subnet left in \(n) (\(taken) keys taken): enlarge IPv6Network or remove stale leases"
        case .missingPublicIPv6(let n):
            "the network config enables IPv6 (IPv6Network \(n)) but this node has no IPv6 address to publish as PublicIPv6: "
                + "give the interface an IPv6 address, or --public-ipv6"
        case .tooManyConflicts(let attempts):
            "lost the race for a subnet \(attempts) times in a row: other nodes are acquiring at the same moment; retry"
        case .notAcquired: "no lease acquired yet: call acquireLease first"
        }
    }
}

/// What this node holds, for telling its own lease from peers'.
struct OwnIdentity: Sendable {
    var key: String?
    var subnet: IPv4Subnet?
    var publicIP: IPv4Address?
    var ipv6Subnet: IPv6Subnet?
    var publicIPv6: IPv6Address?

    /// Whether `lease` is this node's, by the family that identifies nodes in `config`: the IPv4
    /// subnet or PublicIP, or in an IPv6-only network the IPv6 subnet or PublicIPv6.
    func isOwn(_ lease: Lease, config: NetworkConfig) -> Bool {
        if config.enableIPv4 { return lease.subnet == subnet || lease.attributes.publicIP == publicIP }
        return lease.ipv6Subnet == ipv6Subnet || lease.attributes.publicIPv6 == publicIPv6
    }
}

/// The subnets of every key in a listing as flannel reads them (alias keys included), per family.
struct TakenSubnets {
    var ipv4: SubnetSet<IPv4Subnet>
    var ipv6: SubnetSet<IPv6Subnet>

    init(names: some Sequence<String>) {
        var v4: [IPv4Subnet] = [], v6: [IPv6Subnet] = []
        for name in names {
            guard let (a, b) = LeaseDecoder.flannelSubnets(fromKey: name) else { continue }
            v4.append(a)
            if let b { v6.append(b) }
        }
        ipv4 = SubnetSet(v4)
        ipv6 = SubnetSet(v6)
    }

    func isFree(_ s: IPv4Subnet) -> Bool { !ipv4.overlaps(s) }
    func isFree(_ s: IPv6Subnet) -> Bool { !ipv6.overlaps(s) }
}

/// Subnets grouped by prefix length: overlap with a subnet of the common length is one look-up;
/// other lengths (rare: leases of an older config) are scanned.
struct SubnetSet<Subnet: IPSubnetType> {
    private var byLength: [Int: Set<Subnet>] = [:]
    var count: Int { byLength.values.reduce(0) { $0 + $1.count } }

    init(_ subnets: [Subnet]) {
        for s in subnets { byLength[s.prefixLength, default: []].insert(s) }
    }

    func overlaps(_ s: Subnet) -> Bool {
        byLength.contains { length, set in
            length == s.prefixLength ? set.contains(s) : set.contains { $0.contains(s.address) || s.contains($0.address) }
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

    /// Reads and validates `<prefix>/config` (see `SubnetManagerOptions.servesIPv6Networks`).
    public func getConfig() async throws -> NetworkConfig {
        let config = try await registry.getConfig()
        if let v6 = config.ipv6, !options.servesIPv6Networks {
            throw ConfigError(field: "EnableIPv6", reason: "the network is \(config.enableIPv4 ? "dual-stack" : "IPv6-only") (IPv6Network "
                + "\(v6.network)), and this program does not run IPv6 networks (the flanneld-xdp daemon does): it would take no "
                + "IPv6 subnet and carry no IPv6 traffic")
        }
        return config
    }

    // MARK: acquire

    /// Acquires a subnet for a node with `attributes` (its PublicIP identifies it; its PublicIPv6 in
    /// an IPv6-only network). With IPv6 enabled the lease also holds an IPv6 subnet, and
    /// `attributes` must carry the PublicIPv6.
    public func acquireLease(config: NetworkConfig, attributes: LeaseAttributes,
                             previousSubnet: IPv4Subnet? = nil, previousIPv6Subnet: IPv6Subnet? = nil) async throws -> Lease {
        if let v6 = config.ipv6, attributes.publicIPv6 == nil { throw AcquireError.missingPublicIPv6(network: v6.network) }
        acquiredConfig = config
        let value = attributes.json
        func isOurs(_ a: LeaseAttributes) -> Bool {
            config.enableIPv4 ? a.publicIP == attributes.publicIP : a.publicIPv6 == attributes.publicIPv6
        }
        // flannel's isSubnetConfigCompat and isIPv6SubnetConfigCompat: the key has exactly the
        // families the config runs, each inside its network.
        func fits(_ key: LeaseKey) -> Bool {
            guard config.allows(key.subnet) else { return false }
            guard let v6 = config.ipv6 else { return key.ipv6Subnet == nil }
            return key.ipv6Subnet.map(v6.allows) ?? false
        }
        for attempt in 1...max(1, options.acquireAttempts) {
            // The listing folded as it arrives: every key's name (for the subnets taken) and the
            // keys whose value names this node.
            let (listing, _) = try await registry.reduceLeases(into: (names: [String](), ours: [LeaseRecord]())) { view, rec in
                view.names.append(rec.name)
                if case .success(let a) = LeaseDecoder.parseAttributes(rec.value), isOurs(a) { view.ours.append(rec) }
            }

            // Our leases from an older config (another Network, SubnetLen or family set) are deleted,
            // as flannel does; reservations are an administrator's and stay.
            var deleted = Set<String>()
            for rec in listing.ours {
                guard let key = LeaseKey(rec.name), !fits(key) else { continue }
                if rec.isReservation {
                    logger.warning("reservation \(rec.name) names this node but does not fit the current config (\(config.networksDescription)): left in place, not used")
                    continue
                }
                logger.info("deleting our lease \(rec.name): it does not fit the current config (\(config.networksDescription))")
                try? await registry.deleteLease(name: rec.name, expectedRevision: rec.revision)
                deleted.insert(rec.name)
            }

            // 1. Our own lease (or a reservation made for us).
            let mine = listing.ours.first { rec in LeaseKey(rec.name).map(fits) ?? false }
            if let rec = mine, let key = LeaseKey(rec.name) {
                let ttl = rec.isReservation ? nil : options.leaseTTL
                do {
                    let rev = try await registry.updateLease(name: rec.name, value: value, ttl: ttl, expectedRevision: rec.revision)
                    logger.info("reusing our lease \(key.subnetsDescription)\(rec.isReservation ? " (reservation, kept without TTL)" : "")")
                    return adopt(Lease(subnet: key.subnet, ipv6Subnet: key.ipv6Subnet, attributes: attributes,
                                       isReservation: rec.isReservation, ttl: ttl, revision: rev))
                } catch RegistryError.conflict {
                    counters.update { $0.acquireConflicts += 1 }
                    logger.debug("our lease \(key.subnetsDescription) changed while reusing it (attempt \(attempt)); re-listing")
                    continue
                }
            }

            // What any flannel node reads as taken (alias keys included) is never handed out.
            let taken = TakenSubnets(names: listing.names.lazy.filter { !deleted.contains($0) })

            // 2. The previous subnet.env's subnets, 3. a random one among the first 100 free, per family.
            let choice: IPv4Subnet
            if !config.enableIPv4 {
                choice = config.network
            } else if let pick = pick(previous: previousSubnet.flatMap { config.allows($0) ? $0 : nil }, from: config.candidateSubnets,
                                      free: taken.isFree) {
                choice = pick
            } else {
                throw AcquireError.noFreeSubnet(network: config.network, subnetLen: config.subnetLen, taken: taken.ipv4.count)
            }
            var ipv6Choice: IPv6Subnet?
            if let v6 = config.ipv6 {
                guard let pick = pick(previous: previousIPv6Subnet.flatMap { v6.allows($0) ? $0 : nil }, from: v6.candidateSubnets,
                                      free: taken.isFree) else {
                    throw AcquireError.noFreeIPv6Subnet(network: v6.network, subnetLen: v6.subnetLen, taken: taken.ipv6.count)
                }
                ipv6Choice = pick
            }
            let key = LeaseKey(subnet: choice, ipv6Subnet: ipv6Choice)
            let rev: Int64
            do {
                rev = try await registry.createLease(name: key.description, value: value, ttl: options.leaseTTL)
            } catch RegistryError.conflict {
                counters.update { $0.acquireConflicts += 1 }
                logger.debug("lost the race for \(key.subnetsDescription) (attempt \(attempt)); trying another subnet")
                continue
            }
            // Another key for an overlapping subnet, created before ours, holds it (see the file's note).
            if let earlier = try await earlierClaim(on: key, createdBefore: rev, config: config) {
                counters.update { $0.acquireConflicts += 1 }
                logger.info("\(earlier) was created just before our \(key) for an overlapping subnet; giving it up and trying another")
                try? await registry.deleteLease(name: key.description, expectedRevision: rev)
                continue
            }
            logger.info("acquired lease \(key.subnetsDescription)")
            return adopt(Lease(subnet: choice, ipv6Subnet: ipv6Choice, attributes: attributes, ttl: options.leaseTTL, revision: rev))
        }
        throw AcquireError.tooManyConflicts(attempts: options.acquireAttempts)
    }

    /// flannel's pick: the previous subnet when it is free, else a random one among the first 100
    /// free candidates; nil when none is free.
    private func pick<S: IPSubnetType>(previous: S?, from candidates: some Sequence<S>, free: (S) -> Bool) -> S? {
        if let previous, free(previous) { return previous }
        var firstFree: [S] = []
        for s in candidates where free(s) {
            firstFree.append(s)
            if firstFree.count == 100 { break }
        }
        return firstFree.randomElement()
    }

    /// The name of a key other than `key` whose subnet overlaps one of `key`'s (in a family the
    /// config runs) and that was created before `revision`, if any.
    private func earlierClaim(on key: LeaseKey, createdBefore revision: Int64, config: NetworkConfig) async throws -> String? {
        try await registry.reduceLeases(into: nil as String?) { found, rec in
            guard found == nil, rec.name != key.description, rec.createRevision < revision,
                  let theirs = LeaseDecoder.flannelSubnets(fromKey: rec.name) else { return }
            if config.enableIPv4, theirs.ipv4.overlaps(key.subnet) { found = rec.name }
            if config.ipv6 != nil, let mine = key.ipv6Subnet, let other = theirs.ipv6, other.overlaps(mine) { found = rec.name }
        }.result
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
                let rev = try await registry.updateLease(name: own.key, value: value, ttl: ttl, expectedRevision: own.revision)
                own.revision = rev
                counters.update { $0.renewals += 1 }
                return adopt(own)
            } catch RegistryError.conflict {
                // Changed since we wrote it: find out by whom.
                guard let rec = try await registry.getLease(name: own.key) else {
                    // Gone (expired while etcd was unreachable): take it back if no one else did.
                    do {
                        let rev = try await registry.createLease(name: own.key, value: value, ttl: ttl)
                        logger.warning("our lease \(own.subnetsDescription) had expired; re-created it")
                        own.revision = rev
                        counters.update { $0.renewals += 1 }
                        return adopt(own)
                    } catch RegistryError.conflict {
                        continue
                    }
                }
                let holder = try? LeaseDecoder.parseAttributes(rec.value).get()
                if let holder, own.attributes.sameNode(as: holder) {
                    own.revision = rec.revision
                    continue
                }
                throw declareLost(own, holder: holder, reason: "the key was rewritten by another node")
            }
        }
        throw RegistryError.conflict(key: own.key)
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
                logger.debug("renewed lease \(own.subnetsDescription)")
            } catch let e as LeaseLost {
                throw e
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                counters.update { $0.renewalFailures += 1 }
                if errorLog.allow("renew") {
                    logger.warning("renewing lease \(own.subnetsDescription) failed: \(error); retrying every \(retryInterval)")
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
        try await registry.deleteLease(name: own.key, expectedRevision: own.revision)
        ownLease = nil
        ownExpiry = nil
        logger.info("released lease \(own.subnetsDescription)")
    }

    // MARK: watch

    /// Called by the watcher for events on our own key.
    func ownKeyEvent(_ event: LeaseWatchEvent, holder: LeaseAttributes?) async {
        guard let own = ownLease, !lost, !releasing else { return }
        switch event {
        case .put(let rec):
            guard rec.revision > own.revision else { return }
            if let holder, own.attributes.sameNode(as: holder) {
                ownLease?.revision = rec.revision
            } else {
                _ = declareLost(own, holder: holder, reason: "the key was overwritten")
            }
        case .delete(_, let rev, let expired):
            guard rev > own.revision else { return }
            let pastExpiry = ownExpiry.map { ContinuousClock.now >= $0 - .seconds(1) } ?? false
            if expired || pastExpiry {
                logger.warning("our lease \(own.subnetsDescription) expired; re-creating it unless another node took the subnet")
                do { try await renewLease() } catch {
                    if errorLog.allow("recreate") { logger.warning("re-creating lease \(own.subnetsDescription) failed: \(error)") }
                }
            } else {
                _ = declareLost(own, holder: nil, reason: "the key was deleted by someone else")
            }
        case .progress:
            break
        }
    }

    func ownIdentity() -> OwnIdentity {
        OwnIdentity(key: ownLease?.key, subnet: ownLease?.subnet, publicIP: ownLease?.attributes.publicIP,
                    ipv6Subnet: ownLease?.ipv6Subnet, publicIPv6: ownLease?.attributes.publicIPv6)
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

    /// What one peer lease stands for: its IPv4 subnet, or in an IPv6-only network its IPv6 subnet.
    enum Slot: Hashable, Comparable, CustomStringConvertible {
        case ipv4(IPv4Subnet)
        case ipv6(IPv6Subnet)

        var description: String {
            switch self {
            case .ipv4(let s): s.description
            case .ipv6(let s): s.description
            }
        }
    }

    func slot(_ lease: Lease) -> Slot {
        config.enableIPv4 ? .ipv4(lease.subnet) : .ipv6(lease.ipv6Subnet ?? IPv6Subnet(containing: .unspecified, prefixLength: 0))
    }

    struct State {
        /// The peers as last told to the consumer: one lease per slot.
        var known: [Slot: Lease] = [:]
        /// Every valid peer lease by key. Two keys can name one subnet (an IPv4-only and a
        /// dual-stack node that raced for it): the one created first speaks for the subnet, and
        /// removing the other changes nothing. In a dual-stack network the same holds for the IPv6
        /// halves: a later key's IPv6 half is left out (its IPv4 half still counts).
        var byKey: [String: (lease: Lease, slot: Slot, created: Int64)] = [:]
        var keysBySlot: [Slot: Set<String>] = [:]
        /// Keys by their IPv6 half, in a dual-stack network.
        var keysByIPv6: [IPv6Subnet: Set<String>] = [:]
        var snapshotSent = false
        /// "key@revision" of rejections already logged, so a periodic re-list does not repeat them.
        var loggedRejections: Set<String> = []

        /// The key that speaks for `slot`: of its keys, the one created first (then by name).
        func winnerKey(_ slot: Slot) -> String? {
            keysBySlot[slot]?.compactMap { key in byKey[key].map { (key, $0.created) } }.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
        }

        /// The key whose IPv6 half holds `subnet`: of the slot winners naming it, the one created first.
        func ipv6Owner(_ subnet: IPv6Subnet) -> String? {
            keysByIPv6[subnet]?.compactMap { key -> (String, Int64)? in
                guard let entry = byKey[key], winnerKey(entry.slot) == key else { return nil }
                return (key, entry.created)
            }.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
        }

        /// The slots whose published lease may change when keys of `slot` (or a key with IPv6 half
        /// `ipv6`) change: the slot itself and every slot sharing an IPv6 half with its keys.
        func affectedSlots(_ slot: Slot, ipv6: IPv6Subnet?) -> Set<Slot> {
            var slots: Set<Slot> = [slot]
            var halves = Set(keysBySlot[slot, default: []].compactMap { byKey[$0]?.lease.ipv6Subnet })
            if let ipv6 { halves.insert(ipv6) }
            for half in halves {
                for key in keysByIPv6[half, default: []] { if let other = byKey[key]?.slot { slots.insert(other) } }
            }
            return slots
        }

        mutating func set(_ key: String, _ lease: Lease, slot: Slot, created: Int64, indexIPv6: Bool) {
            drop(key)
            byKey[key] = (lease, slot, created)
            keysBySlot[slot, default: []].insert(key)
            if indexIPv6, let v6 = lease.ipv6Subnet { keysByIPv6[v6, default: []].insert(key) }
        }

        /// Forgets `key`; returns the slot and IPv6 half it named.
        @discardableResult
        mutating func drop(_ key: String) -> (slot: Slot, ipv6: IPv6Subnet?)? {
            guard let old = byKey.removeValue(forKey: key) else { return nil }
            keysBySlot[old.slot]?.remove(key)
            if keysBySlot[old.slot]?.isEmpty == true { keysBySlot[old.slot] = nil }
            if let v6 = old.lease.ipv6Subnet {
                keysByIPv6[v6]?.remove(key)
                if keysByIPv6[v6]?.isEmpty == true { keysByIPv6[v6] = nil }
            }
            return (old.slot, old.lease.ipv6Subnet)
        }
    }

    /// Whether IPv6 halves of peers count next to IPv4 ones (a dual-stack network), so that two
    /// keys naming one IPv6 subnet must be told apart.
    private var dualStack: Bool { config.enableIPv4 && config.enableIPv6 }

    /// The lease told to the consumer for `slot`: the winner's, without its IPv6 half when that half
    /// is ours or an earlier key's (counted and logged once as `ipv6SubnetTaken`).
    private func published(_ slot: Slot, state: inout State, own: OwnIdentity) -> Lease? {
        guard let key = state.winnerKey(slot), var lease = state.byKey[key]?.lease else { return nil }
        guard dualStack, let v6 = lease.ipv6Subnet else { return lease }
        var holder: String?
        if v6 == own.ipv6Subnet || (own.publicIPv6 != nil && lease.attributes.publicIPv6 == own.publicIPv6) {
            holder = "this node"
        } else if let owner = state.ipv6Owner(v6), owner != key {
            holder = owner
        }
        guard let holder else { return lease }
        lease.ipv6Subnet = nil
        let tag = "\(key.prefix(128))@\(lease.revision)/ipv6"
        if !state.loggedRejections.contains(tag) {
            state.loggedRejections.insert(tag)
            manager.counters.reject(.ipv6SubnetTaken)
            manager.logger.warning("\(LeaseRejected(key: String(key.prefix(64)), reason: .ipv6SubnetTaken, detail: "its IPv6 subnet \(v6) is held by \(holder.prefix(64)); only its IPv4 half is used"))")
        }
        return lease
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
        let own = await manager.ownIdentity()
        state.byKey = [:]
        state.keysBySlot = [:]
        state.keysByIPv6 = [:]
        let (listed, revision) = try await manager.registry.reduceLeases(into: state) { state, rec in
            guard let lease = decode(rec, state: &state) else { return }
            if own.isOwn(lease, config: config) { return }
            state.set(rec.name, lease, slot: slot(lease), created: rec.createRevision, indexIPv6: dualStack)
        }
        state = listed
        var desired: [Slot: Lease] = [:]
        for slot in state.keysBySlot.keys { desired[slot] = published(slot, state: &state, own: own) }
        if !state.snapshotSent {
            state.snapshotSent = true
            state.known = desired
            continuation.yield(.snapshot(desired.sorted { $0.key < $1.key }.map(\.value)))
            return revision
        }
        var repaired = 0
        for (slot, old) in state.known where desired[slot] == nil {
            continuation.yield(.removed(old))
            repaired += 1
        }
        for (slot, lease) in desired.sorted(by: { $0.key < $1.key }) {
            if let old = state.known[slot] {
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
        let own = await manager.ownIdentity()
        switch event {
        case .put(let rec):
            // Our own key, by name: another key naming our subnet is someone else's lease.
            if let ownKey = own.key, rec.name == ownKey {
                let holder = try? LeaseDecoder.parseAttributes(rec.value).get()
                await manager.ownKeyEvent(event, holder: holder)
                return
            }
            // What the key named before and names now are re-decided, with the slots sharing an IPv6 half.
            var affected = Set<Slot>()
            if let previous = state.drop(rec.name) { affected.formUnion(state.affectedSlots(previous.slot, ipv6: previous.ipv6)) }
            if let lease = decode(rec, state: &state), !own.isOwn(lease, config: config) {
                let slot = slot(lease)
                state.set(rec.name, lease, slot: slot, created: rec.createRevision, indexIPv6: dualStack)
                affected.formUnion(state.affectedSlots(slot, ipv6: lease.ipv6Subnet))
            }
            for slot in affected.sorted() { publish(slot, state: &state, own: own) }
        case .delete(let name, _, _):
            if let ownKey = own.key, name == ownKey {
                await manager.ownKeyEvent(event, holder: nil)
                return
            }
            guard let previous = state.drop(name) else { return }
            for slot in state.affectedSlots(previous.slot, ipv6: previous.ipv6).sorted() { publish(slot, state: &state, own: own) }
        case .progress:
            break
        }
    }

    /// Tells the consumer what changed for `slot` now that its keys changed.
    private func publish(_ slot: Slot, state: inout State, own: OwnIdentity) {
        let now = published(slot, state: &state, own: own)
        let before = state.known[slot]
        state.known[slot] = now
        switch (before, now) {
        case (nil, let lease?): continuation.yield(.added(lease))
        case (let old?, nil): continuation.yield(.removed(old))
        case (let old?, let lease?) where !old.sameContent(as: lease): continuation.yield(.changed(lease))
        default: break
        }
    }
}
