// Counters for metrics and for tests that prove there is no reconnect storm. Read with `snapshot()`.

import Synchronization

public final class LeaseCounters: Sendable {
    public struct Snapshot: Sendable, Equatable {
        /// Watch (re)connections after a failure (not the first one).
        public var watchReconnects = 0
        /// Re-lists caused by compaction (v3) or a cleared index (v2).
        public var historyRelists = 0
        /// Periodic repair re-lists.
        public var periodicRelists = 0
        /// Peer events the periodic or recovery re-list found that the watch had missed.
        public var repairedByRelist = 0
        /// Leases skipped, by reason.
        public var rejected: [LeaseRejection: Int] = [:]
        public var renewals = 0
        public var renewalFailures = 0
        /// Lost compare-and-swap races while acquiring.
        public var acquireConflicts = 0
        /// Requests that failed on one endpoint and moved to the next.
        public var endpointFailovers = 0

        public var rejectedTotal: Int { rejected.values.reduce(0, +) }
    }

    private let state = Mutex(Snapshot())

    public init() {}

    public func snapshot() -> Snapshot { state.withLock { $0 } }

    func update(_ body: (inout Snapshot) -> Void) {
        state.withLock { body(&$0) }
    }

    func reject(_ reason: LeaseRejection) {
        state.withLock { $0.rejected[reason, default: 0] += 1 }
    }
}

