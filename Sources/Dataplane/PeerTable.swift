// The one thing the reconciler asks of every data path: a table of peers it can read back and
// write. Each data path module keeps its table in its own store and knows nothing of the others or
// of this protocol; this module, which composes them, declares which of their types are tables.
// (Declared here rather than beside `Peer` in NetTypes: the protocol is the reconciler's contract,
// and the modules below this one need only the value type.)

import BPFDataplane
import NetTypes
import Overlay
import UserspaceDataplane

/// Something that holds peers for the data path: the BPF maps, the userspace path's table, the
/// kernel's routes/neighbours/fdb. A full reconcile pass reads what a table holds *now* (never a
/// remembered copy), compares it with the peers the leases call for, and applies only the
/// difference, which repairs drift (someone deleted an entry, a map was recreated); between full
/// passes, lease events write only the subnets they changed (see the reconciler's design note).
/// Every call may block in the kernel: the reconciler makes them on its own thread.
public protocol PeerTable: AnyObject, Sendable {
    /// A short name for logs and metrics ("bpf-maps", "kernel-vxlan", "userspace").
    var tableName: String { get }
    /// The peers this table holds at this moment, read back from the underlying store.
    func currentPeers() throws -> Set<Peer>
    /// Adds `peer`, or replaces the entry for `peer.subnet` if one exists.
    func upsert(_ peer: Peer) throws
    /// Removes the entry for `peer.subnet`; removing an absent entry is not an error.
    func remove(_ peer: Peer) throws
    /// `upsert` for many peers (the kernel tables send their netlink messages in batches); returns
    /// the peers that failed with their errors, the others are in place.
    func upsert(batch peers: [Peer]) -> [(Peer, any Error)]
    /// `remove` for many peers; returns the peers that failed with their errors.
    func remove(batch peers: [Peer]) -> [(Peer, any Error)]
}

extension PeerTable {
    /// One call per peer: for tables whose every write is already cheap (a map update).
    public func upsert(batch peers: [Peer]) -> [(Peer, any Error)] {
        peers.compactMap { peer in
            do { try upsert(peer); return nil } catch { return (peer, error) }
        }
    }

    public func remove(batch peers: [Peer]) -> [(Peer, any Error)] {
        peers.compactMap { peer in
            do { try remove(peer); return nil } catch { return (peer, error) }
        }
    }
}

/// fxdp_peers and fxdp_nodes (BPFDataplane).
extension BPFPeerTable: PeerTable {}
/// Neighbour, fdb and onlink route per peer on flannel.<VNI>; plain routes for DirectRouting (Overlay).
extension KernelVXLANPeerTable: PeerTable {}
/// host-gw routes via the peers' node IPs (Overlay).
extension HostGWPeerTable: PeerTable {}
/// The userspace path's in-process table.
extension UserspaceDataplane: PeerTable {}

/// `PeerTable` for the IPv6 halves of the peers: the kernel's `flannel-v6.<VNI>` and IPv6 host-gw
/// routes, the userspace path's IPv6 table. The same contract, keyed by `subnet`.
public protocol IPv6PeerTable: AnyObject, Sendable {
    var tableName: String { get }
    func currentPeers() throws -> Set<IPv6Peer>
    func upsert(_ peer: IPv6Peer) throws
    func remove(_ peer: IPv6Peer) throws
}

/// Neighbour, fdb and onlink route per IPv6 peer on flannel-v6.<VNI>; plain routes for DirectRouting (Overlay).
extension KernelVXLANv6PeerTable: IPv6PeerTable {}
/// host-gw's IPv6 routes via the peers' PublicIPv6 (Overlay).
extension HostGWv6PeerTable: IPv6PeerTable {}
/// The userspace path's IPv6 table.
extension UserspaceIPv6PeerTable: IPv6PeerTable {}
