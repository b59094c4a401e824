// Design note: leases say which peers should exist; each `PeerTable` (BPF maps, kernel routes/fdb,
// the userspace table) holds peers in its own store. A pass applies the difference per table, in
// order: stale entries removed first (so a subnet that moved to another node never has two owners),
// then new or changed ones upserted (replace semantics). Two kinds of pass:
//
// - Full: the table is read back from its store (a map dump; route, neighbour and fdb dumps) and
//   diffed against the whole desired set, so it repairs any drift (an entry deleted by hand, a map
//   recreated). O(N) per table. The start-up fill, the periodic pass (--reconcile-interval) and any
//   pass of a table whose previous pass failed are full.
// - Changes (what a lease event triggers): a table whose previous pass succeeded holds exactly the
//   desired set of that pass, so only the subnets whose desired peer changed since then are written.
//   O(changes), whatever N is. The reconciler remembers no copy of any table: per table only "the
//   previous pass succeeded", and per changed subnet the peer it had at the previous pass.
//
// A failure is never log-and-continue: the pass reports it per table (to every pass observer: the
// daemon's readiness turns false), the table loses its "in sync" mark (its next pass reads it back
// in full), and the pass is retried with backoff until it succeeds. Drift made behind the
// reconciler's back is repaired by the next full pass, as when every pass read back; a change pass
// only writes subnets the leases changed.
//
// The order of the tables is part of the contract (`TableStage`): every pass applies the data path's
// own tables (the BPF maps, the userspace table) before the kernel's state (routes, neighbours,
// fdb), so a packet the new routes steer somewhere already finds its peer in the maps. A new kind of
// table takes the stage that says where it sits on the packet's way.
//
// The kernel stage is off the data path's critical path: with the covering route (the whole network
// into flannel.<VNI>), a peer is reachable once its map entry exists; its neighbour, fdb and route
// are the fallback path. So a pass may be asked for some stages only (start-up fills the maps, says
// READY, and leaves the kernel stage to the loop's first pass), each stage keeps its own record of
// the subnets changed since its previous pass, and a long kernel stage (the first fill of 50 000
// peers) is written in chunks, batched per netlink send, between which the actor lets lease events
// in and writes their map entries at once: a new lease never waits for the fallback state of the
// others. `progress` says how far each stage has got (/readyz, `status`).
//
// Every table call may block in the kernel (a dump of every peer's map entry or route): the actor
// runs on a thread of its own (`DedicatedThreadExecutor`), never on Swift's shared pool, whose two
// threads the rest of the daemon (etcd, timers, HTTP) needs.

import Logging
import NetTypes
import RuntimeSupport
import ServiceLifecycle
import Synchronization

/// Where a table sits on the packet's way, which fixes the order every pass applies the tables in
/// (the design note): first what takes the packet first, then what it falls back to.
public enum TableStage: Int, Sendable, Hashable, Comparable, CaseIterable {
    /// The data path's own tables: the BPF maps (encap takes the packet before the kernel would),
    /// the userspace path's table.
    case dataPath
    /// The kernel's state: routes, neighbours, fdb entries. The routes steer pod traffic into
    /// flannel.<VNI>; with the programs detached they are the stock flannel path.
    case kernelState

    public static func < (a: TableStage, b: TableStage) -> Bool { a.rawValue < b.rawValue }

    /// How /readyz and `status` name the stage.
    public var label: String {
        switch self {
        case .dataPath: "maps"
        case .kernelState: "kernel"
        }
    }
}

/// How far peer programming has got, per stage: "peers: maps 5000/5000, kernel 1200/5000".
public struct PeerProgress: Sendable, Equatable, CustomStringConvertible {
    public struct Count: Sendable, Equatable {
        /// Peers in place in every table of the stage (a table being filled counts what it wrote).
        public var programmed: Int
        public var wanted: Int
        /// Every table of the stage holds its desired set as of its last pass.
        public var inSync: Bool
    }

    /// The stages that have tables, in order.
    public var stages: [(stage: TableStage, count: Count)]
    /// Every table of every stage is in sync.
    public var complete: Bool { stages.allSatisfy(\.count.inSync) }

    public func count(_ stage: TableStage) -> Count? { stages.first { $0.stage == stage }?.count }

    public var description: String {
        "peers: " + stages.map { "\($0.stage.label) \($0.count.programmed)/\($0.count.wanted)" }.joined(separator: ", ")
    }

    public static func == (a: PeerProgress, b: PeerProgress) -> Bool {
        a.stages.count == b.stages.count && zip(a.stages, b.stages).allSatisfy { $0.stage == $1.stage && $0.count == $1.count }
    }
}

/// One table as the reconciler drives it: its stage, which of the desired peers belong in it, and
/// how the table reports a peer it holds (e.g. the kernel keeps no MAC for a DirectRouting peer),
/// so that a correctly applied peer never looks like drift.
/// Generic over the family (`Peer`, `IPv6Peer`): each family has its own reconciler and tables.
public struct FamilyTableBinding<P: OverlayPeer>: Sendable {
    public var table: any FamilyPeerTable<P>
    public var stage: TableStage
    public var selects: @Sendable (P) -> Bool
    public var view: @Sendable (P) -> P

    public init(_ table: any FamilyPeerTable<P>, stage: TableStage = .dataPath, selects: @escaping @Sendable (P) -> Bool = { _ in true },
                view: @escaping @Sendable (P) -> P = { $0 }) {
        self.table = table
        self.stage = stage
        self.selects = selects
        self.view = view
    }
}

/// How a pass treats the tables.
public enum PassKind: String, Sendable {
    /// Every table read back from its store and repaired against the whole desired set.
    case full
    /// Only the subnets whose desired peer changed since the previous pass, on every table whose
    /// previous pass succeeded; a table whose previous pass failed (or that never had one) is read
    /// back in full all the same.
    case changes
}

public typealias PeerTableBinding = FamilyTableBinding<Peer>
public typealias IPv6TableBinding = FamilyTableBinding<IPv6Peer>

public struct FamilyTableOutcome<P: OverlayPeer>: Sendable, CustomStringConvertible {
    public var table: String
    public var removed: [P] = []
    public var upserted: [P] = []
    public var failures: [String] = []
    /// How many peers this table should hold.
    public var wanted: Int = 0
    /// true: the table was read back and diffed in full; false: only the changes were applied.
    public var readBack: Bool = true

    public var succeeded: Bool { failures.isEmpty }
    public var changed: Bool { !removed.isEmpty || !upserted.isEmpty }

    public var description: String {
        var text = "\(table): +\(upserted.count) -\(removed.count) of \(wanted)"
        if !failures.isEmpty { text += "; FAILED: " + failures.joined(separator: "; ") }
        return text
    }
}

public typealias TableOutcome = FamilyTableOutcome<Peer>

public struct FamilyReconcileReport<P: OverlayPeer>: Sendable, CustomStringConvertible {
    public var outcomes: [FamilyTableOutcome<P>]
    public var desiredCount: Int
    public var duration: Duration
    /// The kind of pass asked for (a `.changes` pass may still read some tables back: see `readBack`).
    public var kind: PassKind = .full
    /// The stages this pass applied (start-up's first pass: the data path's only).
    public var stages: Set<TableStage> = Set(TableStage.allCases)

    public var succeeded: Bool { outcomes.allSatisfy(\.succeeded) }
    public var changed: Bool { outcomes.contains(where: \.changed) }
    /// The failed tables' outcomes, one line (what readiness shows); empty when the pass succeeded.
    public var failureSummary: String { outcomes.filter { !$0.succeeded }.map(\.description).joined(separator: "; ") }
    /// Some table was read back in this pass.
    public var readBack: Bool { outcomes.contains(where: \.readBack) }
    public var description: String { outcomes.map(\.description).joined(separator: " | ") }
}

public typealias ReconcileReport = FamilyReconcileReport<Peer>
public typealias IPv6ReconcileReport = FamilyReconcileReport<IPv6Peer>

/// The IPv4 peers' reconciler (flannel.<VNI>, fxdp_peers); `IPv6Reconciler` drives the IPv6 halves
/// (flannel-v6.<VNI>, fxdp_peers6) the same way, on a thread of its own.
public typealias Reconciler = FamilyReconciler<Peer>
public typealias IPv6Reconciler = FamilyReconciler<IPv6Peer>

public actor FamilyReconciler<P: OverlayPeer> {
    public typealias Report = FamilyReconcileReport<P>
    /// The tables in the order every pass applies them: by stage, and in the given order within one.
    private let bindings: [FamilyTableBinding<P>]
    private let logger: Logger
    /// The thread the actor runs on (see the design note).
    private let thread: DedicatedThreadExecutor
    public nonisolated var unownedExecutor: UnownedSerialExecutor { thread.asUnownedSerialExecutor() }
    private let errorLog = RateLimitedLog(window: .seconds(60))
    /// The desired peers, one per subnet.
    private var desiredBySubnet: [P.Subnet: P] = [:]
    /// What a subnet's desired peer was at the previous pass (nil: none wanted there then).
    private struct Before { var peer: P? }
    /// Per stage (by raw value): every subnet whose desired peer changed since the stage's previous
    /// pass, with what it was then. The stage's tables in sync hold exactly that earlier state, so
    /// these entries are all a change pass needs.
    private var changedSince: [[P.Subnet: Before]] = Array(repeating: [:], count: TableStage.allCases.count)
    /// Per table: its previous pass succeeded, so it holds the desired set of that pass (as the
    /// binding selects and views it). false forces its next pass to read it back.
    private var inSync: [Bool]
    /// Per table: how many peers it should hold as of its previous pass.
    private var wantedCounts: [Int]
    /// Per table: writes its running pass still has to make (progress); nil before its first pass.
    private var outstanding: [Int?]
    /// Peers per kernel-stage chunk: between chunks, lease events get in and reach the maps.
    public static var chunkSize: Int { 1024 }
    private var progressObservers: [@Sendable (PeerProgress) -> Void] = []
    /// `holdKernelStage`: the kernel stage waits before it writes anything; meanwhile lease events
    /// still reach the data path's tables. The continuation wakes the held pass for either.
    private var kernelStageHeld = false
    /// A pass is running (it may be suspended between kernel chunks); others wait their turn.
    private var passRunning = false
    private var passWaiters: [CheckedContinuation<Void, Never>] = []
    private var heldStageWake: CheckedContinuation<Void, Never>?
    /// The periodic timer asked for a full pass; the next pass reads every table back.
    private var fullPassDue = false
    private var failedPasses = 0
    public private(set) var lastReport: Report?
    public private(set) var passCount = 0
    /// How many passes read at least one table back (start-up fill, periodic, after failures).
    public private(set) var readBackPassCount = 0

    private let kicks: AsyncStream<Void>
    private let kickContinuation: AsyncStream<Void>.Continuation
    /// A kick asked for a pass. The loop also wakes for heartbeats, which run no pass: the flag
    /// tells the two apart (a heartbeat may replace a kick in the one-slot buffer; the flag stays).
    private let passRequested = Atomic<Bool>(false)
    /// The heartbeat timer fired: the loop's next wake-up beats with `watchdog` true.
    private let beatDue = Atomic<Bool>(false)
    /// Told about every pass (the metrics' duration histogram and failure counter, the state file).
    private var passObservers: [@Sendable (Report) -> Void] = []

    /// `onPass` is told about every pass from the first one on (see `observePasses`).
    public init(tables: [FamilyTableBinding<P>], logger: Logger, threadName: String = "fxdp-reconcile", onPass: (@Sendable (Report) -> Void)? = nil,
                onProgress: (@Sendable (PeerProgress) -> Void)? = nil) {
        bindings = tables.enumerated().sorted { ($0.element.stage, $0.offset) < ($1.element.stage, $1.offset) }.map(\.element)
        self.logger = logger
        thread = DedicatedThreadExecutor(name: threadName)
        if let onPass { passObservers = [onPass] }
        if let onProgress { progressObservers = [onProgress] }
        inSync = Array(repeating: false, count: tables.count)
        wantedCounts = Array(repeating: 0, count: tables.count)
        outstanding = Array(repeating: nil, count: tables.count)
        (kicks, kickContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    deinit {
        thread.shutdown()
    }

    /// The table names in the order every pass applies them.
    public nonisolated var tableOrder: [String] { bindings.map(\.table.tableName) }

    /// The desired peers as a set (O(N): for tests and inspection; `desiredCount` is O(1)).
    public var desired: Set<P> { Set(desiredBySubnet.values) }
    public var desiredCount: Int { desiredBySubnet.count }
    public func desiredPeer(for subnet: P.Subnet) -> P? { desiredBySubnet[subnet] }

    /// Replaces the desired set and asks the running loop for a pass. O(N): for snapshots; a
    /// single lease event goes through `updateDesired`/`removeDesired`. One peer per subnet: of two
    /// peers for the same subnet, the one with the higher PublicIP is kept.
    public func setDesired(_ peers: Set<P>) {
        var next: [P.Subnet: P] = Dictionary(minimumCapacity: peers.count)
        for peer in peers {
            if let other = next[peer.subnet], other.publicIP >= peer.publicIP { continue }
            next[peer.subnet] = peer
        }
        for (subnet, old) in desiredBySubnet where next[subnet] != old { noteChange(subnet, was: old) }
        for subnet in next.keys where desiredBySubnet[subnet] == nil { noteChange(subnet, was: nil) }
        desiredBySubnet = next
        kick()
    }

    /// Sets the desired peer for `peer.subnet` (added or changed); asks for a pass if that changes anything.
    public func updateDesired(_ peer: P) {
        let old = desiredBySubnet[peer.subnet]
        guard old != peer else { return }
        noteChange(peer.subnet, was: old)
        desiredBySubnet[peer.subnet] = peer
        kick()
    }

    /// No peer is wanted at `subnet` any more; asks for a pass if one was.
    public func removeDesired(_ subnet: P.Subnet) {
        guard let old = desiredBySubnet.removeValue(forKey: subnet) else { return }
        noteChange(subnet, was: old)
        kick()
    }

    private func noteChange(_ subnet: P.Subnet, was old: P?) {
        // The first change since the stage's pass counts: that is what its tables hold.
        for stage in changedSince.indices where changedSince[stage][subnet] == nil {
            changedSince[stage][subnet] = Before(peer: old)
        }
        wakeHeldStage()
    }

    private func wakeHeldStage() {
        heldStageWake?.resume()
        heldStageWake = nil
    }

    /// Asks the running loop for a pass soon; kicks that arrive during a pass coalesce into one.
    public nonisolated func kick() {
        passRequested.store(true, ordering: .releasing)
        kickContinuation.yield()
    }

    private nonisolated func heartbeatDue() {
        beatDue.store(true, ordering: .releasing)
        kickContinuation.yield()
    }

    /// Calls `observer` with every pass from now on, and at once with the latest pass (the
    /// start-up fill, which runs before the metrics exist).
    public func observePasses(_ observer: @escaping @Sendable (Report) -> Void) {
        passObservers.append(observer)
        if let lastReport { observer(lastReport) }
    }

    /// Calls `observer` with the progress after every table and every kernel chunk, and at once.
    public func observeProgress(_ observer: @escaping @Sendable (PeerProgress) -> Void) {
        progressObservers.append(observer)
        observer(progress)
    }

    /// How far each stage has got (see `PeerProgress`).
    public var progress: PeerProgress {
        var stages: [(stage: TableStage, count: PeerProgress.Count)] = []
        for index in bindings.indices {
            let stage = bindings[index].stage
            let wanted = outstanding[index] == nil ? desiredBySubnet.count : wantedCounts[index]
            let programmed = max(0, wanted - (outstanding[index] ?? wanted))
            if let at = stages.firstIndex(where: { $0.stage == stage }) {
                stages[at].count.programmed = min(stages[at].count.programmed, programmed)
                stages[at].count.wanted = max(stages[at].count.wanted, wanted)
                stages[at].count.inSync = stages[at].count.inSync && inSync[index]
            } else {
                stages.append((stage, PeerProgress.Count(programmed: programmed, wanted: wanted, inSync: inSync[index])))
            }
        }
        return PeerProgress(stages: stages)
    }

    private func reportProgress() {
        guard !progressObservers.isEmpty else { return }
        let now = progress
        for observer in progressObservers { observer(now) }
    }

    /// Makes the kernel stage wait before it writes anything, until `releaseKernelStage`, while
    /// lease events still reach the data path's tables (tests: the map-first order, readiness while
    /// the kernel state is being programmed).
    public func holdKernelStage() { kernelStageHeld = true }

    public func releaseKernelStage() {
        kernelStageHeld = false
        wakeHeldStage()
    }

    /// The kernel stage is waiting in `holdKernelStage`.
    public var kernelStageWaiting: Bool { heldStageWake != nil }

    /// Makes the next pass of the running loop a full one, and asks for it.
    public func requestFullPass() {
        fullPassDue = true
        kick()
    }

    /// One pass over every table of `stages`, in order: `.full` (the default) reads every table
    /// back, `.changes` applies only what changed since the previous pass where that is safe (see
    /// the design note). Never throws: failures are in the report. One pass at a time: a pass
    /// asked for while another runs (it lets lease events in between its kernel chunks) waits.
    @discardableResult
    public func reconcile(_ kind: PassKind = .full, stages: Set<TableStage> = Set(TableStage.allCases)) async -> Report {
        while passRunning { await withCheckedContinuation { passWaiters.append($0) } }
        passRunning = true
        defer {
            passRunning = false
            if !passWaiters.isEmpty { passWaiters.removeFirst().resume() }
        }
        let clock = ContinuousClock()
        let start = clock.now
        var outcomes: [FamilyTableOutcome<P>] = []
        var interleaved: [FamilyTableOutcome<P>] = []
        outcomes.reserveCapacity(bindings.count)
        for stage in TableStage.allCases where stages.contains(stage) {
            while stage == .kernelState, kernelStageHeld {
                await withCheckedContinuation { heldStageWake = $0 }
                await applyDataPathChanges(&interleaved)
            }
            outcomes += await applyStage(stage, kind, interleaved: &interleaved)
        }
        outcomes += interleaved
        let report = Report(outcomes: outcomes, desiredCount: desiredBySubnet.count,
                                     duration: clock.now - start, kind: kind, stages: stages)
        record(report)
        return report
    }

    /// The tables of `stage`: each read back (full pass, or not in sync) or given the stage's
    /// changes. A data path stage run between kernel chunks adds its outcomes to `interleaved`.
    private func applyStage(_ stage: TableStage, _ kind: PassKind, interleaved: inout [FamilyTableOutcome<P>]) async -> [FamilyTableOutcome<P>] {
        let changes = changedSince[stage.rawValue]
        changedSince[stage.rawValue] = [:]
        var outcomes: [FamilyTableOutcome<P>] = []
        for index in bindings.indices where bindings[index].stage == stage {
            let outcome = kind == .full || !inSync[index]
                ? await fullPass(index, interleaved: &interleaved) : await changesPass(index, changes, interleaved: &interleaved)
            // A table that failed (read or write) may hold anything now: its next pass reads it back.
            inSync[index] = outcome.succeeded
            outstanding[index] = outcome.succeeded ? 0 : outcome.failures.count
            outcomes.append(outcome)
            reportProgress()
        }
        return outcomes
    }

    /// The table read back and diffed against the whole desired set: O(N), repairs drift.
    private func fullPass(_ index: Int, interleaved: inout [FamilyTableOutcome<P>]) async -> FamilyTableOutcome<P> {
        let binding = bindings[index]
        let table = binding.table
        var outcome = FamilyTableOutcome<P>(table: table.tableName)
        var wanted = Set<P>(minimumCapacity: desiredBySubnet.count)
        for peer in desiredBySubnet.values where binding.selects(peer) { wanted.insert(binding.view(peer)) }
        outcome.wanted = wanted.count
        wantedCounts[index] = wanted.count
        let actual: Set<P>
        do {
            actual = try table.currentPeers()
        } catch {
            outcome.failures.append("reading the table: \(error)")
            return outcome
        }
        // Stale: an entry whose subnet no lease wants any more. New or changed: upsert replaces the
        // entry for the subnet.
        let stale = actual.filter { !wanted.contains($0) && desiredSubnetSelected($0.subnet, binding) == nil }
        await apply(removing: Array(stale), upserting: Array(wanted.subtracting(actual)), to: index, &outcome, interleaved: &interleaved)
        return outcome
    }

    /// Stale entries first (a subnet that moved never has two owners), then new or changed ones;
    /// each in subnet order, in batches. Every failure is recorded, and the rest still applied. A
    /// kernel-stage table is written in chunks; between two, lease events that came meanwhile are
    /// let in and written to the data path's tables first (the design note).
    private func apply(removing stale: [P], upserting fresh: [P], to index: Int, _ outcome: inout FamilyTableOutcome<P>,
                       interleaved: inout [FamilyTableOutcome<P>]) async {
        let table = bindings[index].table
        let chunked = bindings[index].stage == .kernelState
        let chunk = chunked ? Self.chunkSize : Int.max
        outstanding[index] = stale.count + fresh.count
        let work: [(remove: Bool, peers: [P])] = [(true, stale.sorted { $0.subnet < $1.subnet }), (false, fresh.sorted { $0.subnet < $1.subnet })]
        for (removing, peers) in work {
            var at = 0
            while at < peers.count {
                let part = Array(peers[at..<min(at + chunk, peers.count)])
                at += part.count
                let failures = removing ? table.remove(batch: part) : table.upsert(batch: part)
                let failed = Set(failures.map(\.0.subnet))
                for peer in part where !failed.contains(peer.subnet) {
                    if removing { outcome.removed.append(peer) } else { outcome.upserted.append(peer) }
                }
                for (peer, error) in failures { outcome.failures.append("\(removing ? "remove" : "upsert") \(peer): \(error)") }
                outstanding[index] = (outstanding[index] ?? part.count) - part.count
                guard chunked else { continue }
                reportProgress()
                await Task.yield()
                await applyDataPathChanges(&interleaved)
            }
        }
    }

    /// During a kernel stage: lease events that came meanwhile, to the data path's tables now.
    private func applyDataPathChanges(_ interleaved: inout [FamilyTableOutcome<P>]) async {
        guard !changedSince[TableStage.dataPath.rawValue].isEmpty else { return }
        var none: [FamilyTableOutcome<P>] = []
        interleaved += await applyStage(.dataPath, .changes, interleaved: &none)
    }

    /// The desired peer at `subnet` as `binding` sees it, nil when the table should hold none there.
    private func desiredSubnetSelected(_ subnet: P.Subnet, _ binding: FamilyTableBinding<P>) -> P? {
        guard let peer = desiredBySubnet[subnet], binding.selects(peer) else { return nil }
        return binding.view(peer)
    }

    /// Only the subnets in `changes`, on a table that holds the previous pass's desired set:
    /// O(changes), no read-back. Same order as a full pass: stale removals, then upserts.
    private func changesPass(_ index: Int, _ changes: [P.Subnet: Before], interleaved: inout [FamilyTableOutcome<P>]) async -> FamilyTableOutcome<P> {
        let binding = bindings[index]
        let table = binding.table
        var outcome = FamilyTableOutcome<P>(table: table.tableName, readBack: false)
        var stale: [P] = []
        var fresh: [P] = []
        var count = wantedCounts[index]
        for (subnet, before) in changes {
            let was = before.peer.flatMap { binding.selects($0) ? binding.view($0) : nil }
            let now = desiredSubnetSelected(subnet, binding)
            guard was != now else { continue }
            if let now {
                fresh.append(now)
                if was == nil { count += 1 }
            } else if let was {
                stale.append(was)
                count -= 1
            }
        }
        outcome.wanted = count
        wantedCounts[index] = count
        await apply(removing: stale, upserting: fresh, to: index, &outcome, interleaved: &interleaved)
        return outcome
    }

    private func record(_ report: Report) {
        passCount += 1
        for observer in passObservers { observer(report) }
        if report.readBack { readBackPassCount += 1 }
        lastReport = report
        if report.succeeded {
            if failedPasses > 0 {
                logger.info("reconcile recovered after \(failedPasses) failed pass(es): \(report)")
                errorLog.reset("reconcile")
            } else if report.changed {
                logger.info("reconciled \(report.desiredCount) peer(s) (\(report.readBack ? "read back" : "changes only")): \(report)")
            } else {
                logger.debug("reconcile pass: no drift", metadata: ["peers": "\(report.desiredCount)", "kind": "\(report.kind)"])
            }
            failedPasses = 0
        } else {
            failedPasses += 1
            errorLog.log(logger, level: .error, key: "reconcile", "reconcile pass failed (attempt \(failedPasses), will retry reading the failed table(s) back): \(report)")
        }
    }

    /// The delay before retrying after `failures` failed passes: 1 s doubling, never above `interval`.
    public static func retryDelay(afterFailures failures: Int, interval: Duration, base: Duration = .seconds(1)) -> Duration {
        var delay = base
        for _ in 1..<max(failures, 1) where delay < interval { delay *= 2 }
        return min(delay, interval)
    }

    /// What the loop does besides passes: every `every`, and after every pass, it calls `beat`
    /// with the desired peer count; `watchdog` is true for the timed beats. The daemon pings
    /// systemd's watchdog from it (ServiceManagerLink): the pings stop when this loop stops moving.
    public struct Heartbeat: Sendable {
        public var every: Duration
        public var beat: @Sendable (_ peers: Int, _ watchdog: Bool) -> Void

        public init(every: Duration, beat: @escaping @Sendable (_ peers: Int, _ watchdog: Bool) -> Void) {
            self.every = every
            self.beat = beat
        }
    }

    /// Runs a change pass on every kick, a full pass every `interval` (drift repair), and after a
    /// failure a retry with backoff (which reads the failed tables back), until graceful shutdown or
    /// cancellation. With a `heartbeat`, beats from this loop between and after passes. Leaves
    /// every table as it is when it stops.
    public func run(interval: Duration, retryBase: Duration = .seconds(1), heartbeat: Heartbeat? = nil) async {
        let kicks = self.kicks
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    do { try await Task.sleep(for: interval) } catch { return }
                    await self.requestFullPass()
                }
            }
            if let heartbeat {
                group.addTask {
                    while !Task.isCancelled {
                        do { try await Task.sleep(for: heartbeat.every) } catch { return }
                        self.heartbeatDue()
                    }
                }
            }
            kick()
            for await _ in kicks.cancelOnGracefulShutdown() {
                if passRequested.exchange(false, ordering: .acquiringAndReleasing) {
                    let kind: PassKind = fullPassDue ? .full : .changes
                    fullPassDue = false
                    let report = await reconcile(kind)
                    if !report.succeeded {
                        let delay = Self.retryDelay(afterFailures: failedPasses, interval: interval, base: retryBase)
                        group.addTask {
                            do { try await Task.sleep(for: delay) } catch { return }
                            self.kick()
                        }
                    }
                }
                heartbeat?.beat(desiredBySubnet.count, beatDue.exchange(false, ordering: .acquiringAndReleasing))
            }
            group.cancelAll()
        }
    }
}

/// The reconcile loop as a service of the daemon's group.
public struct ReconcileService<P: OverlayPeer>: Service {
    public let reconciler: FamilyReconciler<P>
    public let interval: Duration
    public let heartbeat: FamilyReconciler<P>.Heartbeat?

    public init(reconciler: FamilyReconciler<P>, interval: Duration, heartbeat: FamilyReconciler<P>.Heartbeat? = nil) {
        self.reconciler = reconciler
        self.interval = interval
        self.heartbeat = heartbeat
    }

    public func run() async throws {
        await reconciler.run(interval: interval, heartbeat: heartbeat)
    }
}
