/// Something that holds peers for the data path: the BPF maps, the userspace path's table, the
/// kernel's routes/neighbours/fdb. A full reconcile pass reads what a table holds *now* (never a
/// remembered copy), compares it with the peers the leases call for, and applies only the
/// difference, which repairs drift (someone deleted an entry, a map was recreated); between full
/// passes, lease events write only the subnets they changed (see the reconciler's design note).
public protocol PeerTable: AnyObject, Sendable {
    /// A short name for logs and metrics ("bpf-maps", "kernel-vxlan", "userspace").
    var tableName: String { get }
    /// The peers this table holds at this moment, read back from the underlying store.
    func currentPeers() throws -> Set<Peer>
    /// Adds `peer`, or replaces the entry for `peer.subnet` if one exists.
    func upsert(_ peer: Peer) throws
    /// Removes the entry for `peer.subnet`; removing an absent entry is not an error.
    func remove(_ peer: Peer) throws
}

/// `PeerTable` for the IPv6 half of the peers (the kernel's `flannel-v6.<VNI>` device and IPv6
/// host-gw routes, the userspace path's IPv6 table): the same contract, keyed by `subnet`.
public protocol IPv6PeerTable: AnyObject, Sendable {
    var tableName: String { get }
    func currentPeers() throws -> Set<IPv6Peer>
    func upsert(_ peer: IPv6Peer) throws
    func remove(_ peer: IPv6Peer) throws
}
