// What /readyz reports. The node is ready only when traffic can flow as the leases say: the data
// path is attached, every table is filled (the maps and the kernel's fallback state: until then the
// reason says how far each has got), and subnet.env is written (the CNI plugin reads it; it and
// READY=1 come earlier, once the maps are filled). A failing reconcile pass makes the node unready until a pass succeeds again.
// A node that booted from its last known state while etcd was unreachable carries traffic but is
// "degraded" until etcd confirms its lease: /readyz says so (503) and names the saved state's age.

import Dataplane
import Synchronization

public final class Readiness: Sendable {
    public enum Condition: String, CaseIterable, Sendable {
        case dataplaneAttached = "data path attached"
        case tablesFilled = "peer tables filled"
        case subnetFileWritten = "subnet.env written"
        case reconcileHealthy = "last reconcile pass succeeded"
        case ipv6ReconcileHealthy = "last IPv6 reconcile pass succeeded"
        case leaseConfirmed = "lease confirmed by etcd"
    }

    private struct Entry {
        var ok: Bool
        var detail: String
    }

    private let entries: Mutex<[Condition: Entry]>
    /// Things an operator should know that do not make the node unready (a black-holed peer is a
    /// problem of the cluster, and a stranger must not be able to flip a node's readiness).
    private let warnings = Mutex<[String: String]>([:])

    public init() {
        var initial: [Condition: Entry] = [:]
        for condition in Condition.allCases {
            initial[condition] = Entry(ok: condition == .reconcileHealthy || condition == .ipv6ReconcileHealthy, detail: "not yet")
        }
        entries = Mutex(initial)
    }

    /// Told (under the lock, so in order) whenever the answer of `notReadyReason` changes: the state
    /// file for `status` records readiness through it, before /readyz can see the change.
    private let observer = Mutex<(@Sendable (_ notReadyReason: String?) -> Void)?>(nil)

    public func set(_ condition: Condition, ok: Bool, detail: String = "") {
        entries.withLock { entries in
            let before = Self.reason(entries)
            var next = entries
            next[condition] = Entry(ok: ok, detail: detail)
            let after = Self.reason(next)
            if after != before { observer.withLock { $0 }?(after) }
            entries = next
        }
    }

    /// Calls `body` with the current answer now and after every change.
    public func observe(_ body: @escaping @Sendable (_ notReadyReason: String?) -> Void) {
        entries.withLock { entries in
            observer.withLock { $0 = body }
            body(Self.reason(entries))
        }
    }

    /// nil when ready; otherwise one line naming every unmet condition and why.
    public var notReadyReason: String? {
        entries.withLock { Self.reason($0) }
    }

    private static func reason(_ entries: [Condition: Entry]) -> String? {
        let unmet = Condition.allCases.compactMap { condition -> String? in
            guard let entry = entries[condition], !entry.ok else { return nil }
            return entry.detail.isEmpty ? "\(condition.rawValue): no" : "\(condition.rawValue): \(entry.detail)"
        }
        return unmet.isEmpty ? nil : unmet.joined(separator: "; ")
    }

    public var isReady: Bool { notReadyReason == nil }

    /// Every condition holds but the tables' fill (the kernel's state follows the maps).
    public var onlyFillingTables: Bool {
        entries.withLock { entries in
            entries[.tablesFilled]?.ok == false && entries.allSatisfy { $0.key == .tablesFilled || $0.value.ok }
        }
    }

    /// Sets (or with nil clears) the warning kept under `key`.
    public func setWarning(_ key: String, _ text: String?) {
        warnings.withLock { $0[key] = text }
    }

    /// Current warnings, in key order.
    public var warningLines: [String] {
        warnings.withLock { $0.sorted { $0.key < $1.key }.map(\.value) }
    }

    /// nil when `condition` holds; else its detail (or "no").
    public func unmet(_ condition: Condition) -> String? {
        entries.withLock { entries in
            guard let entry = entries[condition], !entry.ok else { return nil }
            return entry.detail.isEmpty ? "no" : entry.detail
        }
    }
}

extension Readiness {
    /// What a reconcile pass means for readiness (the reconciler's pass observer): a pass of every
    /// stage that succeeded filled every table; one that failed makes the node unready until one
    /// succeeds.
    @Sendable public func follow(_ report: ReconcileReport) {
        if report.succeeded {
            if report.stages == Set(TableStage.allCases) { set(.tablesFilled, ok: true) }
            set(.reconcileHealthy, ok: true)
        } else {
            set(.reconcileHealthy, ok: false, detail: report.failureSummary)
        }
    }

    /// How far peer programming has got (the reconciler's progress observer): the tables are filled
    /// once every stage is in sync; until then /readyz and `status` say "peers: maps 5000/5000,
    /// kernel 1200/5000". subnet.env and READY=1 come before, at flanneld's point.
    @Sendable public func followProgress(_ progress: PeerProgress) {
        set(.tablesFilled, ok: progress.complete, detail: progress.description)
    }
}

extension Readiness {
    /// The IPv6 reconciler's passes (dual-stack and IPv6-only networks): one that failed makes the
    /// node unready as an IPv4 one does.
    @Sendable public func followIPv6(_ report: IPv6ReconcileReport) {
        if report.succeeded {
            set(.ipv6ReconcileHealthy, ok: true)
        } else {
            set(.ipv6ReconcileHealthy, ok: false, detail: report.failureSummary)
        }
    }
}
