// The narrow seam between lease logic and etcd: read the config, list/create/renew/delete lease keys,
// watch them. Two implementations speak the two etcd API generations flannel used (v2 keys API for
// flannel ≤ 0.17, v3 for ≥ 0.18); their keyspaces are separate, so a cluster uses one of them.
//
// The registry moves raw records (key, value bytes, TTL-ness, revision); validation against the
// network config happens once, in `LeaseDecoder`, for both APIs.

import NetTypes

/// Which etcd API holds flannel's keys.
public enum EtcdAPIVersion: String, Sendable, CaseIterable {
    case v2, v3
    /// Use whichever API has `<prefix>/config` (v3 first).
    case auto
}

/// A lease key as stored, before validation.
public struct LeaseRecord: Sendable, Equatable {
    /// The key below `<prefix>/subnets/`, e.g. "10.5.52.0-24".
    public var name: String
    public var value: [UInt8]
    /// No TTL (v2) / no etcd lease attached (v3): a permanent reservation.
    public var isReservation: Bool
    /// Remaining TTL if the API reports it.
    public var ttl: Duration?
    /// v3 mod_revision or v2 modifiedIndex.
    public var revision: Int64
    /// v3 create_revision or v2 createdIndex: which of two keys naming the same subnet came first.
    public var createRevision: Int64

    public init(name: String, value: [UInt8], isReservation: Bool, ttl: Duration?, revision: Int64, createRevision: Int64? = nil) {
        self.name = name
        self.value = value
        self.isReservation = isReservation
        self.ttl = ttl
        self.revision = revision
        self.createRevision = createRevision ?? revision
    }

    public var valueText: String { String(decoding: value, as: UTF8.self) }
}

/// A change under `<prefix>/subnets/`.
public enum LeaseWatchEvent: Sendable, Equatable {
    case put(LeaseRecord)
    /// Deleted or expired (`expired` is true when the API says so: v2's "expire" action).
    case delete(name: String, revision: Int64, expired: Bool)
    /// Nothing under the prefix changed up to `revision` (v3 progress notification).
    case progress(revision: Int64)

    public var revision: Int64 {
        switch self {
        case .put(let r): r.revision
        case .delete(_, let rev, _): rev
        case .progress(let rev): rev
        }
    }
}

/// Every lease at once and the store revision they reflect; a watch from `revision + 1` misses
/// nothing. For small listings and tests: the daemon folds a listing as it arrives (`reduceLeases`).
public struct LeaseListing: Sendable {
    public var records: [LeaseRecord]
    public var revision: Int64
}

/// How a lease write went when the registry refused it.
public enum RegistryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `<prefix>/config` does not exist (the daemon waits and retries, as flannel does).
    case configNotFound(key: String, api: String)
    /// Compare-and-swap lost: the key exists (create) or changed (renew/delete).
    case conflict(key: String)
    /// The watch cannot resume at that revision: compacted (v3) or index cleared (v2, error 401).
    /// Re-list and diff.
    case historyUnavailable(requested: Int64, detail: String)
    /// etcd answered with an error this code does not handle.
    case server(operation: String, status: Int, message: String)
    /// The answer was not what etcd sends.
    case malformedResponse(operation: String, detail: String)
    /// etcd RBAC refused the operation on `key` to `user` (nil: no credentials given).
    case permissionDenied(operation: String, key: String, user: String?)

    public var description: String {
        switch self {
        case .configNotFound(let key, let api):
            "network config \(key) not found in etcd \(api): write it with etcdctl (see docs/ETCD.md)"
        case .conflict(let key): "\(key) was changed by someone else (compare-and-swap failed)"
        case .historyUnavailable(let rev, let detail): "watch cannot resume at revision \(rev): \(detail); re-listing"
        case .server(let op, let status, let message): "etcd \(op) failed (HTTP \(status)): \(message)"
        case .malformedResponse(let op, let detail): "etcd \(op): unexpected response: \(detail)"
        case .permissionDenied(let op, let key, let user):
            "etcd \(op): permission denied on \(key) for "
                + (user.map { "user \"\($0)\": its role needs read on <prefix>/config and readwrite on the <prefix>/subnets/ prefix" }
                    ?? "a client without credentials: auth is enabled in etcd, set --etcd-username/--etcd-password or a client certificate")
                + " (docs/SECURITY.md)"
        }
    }
}

/// Lease storage in etcd. Implementations: `EtcdV2Registry`, `EtcdV3Registry`.
public protocol SubnetRegistry: Sendable {
    var apiVersion: EtcdAPIVersion { get }
    /// The key prefix, e.g. "/coreos.com/network".
    var prefix: String { get }

    /// The raw `<prefix>/config` document; throws `RegistryError.configNotFound` when absent.
    func getConfigText() async throws -> String

    /// Every key under `<prefix>/subnets/`, handed to `body` one at a time as etcd's answer arrives
    /// (read piece by piece, in pages on v3: memory does not grow with the number of leases), and
    /// the revision the listing reflects: a watch from `revision + 1` misses nothing. Throws
    /// `RegistryError.historyUnavailable` when that revision was compacted between two pages;
    /// `body` has then seen part of the keys, and the listing must start over (`reduceLeases` does).
    func listLeases(_ body: (LeaseRecord) throws -> Void) async throws -> Int64

    /// Creates the key only if it does not exist. `ttl` nil: no TTL (reservation).
    /// Throws `RegistryError.conflict` if the key exists. Returns the new revision.
    func createLease(name: String, value: String, ttl: Duration?) async throws -> Int64

    /// Rewrites the key only if its revision is still `expectedRevision` (never overwrites a subnet
    /// someone else took meanwhile). `ttl` nil writes it without TTL. Throws `RegistryError.conflict`
    /// when the key changed or vanished. Returns the new revision.
    func updateLease(name: String, value: String, ttl: Duration?, expectedRevision: Int64) async throws -> Int64

    /// The key now, or nil.
    func getLease(name: String) async throws -> LeaseRecord?

    /// Deletes the key if its revision is still `expectedRevision` (nil: unconditionally).
    func deleteLease(name: String, expectedRevision: Int64?) async throws

    /// Changes after `fromRevision - 1`, in batches, until the stream fails or the consumer stops.
    /// Fails with `RegistryError.historyUnavailable` when the revision is gone (compaction, v2's
    /// 1000-event window); other failures are connection errors to retry with backoff.
    func watchLeases(fromRevision: Int64) -> AsyncThrowingStream<[LeaseWatchEvent], any Error>
}

extension SubnetRegistry {
    /// Folds every lease into `initial` as the listing arrives, and returns the result with the
    /// revision it reflects. A listing whose revision was compacted between pages starts over from
    /// `initial` (three times at most).
    public func reduceLeases<Result>(into initial: Result, _ body: (inout Result, LeaseRecord) throws -> Void)
        async throws -> (result: Result, revision: Int64) {
        var attempt = 0
        while true {
            attempt += 1
            var result = initial
            do {
                let revision = try await listLeases { try body(&result, $0) }
                return (result, revision)
            } catch RegistryError.historyUnavailable where attempt < 3 {
                continue
            }
        }
    }

    /// Every lease in memory at once (tests, small listings).
    public func listLeases() async throws -> LeaseListing {
        let (records, revision) = try await reduceLeases(into: [LeaseRecord]()) { $0.append($1) }
        return LeaseListing(records: records, revision: revision)
    }

    /// Reads and validates the network config.
    public func getConfig() async throws -> NetworkConfig {
        try NetworkConfig.parse(try await getConfigText())
    }

    var configKey: String { prefix + "/config" }
    var subnetsKey: String { prefix + "/subnets/" }
}
