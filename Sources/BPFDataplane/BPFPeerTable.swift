// BPFPeerTable — the PeerTable the reconciler drives, over fxdp_peers (LPM: pod subnet → node IP,
// VtepMAC, the other address the node sends from) and fxdp_nodes (node address → how many peer
// subnets name it: the source checks).
//
// Design: the two maps must agree — an address is in fxdp_nodes exactly while some peer subnet
// names it (as node IP or as source IP) — or decap would drop a live peer's traffic or accept a
// departed one's. Every change goes through one lock and updates both: a node's addresses are added
// before the subnet that uses them (decap accepts before encap sends) and removed after its last subnet. `currentPeers` reads the map back,
// never a remembered copy; `repairNodes` recomputes fxdp_nodes from fxdp_peers (run at open, and
// by the reconciler's full pass) so drift from a crash between the two writes heals.

import BPFLoader
import CBPF
import NetTypes
import Synchronization

public final class BPFPeerTable: Sendable {
    public let tableName = "bpf-maps"
    private let peers: BPFMap<fxdp_peer_key, fxdp_peer_value>
    private let nodes: PeerNodeCounts<fxdp_node_key, IPv4Address>
    private let lock = Mutex(())

    public init(peers: BPFMap<fxdp_peer_key, fxdp_peer_value>, nodes: BPFMap<fxdp_node_key, fxdp_node_value>) throws {
        self.peers = peers
        self.nodes = PeerNodeCounts(nodes: nodes, key: BPFPeerTable.nodeKey, address: { IPv4Address(tuple: $0.node_ip) })
        try repairNodes()
    }

    static func key(_ subnet: IPv4Subnet) -> fxdp_peer_key {
        var k = fxdp_peer_key()
        k.prefixlen = UInt32(subnet.prefixLength)
        k.subnet = subnet.address.tuple
        return k
    }

    static func nodeKey(_ ip: IPv4Address) -> fxdp_node_key {
        var k = fxdp_node_key()
        k.node_ip = ip.tuple
        return k
    }

    public func currentPeers() throws -> Set<Peer> {
        try lock.withLock { _ in try readPeers() }
    }

    private func readPeers() throws -> Set<Peer> {
        var result = Set<Peer>()
        for (k, v) in try peers.entries() {
            guard let subnet = IPv4Subnet(address: IPv4Address(tuple: k.subnet), prefixLength: Int(k.prefixlen)) else {
                continue // host bits set: not written by us; repairNodes ignores it too
            }
            let source = IPv4Address(tuple: v.source_ip)
            result.insert(Peer(subnet: subnet, publicIP: IPv4Address(tuple: v.node_ip),
                               vtepMAC: MACAddress(tuple: v.vtep_mac),
                               direct: v.flags & UInt16(FXDP_PEER_F_DIRECT) != 0,
                               sourceIP: source.value == 0 ? nil : source))
        }
        return result
    }

    public func upsert(_ peer: Peer) throws {
        guard let mac = peer.vtepMAC, !mac.isZero, !mac.isMulticast else {
            throw DataplaneError(operation: "BPFPeerTable.upsert(\(peer))", detail: "no unicast VtepMAC",
                                 hint: "only vxlan leases (BackendData.VtepMAC) belong in the BPF peer table")
        }
        try lock.withLock { _ in
            let key = BPFPeerTable.key(peer.subnet)
            let old = try peers.lookup(key)
            let before = old.map { BPFPeerTable.addresses(of: $0) } ?? []
            let after = peer.sourceAddresses
            // New addresses before the subnet that uses them, departed ones after it.
            for address in after where !before.contains(address) { try nodes.adjust(address, by: 1) }
            var value = fxdp_peer_value()
            value.node_ip = peer.publicIP.tuple
            value.vtep_mac = mac.tuple
            value.flags = peer.direct ? UInt16(FXDP_PEER_F_DIRECT) : 0
            value.source_ip = (peer.sourceIP ?? IPv4Address(0)).tuple
            try peers.update(key, value)
            for address in before where !after.contains(address) { try nodes.adjust(address, by: -1) }
        }
    }

    public func remove(_ peer: Peer) throws {
        try lock.withLock { _ in
            let key = BPFPeerTable.key(peer.subnet)
            guard let old = try peers.lookup(key) else { return }
            _ = try peers.delete(key)
            for address in BPFPeerTable.addresses(of: old) { try nodes.adjust(address, by: -1) }
        }
    }

    /// The addresses a map entry makes the source checks accept: its node IP and source IP.
    static func addresses(of value: fxdp_peer_value) -> [IPv4Address] {
        let node = IPv4Address(tuple: value.node_ip), source = IPv4Address(tuple: value.source_ip)
        return source.value == 0 || source == node ? [node] : [node, source]
    }

    /// Addresses the source checks accept VXLAN from, with how many subnets name each.
    public func acceptedNodes() throws -> [IPv4Address: UInt32] { try nodes.entries() }

    /// Rewrites fxdp_nodes from fxdp_peers: adds missing nodes, fixes counts, deletes nodes no peer
    /// points at. Returns how many entries it changed.
    @discardableResult
    public func repairNodes() throws -> Int {
        try lock.withLock { _ in
            var want: [IPv4Address: UInt32] = [:]
            for (_, v) in try peers.entries() {
                for address in BPFPeerTable.addresses(of: v) { want[address, default: 0] += 1 }
            }
            return try nodes.rewrite(to: want)
        }
    }
}
