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
public protocol FamilyPeerTable<Row>: AnyObject, Sendable {
    associatedtype Row: OverlayPeer
    /// A short name for logs and metrics ("bpf-maps", "kernel-vxlan", "userspace").
    var tableName: String { get }
    /// The peers this table holds at this moment, read back from the underlying store.
    func currentPeers() throws -> Set<Row>
    /// Adds `peer`, or replaces the entry for `peer.subnet` if one exists.
    func upsert(_ peer: Row) throws
    /// Removes the entry for `peer.subnet`; removing an absent entry is not an error.
    func remove(_ peer: Row) throws
    /// `upsert` for many peers (the kernel tables send their netlink messages in batches); returns
    /// the peers that failed with their errors, the others are in place.
    func upsert(batch peers: [Row]) -> [(Row, any Error)]
    /// `remove` for many peers; returns the peers that failed with their errors.
    func remove(batch peers: [Row]) -> [(Row, any Error)]
}

extension FamilyPeerTable {
    /// One call per peer: for tables whose every write is already cheap (a map update).
    public func upsert(batch peers: [Row]) -> [(Row, any Error)] {
        peers.compactMap { peer in
            do { try upsert(peer); return nil } catch { return (peer, error) }
        }
    }

    public func remove(batch peers: [Row]) -> [(Row, any Error)] {
        peers.compactMap { peer in
            do { try remove(peer); return nil } catch { return (peer, error) }
        }
    }
}

/// A table of IPv4 peers (flannel.<VNI>'s half).
public protocol PeerTable: FamilyPeerTable where Row == Peer {}

/// fxdp_peers and fxdp_nodes (BPFDataplane).
extension BPFPeerTable: PeerTable {}
/// Neighbour, fdb and onlink route per peer on flannel.<VNI> (flannel-v6.<VNI> for IPv6 peers);
/// plain routes for DirectRouting (Overlay). One generic table for both families: it conforms once,
/// for whichever family it is made for.
extension KernelVXLANTable: FamilyPeerTable {}
/// host-gw routes via the peers' node IPs (PublicIPv6 for IPv6 peers) (Overlay).
extension HostGWTable: FamilyPeerTable {}
/// The userspace path's in-process table.
extension UserspaceDataplane: PeerTable {}

/// `PeerTable` for the IPv6 halves of the peers: the BPF maps fxdp_peers6/fxdp_nodes6, the kernel's
/// `flannel-v6.<VNI>` and IPv6 host-gw routes, the userspace path's IPv6 table. The same contract,
/// keyed by `subnet`.
public protocol IPv6PeerTable: FamilyPeerTable where Row == IPv6Peer {}

/// The userspace path's IPv6 table.
extension UserspaceIPv6PeerTable: IPv6PeerTable {}

/// fxdp_peers6 and fxdp_nodes6 (BPFDataplane) as an `IPv6PeerTable`. The maps keep a source address
/// per peer that IPv6 leases never name (flannel writes no BackendV6Data.SourceIP), so this view
/// leaves it unset.
public final class BPFIPv6Peers: IPv6PeerTable {
    public let maps: BPFIPv6PeerTable
    public var tableName: String { maps.tableName }

    public init(_ maps: BPFIPv6PeerTable) {
        self.maps = maps
    }

    public func currentPeers() throws -> Set<IPv6Peer> {
        Set(try maps.currentPeers().map { IPv6Peer(subnet: $0.subnet, publicIP: $0.publicIP, vtepMAC: $0.vtepMAC, direct: $0.direct) })
    }

    public func upsert(_ peer: IPv6Peer) throws {
        guard let mac = peer.vtepMAC else {
            throw DataplaneError(operation: "upsert \(peer) into \(tableName)", detail: "no BackendV6Data.VtepMAC",
                                 hint: "only vxlan leases belong in the BPF IPv6 peer table")
        }
        try maps.upsert(BPFPeer6(subnet: peer.subnet, publicIP: peer.publicIP, vtepMAC: mac, direct: peer.direct))
    }

    public func remove(_ peer: IPv6Peer) throws {
        // Removal is by subnet; the entry's other fields do not matter.
        try maps.remove(BPFPeer6(subnet: peer.subnet, publicIP: peer.publicIP, vtepMAC: peer.vtepMAC ?? MACAddress(bytes: [2, 0, 0, 0, 0, 1])))
    }
}
