// The peers of one family's userspace table: the map by subnet the control plane edits under a lock,
// and the immutable snapshot the workers read. Every change rebuilds the snapshot and publishes it
// with one atomic store, so a worker sees either the table before the change or after it, never
// half of it (PeerSnapshot describes the scheme). UserspaceDataplane (IPv4) and
// UserspaceIPv6PeerTable each hold one.

import Atomics
import Synchronization

final class PublishedPeers<Subnet: Hashable & Sendable, P: Hashable & Sendable, Snapshot: AtomicValue & Sendable>: Sendable
    where Snapshot.AtomicRepresentation.Value == Snapshot {
    /// What the workers load (acquiring) per batch.
    let snapshot: ManagedAtomic<Snapshot>
    private let peers = Mutex<[Subnet: P]>([:])
    private let makeSnapshot: @Sendable ([Subnet: P]) -> Snapshot

    init(snapshot makeSnapshot: @escaping @Sendable ([Subnet: P]) -> Snapshot) {
        self.makeSnapshot = makeSnapshot
        snapshot = ManagedAtomic(makeSnapshot([:]))
    }

    var current: Set<P> { Set(peers.withLock { $0.values }) }

    /// Adds `peer`, or replaces the one at `subnet`.
    func upsert(_ peer: P, at subnet: Subnet) {
        peers.withLock { map in
            map[subnet] = peer
            snapshot.store(makeSnapshot(map), ordering: .releasing)
        }
    }

    /// Removes the peer at `subnet`; an absent one publishes nothing.
    func remove(at subnet: Subnet) {
        peers.withLock { map in
            guard map.removeValue(forKey: subnet) != nil else { return }
            snapshot.store(makeSnapshot(map), ordering: .releasing)
        }
    }

    /// Replaces the whole table in one swap.
    func replaceAll(_ newPeers: [Subnet: P]) {
        peers.withLock { map in
            map = newPeers
            snapshot.store(makeSnapshot(newPeers), ordering: .releasing)
        }
    }
}
