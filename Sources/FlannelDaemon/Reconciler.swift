// Design note: leases say which peers should exist; each `PeerTable` (BPF maps, kernel routes/fdb,
// the userspace table) says which peers it holds *now*, read back from the store itself. A pass
// diffs the two per table, in order, and applies only the difference: stale entries removed first
// (so a subnet that moved to another node never has two owners), then new or changed ones upserted.
// Nothing is remembered between passes, so a periodic full pass repairs any drift (an entry deleted
// by hand, a map recreated). A failure is never log-and-continue: the pass reports it per table,
// readiness turns false, and the pass is retried with backoff until it succeeds.
//
// Lease filtering mirrors flannel: our own lease is skipped, and only leases written by the same
// backend type count (a vxlan node ignores host-gw leases and vice versa).

import Logging
import NetTypes
import ServiceLifecycle

/// The kind of backend the network config names, as far as peers are concerned.
public enum BackendKind: Sendable, Equatable, CustomStringConvertible {
    case vxlan(directRouting: Bool)
    case hostGW
    case udp

    /// The `BackendType` a lease written by this backend carries.
    public var leaseBackendType: String {
        switch self {
        case .vxlan: "vxlan"
        case .hostGW: "host-gw"
        case .udp: "udp"
        }
    }

    public var description: String {
        switch self {
        case .vxlan(let direct): direct ? "vxlan (DirectRouting)" : "vxlan"
        case .hostGW: "host-gw"
        case .udp: "udp"
        }
    }
}

/// What the reconciler needs of one lease; the Leases module's lease maps onto it.
public struct RemoteLease: Sendable, Hashable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var publicIP: IPv4Address
    /// `BackendType` from the lease JSON; nil when absent (the udp backend writes none).
    public var backendType: String?
    /// `BackendData.VtepMAC`, parsed; nil when absent or unparsable.
    public var vtepMAC: MACAddress?

    public init(subnet: IPv4Subnet, publicIP: IPv4Address, backendType: String?, vtepMAC: MACAddress?) {
        self.subnet = subnet
        self.publicIP = publicIP
        self.backendType = backendType
        self.vtepMAC = vtepMAC
    }

    public var description: String { "\(subnet) at \(publicIP) (\(backendType ?? "no BackendType"))" }
}

/// Turns the current lease set into the peers every table should hold.
public struct DesiredPeerPolicy: Sendable {
    public var ownSubnet: IPv4Subnet
    public var backend: BackendKind
    /// The underlay L2 network; with DirectRouting, peers whose PublicIP is inside it get `direct`.
    public var underlaySubnet: IPv4Subnet?

    public init(ownSubnet: IPv4Subnet, backend: BackendKind, underlaySubnet: IPv4Subnet?) {
        self.ownSubnet = ownSubnet
        self.backend = backend
        self.underlaySubnet = underlaySubnet
    }

    public struct Skipped: Sendable, Hashable {
        public var lease: RemoteLease
        public var reason: String
    }

    public func peers(from leases: some Sequence<RemoteLease>) -> (peers: Set<Peer>, skipped: [Skipped]) {
        var peers: Set<Peer> = []
        var skipped: [Skipped] = []
        for lease in leases {
            if lease.subnet == ownSubnet { continue }
            let type = lease.backendType ?? "udp"
            guard type == backend.leaseBackendType else {
                skipped.append(Skipped(lease: lease, reason: "BackendType \(type) is not this network's \(backend.leaseBackendType)"))
                continue
            }
            switch backend {
            case .vxlan(let directRouting):
                guard let mac = lease.vtepMAC else {
                    skipped.append(Skipped(lease: lease, reason: "vxlan lease without a valid BackendData.VtepMAC"))
                    continue
                }
                let direct = directRouting && (underlaySubnet?.contains(lease.publicIP) ?? false)
                peers.insert(Peer(subnet: lease.subnet, publicIP: lease.publicIP, vtepMAC: mac, direct: direct))
            case .hostGW, .udp:
                peers.insert(Peer(subnet: lease.subnet, publicIP: lease.publicIP, vtepMAC: nil))
            }
        }
        return (peers, skipped)
    }
}

/// One table as the reconciler drives it: which of the desired peers belong in it, and how the
/// table reports a peer it holds (e.g. the kernel keeps no MAC for a DirectRouting peer), so that
/// a correctly applied peer never looks like drift.
public struct PeerTableBinding: Sendable {
    public var table: any PeerTable
    public var selects: @Sendable (Peer) -> Bool
    public var view: @Sendable (Peer) -> Peer

    public init(_ table: any PeerTable, selects: @escaping @Sendable (Peer) -> Bool = { _ in true },
                view: @escaping @Sendable (Peer) -> Peer = { $0 }) {
        self.table = table
        self.selects = selects
        self.view = view
    }
}

public struct TableOutcome: Sendable, CustomStringConvertible {
    public var table: String
    public var removed: [Peer] = []
    public var upserted: [Peer] = []
    public var failures: [String] = []
    /// How many peers this table should hold.
    public var wanted: Int = 0

    public var succeeded: Bool { failures.isEmpty }
    public var changed: Bool { !removed.isEmpty || !upserted.isEmpty }

    public var description: String {
        var text = "\(table): +\(upserted.count) -\(removed.count) of \(wanted)"
        if !failures.isEmpty { text += "; FAILED: " + failures.joined(separator: "; ") }
        return text
    }
}

public struct ReconcileReport: Sendable, CustomStringConvertible {
    public var outcomes: [TableOutcome]
    public var desiredCount: Int
    public var duration: Duration

    public var succeeded: Bool { outcomes.allSatisfy(\.succeeded) }
    public var changed: Bool { outcomes.contains(where: \.changed) }
    public var description: String { outcomes.map(\.description).joined(separator: " | ") }
}

public actor Reconciler {
    private let bindings: [PeerTableBinding]
    private let readiness: Readiness?
    private let logger: Logger
    private let errorLog = RateLimitedLog(window: .seconds(60))
    private var desiredPeers: Set<Peer> = []
    private var failedPasses = 0
    public private(set) var lastReport: ReconcileReport?
    public private(set) var passCount = 0

    private let kicks: AsyncStream<Void>
    private let kickContinuation: AsyncStream<Void>.Continuation

    public init(tables: [PeerTableBinding], readiness: Readiness? = nil, logger: Logger) {
        self.bindings = tables
        self.readiness = readiness
        self.logger = logger
        (kicks, kickContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    public var desired: Set<Peer> { desiredPeers }

    /// Replaces the desired set and asks the running loop for a pass.
    public func setDesired(_ peers: Set<Peer>) {
        desiredPeers = peers
        kick()
    }

    /// Asks the running loop for a pass soon; kicks that arrive during a pass coalesce into one.
    public nonisolated func kick() {
        kickContinuation.yield()
    }

    /// One pass over every table, in order. Never throws: failures are in the report.
    @discardableResult
    public func reconcile() -> ReconcileReport {
        let clock = ContinuousClock()
        let start = clock.now
        var outcomes: [TableOutcome] = []
        for binding in bindings {
            outcomes.append(reconcile(binding))
        }
        let report = ReconcileReport(outcomes: outcomes, desiredCount: desiredPeers.count, duration: clock.now - start)
        record(report)
        return report
    }

    private func reconcile(_ binding: PeerTableBinding) -> TableOutcome {
        let table = binding.table
        var outcome = TableOutcome(table: table.tableName)
        let wanted = Set(desiredPeers.filter(binding.selects).map(binding.view))
        outcome.wanted = wanted.count
        let actual: Set<Peer>
        do {
            actual = try table.currentPeers()
        } catch {
            outcome.failures.append("reading the table: \(error)")
            return outcome
        }
        let wantedSubnets = Set(wanted.map(\.subnet))
        // Stale first: an entry whose subnet no lease wants any more.
        for peer in actual.subtracting(wanted) where !wantedSubnets.contains(peer.subnet) {
            do {
                try table.remove(peer)
                outcome.removed.append(peer)
            } catch {
                outcome.failures.append("remove \(peer): \(error)")
            }
        }
        // New or changed (upsert replaces the entry for the subnet).
        for peer in wanted.subtracting(actual).sorted(by: { $0.subnet < $1.subnet }) {
            do {
                try table.upsert(peer)
                outcome.upserted.append(peer)
            } catch {
                outcome.failures.append("upsert \(peer): \(error)")
            }
        }
        return outcome
    }

    private func record(_ report: ReconcileReport) {
        passCount += 1
        lastReport = report
        if report.succeeded {
            if failedPasses > 0 {
                logger.info("reconcile recovered after \(failedPasses) failed pass(es): \(report)")
                errorLog.reset("reconcile")
            } else if report.changed {
                logger.info("reconciled \(report.desiredCount) peer(s): \(report)")
            } else {
                logger.debug("reconcile pass: no drift", metadata: ["peers": "\(report.desiredCount)"])
            }
            failedPasses = 0
            readiness?.set(.tablesFilled, ok: true)
            readiness?.set(.reconcileHealthy, ok: true)
        } else {
            failedPasses += 1
            errorLog.log(logger, level: .error, key: "reconcile", "reconcile pass failed (attempt \(failedPasses), will retry): \(report)")
            readiness?.set(.reconcileHealthy, ok: false, detail: report.outcomes.filter { !$0.succeeded }.map(\.description).joined(separator: "; "))
        }
    }

    /// The delay before retrying after `failures` failed passes: 1 s doubling, never above `interval`.
    public static func retryDelay(afterFailures failures: Int, interval: Duration, base: Duration = .seconds(1)) -> Duration {
        var delay = base
        for _ in 1..<max(failures, 1) where delay < interval { delay *= 2 }
        return min(delay, interval)
    }

    /// Runs passes on every kick, every `interval` (drift repair), and after a failure with backoff,
    /// until graceful shutdown or cancellation. Leaves every table as it is when it stops.
    public func run(interval: Duration, retryBase: Duration = .seconds(1)) async {
        let kicks = self.kicks
        await withDiscardingTaskGroup { group in
            group.addTask { [kickContinuation] in
                while !Task.isCancelled {
                    do { try await Task.sleep(for: interval) } catch { return }
                    kickContinuation.yield()
                }
            }
            kick()
            for await _ in kicks.cancelOnGracefulShutdown() {
                let report = reconcile()
                if !report.succeeded {
                    let delay = Self.retryDelay(afterFailures: failedPasses, interval: interval, base: retryBase)
                    group.addTask { [kickContinuation] in
                        do { try await Task.sleep(for: delay) } catch { return }
                        kickContinuation.yield()
                    }
                }
            }
            group.cancelAll()
        }
    }
}

/// The reconcile loop as a service of the daemon's group.
public struct ReconcileService: Service {
    public let reconciler: Reconciler
    public let interval: Duration

    public init(reconciler: Reconciler, interval: Duration) {
        self.reconciler = reconciler
        self.interval = interval
    }

    public func run() async throws {
        await reconciler.run(interval: interval)
    }
}
