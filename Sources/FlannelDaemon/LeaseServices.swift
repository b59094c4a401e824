// The long-running parts that talk to etcd, each a Service of the daemon's group. None of them
// touches the data path directly: the watch only changes the reconciler's desired set, and the
// reconciler alone writes tables. On graceful shutdown they simply stop; the lease is not released
// (a restart re-takes the same subnet) and the tables are not cleared.

import Dataplane
import Leases
import Logging
import NetTypes
import ServiceLifecycle

/// The lease watch's event stream, read first by start-up (the snapshot) and then by the watch
/// service, so the watch is opened once and no event falls between the two.
/// @unchecked Sendable: one task at a time reads it — start-up has finished with it before the
/// service group starts the watch service.
public final class PeerEventCursor: @unchecked Sendable {
    private var iterator: AsyncStream<PeerEvent>.Iterator

    public init(_ stream: AsyncStream<PeerEvent>) {
        iterator = stream.makeAsyncIterator()
    }

    /// The next event; nil when the watch ended or the task was cancelled.
    public func next() async -> PeerEvent? {
        await iterator.next()
    }
}

/// Lease events → the reconciler's desired peers, one log line per peer change. Each event changes
/// one subnet's entry (O(1), whatever the number of peers); only a snapshot (a re-list after the
/// watch history was lost) replaces the whole set. The watch holds no copy of the leases: the
/// desired set lives in the reconciler, the leases for the last known state in the recorder.
public struct LeaseWatchService: Service {
    public let events: PeerEventCursor
    public let policy: DesiredPeerPolicy
    public let reconciler: Reconciler
    public let logger: Logger
    /// Keeps the on-disk last known state in step with the leases (nil: not kept).
    public let recorder: LastKnownRecorder?
    /// The leases' IPv6 halves, in a dual-stack or IPv6-only network.
    public let ipv6: IPv6PeerFollower?

    /// The reconciler (and the recorder) must already hold the start-up snapshot the watch
    /// continues from.
    public init(events: PeerEventCursor, policy: DesiredPeerPolicy, reconciler: Reconciler,
                recorder: LastKnownRecorder? = nil, ipv6: IPv6PeerFollower? = nil, logger: Logger) {
        self.ipv6 = ipv6
        self.events = events
        self.policy = policy
        self.reconciler = reconciler
        self.recorder = recorder
        self.logger = logger
    }

    public func run() async throws {
        let ended = await cancelWhenGracefulShutdown { [self] in
            await follow()
            return !Task.isCancelled
        }
        // The watch retries etcd errors by itself; its end without a shutdown is a bug to surface.
        if ended { throw StartupError.watchEnded }
    }

    private func follow() async {
        while let event = await events.next() {
            switch event {
            case .snapshot(let all):
                logger.info("lease snapshot: \(all.count) peer lease(s)")
                let (peers, skipped) = policy.peers(from: all.map(RemoteLease.init))
                for skip in skipped {
                    logger.debug("lease \(skip.lease.subnet) ignored: \(skip.reason)")
                }
                await reconciler.setDesired(peers)
                await ipv6?.replace(all)
                await recorder?.replace(all)
            case .added(let lease):
                logger.info("peer added: \(lease)")
                await follow(lease)
            case .changed(let lease):
                logger.info("peer changed: \(lease)")
                await follow(lease)
            case .removed(let lease):
                logger.info("peer removed: \(lease.subnet)")
                await reconciler.removeDesired(lease.subnet)
                await ipv6?.remove(lease)
                await recorder?.remove(lease.subnet)
            }
        }
    }

    private func follow(_ lease: Lease) async {
        switch policy.verdict(for: RemoteLease(lease)) {
        case .peer(let peer):
            await reconciler.updateDesired(peer)
        case .own:
            await reconciler.removeDesired(lease.subnet)
        case .skipped(let reason):
            logger.debug("lease \(lease.subnet) ignored: \(reason)")
            // A subnet whose lease is no longer usable has no peer any more.
            await reconciler.removeDesired(lease.subnet)
        }
        await ipv6?.update(lease)
        await recorder?.update(lease)
    }
}

/// The leases' IPv6 halves → the IPv6 reconciler, beside the IPv4 one (which the same events
/// drive): each lease's IPv6 subnet is one entry of the IPv6 desired set.
public struct IPv6PeerFollower: Sendable {
    public let policy: DesiredIPv6PeerPolicy
    public let reconciler: IPv6Reconciler
    public let logger: Logger

    public init(policy: DesiredIPv6PeerPolicy, reconciler: IPv6Reconciler, logger: Logger) {
        self.policy = policy
        self.reconciler = reconciler
        self.logger = logger
    }

    /// The whole set from a snapshot; returns how many IPv6 peers it holds.
    @discardableResult
    public func replace(_ leases: [Lease]) async -> Int {
        let (peers, skipped) = policy.peers(from: leases.map(RemoteLease.init))
        for skip in skipped { logger.info("IPv6 half of lease \(skip.lease.subnet) ignored: \(skip.reason)") }
        await reconciler.setDesired(peers)
        return peers.count
    }

    public func update(_ lease: Lease) async {
        switch policy.verdict(for: RemoteLease(lease)) {
        case .peer(let peer):
            await reconciler.updateDesired(peer)
        case .own, .noIPv6Half:
            if let subnet = lease.ipv6Subnet { await reconciler.removeDesired(subnet) }
        case .skipped(let reason):
            logger.debug("IPv6 half of lease \(lease.subnetsDescription) ignored: \(reason)")
            if let subnet = lease.ipv6Subnet { await reconciler.removeDesired(subnet) }
        }
    }

    public func remove(_ lease: Lease) async {
        if let subnet = lease.ipv6Subnet, subnet != policy.ownSubnet { await reconciler.removeDesired(subnet) }
    }
}

/// Renews the lease before it expires. Ends the daemon (by throwing) when the lease was lost to
/// someone else, as flanneld does: a restart acquires a fresh one.
public struct LeaseRenewService: Service {
    public let manager: SubnetManager
    public let logger: Logger

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask { try await manager.runRenewLoop() }
                    group.addTask {
                        for await lost in manager.ownLeaseLost {
                            throw lost
                        }
                    }
                }
            }
        } catch is CancellationError {
            return
        } catch let lost as LeaseLost {
            logger.critical("\(lost); exiting so that a restart acquires a new lease")
            throw lost
        }
    }
}
