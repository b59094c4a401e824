// BPFPeerTable — the PeerTable the reconciler drives, over fxdp_peers (LPM: pod subnet → node IP,
// VtepMAC) and fxdp_nodes (node IP → how many peer subnets it carries: the decap source check).
//
// Design: the two maps must agree — a node IP is in fxdp_nodes exactly while some peer subnet
// points at it — or decap would drop a live peer's traffic or accept a departed one's. Every change
// goes through one lock and updates both: the node is added before the subnet that uses it (decap
// accepts before encap sends) and removed after its last subnet. `currentPeers` reads the map back,
// never a remembered copy; `repairNodes` recomputes fxdp_nodes from fxdp_peers (run at open, and
// by the reconciler's full pass) so drift from a crash between the two writes heals.

import BPFLoader
import CBPF
import NetTypes
import Synchronization

public final class BPFPeerTable: PeerTable {
    public let tableName = "bpf-maps"
    private let peers: BPFMap<fxdp_peer_key, fxdp_peer_value>
    private let nodes: BPFMap<fxdp_node_key, fxdp_node_value>
    private let lock = Mutex(())

    public init(peers: BPFMap<fxdp_peer_key, fxdp_peer_value>, nodes: BPFMap<fxdp_node_key, fxdp_node_value>) throws {
        self.peers = peers
        self.nodes = nodes
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
            result.insert(Peer(subnet: subnet, publicIP: IPv4Address(tuple: v.node_ip),
                               vtepMAC: MACAddress(tuple: v.vtep_mac),
                               direct: v.flags & UInt16(FXDP_PEER_F_DIRECT) != 0))
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
            if let old, IPv4Address(tuple: old.node_ip) == peer.publicIP {
                // Same node: only the MAC or flags change; the node count stays.
            } else {
                try adjustNode(peer.publicIP, by: 1)
            }
            var value = fxdp_peer_value()
            value.node_ip = peer.publicIP.tuple
            value.vtep_mac = mac.tuple
            value.flags = peer.direct ? UInt16(FXDP_PEER_F_DIRECT) : 0
            try peers.update(key, value)
            if let old, IPv4Address(tuple: old.node_ip) != peer.publicIP {
                try adjustNode(IPv4Address(tuple: old.node_ip), by: -1)
            }
        }
    }

    public func remove(_ peer: Peer) throws {
        try lock.withLock { _ in
            let key = BPFPeerTable.key(peer.subnet)
            guard let old = try peers.lookup(key) else { return }
            _ = try peers.delete(key)
            try adjustNode(IPv4Address(tuple: old.node_ip), by: -1)
        }
    }

    /// Node IPs the decap accepts VXLAN from, with how many subnets each carries.
    public func acceptedNodes() throws -> [IPv4Address: UInt32] {
        var result: [IPv4Address: UInt32] = [:]
        for (k, v) in try nodes.entries() { result[IPv4Address(tuple: k.node_ip)] = v.subnets }
        return result
    }

    /// Rewrites fxdp_nodes from fxdp_peers: adds missing nodes, fixes counts, deletes nodes no peer
    /// points at. Returns how many entries it changed.
    @discardableResult
    public func repairNodes() throws -> Int {
        try lock.withLock { _ in
            var want: [IPv4Address: UInt32] = [:]
            for (_, v) in try peers.entries() { want[IPv4Address(tuple: v.node_ip), default: 0] += 1 }
            var changed = 0
            for (k, v) in try nodes.entries() {
                let ip = IPv4Address(tuple: k.node_ip)
                if want[ip] == nil { _ = try nodes.delete(k); changed += 1 } else if want[ip] != v.subnets {
                    var fixed = v
                    fixed.subnets = want[ip]!
                    try nodes.update(k, fixed)
                    changed += 1
                }
                want[ip] = nil
            }
            for (ip, count) in want {
                var v = fxdp_node_value()
                v.subnets = count
                try nodes.update(BPFPeerTable.nodeKey(ip), v)
                changed += 1
            }
            return changed
        }
    }

    private func adjustNode(_ ip: IPv4Address, by delta: Int) throws {
        let key = BPFPeerTable.nodeKey(ip)
        let current = Int(try nodes.lookup(key)?.subnets ?? 0)
        let next = max(0, current + delta)
        if next == 0 {
            _ = try nodes.delete(key)
        } else {
            var v = fxdp_node_value()
            v.subnets = UInt32(next)
            try nodes.update(key, v)
        }
    }
}
