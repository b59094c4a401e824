// BPFIPv6PeerTable — the IPv6 peers (flannel-v6.<VNI>) over fxdp_peers6 (LPM: IPv6 pod subnet →
// PublicIPv6, VtepMAC of the peer's flannel-v6 device) and fxdp_nodes6 (IPv6 address → how many
// subnets name it: the IPv6 source checks).
//
// Design: BPFPeerTable's, for the other family. The two maps must agree, so every change goes
// through one lock and updates both (a node's addresses before the subnet that uses them, departed
// ones after its last subnet); `currentPeers` reads the map back; `repairNodes` recomputes
// fxdp_nodes6 from fxdp_peers6 (at open, and on the reconciler's full pass).

import BPFLoader
import CBPF
import NetTypes
import Synchronization

/// One IPv6 pod subnet of a peer as the BPF maps hold it.
public struct BPFPeer6: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv6Subnet
    /// The peer's PublicIPv6 (outer destination).
    public var publicIP: IPv6Address
    /// The VtepMAC of the peer's flannel-v6.<VNI> (its lease's BackendV6Data.VtepMAC).
    public var vtepMAC: MACAddress
    /// DirectRouting: the kernel routes the subnet unencapsulated.
    public var direct: Bool
    /// Another address the peer's IPv6 VXLAN comes from; nil: it sends from `publicIP`.
    public var sourceIP: IPv6Address?

    public init(subnet: IPv6Subnet, publicIP: IPv6Address, vtepMAC: MACAddress, direct: Bool = false, sourceIP: IPv6Address? = nil) {
        self.subnet = subnet
        self.publicIP = publicIP
        self.vtepMAC = vtepMAC
        self.direct = direct
        self.sourceIP = sourceIP == publicIP ? nil : sourceIP
    }

    /// The addresses IPv6 VXLAN from this peer may come from.
    public var sourceAddresses: [IPv6Address] { sourceIP.map { [publicIP, $0] } ?? [publicIP] }

    public var description: String {
        "\(subnet) via \(publicIP) vtep \(vtepMAC)" + (direct ? " direct" : "") + (sourceIP.map { " from \($0)" } ?? "")
    }
}

public final class BPFIPv6PeerTable: Sendable {
    public let tableName = "bpf-maps-ipv6"
    private let peers: BPFMap<fxdp_peer6_key, fxdp_peer6_value>
    private let nodes: PeerNodeCounts<fxdp_node6_key, IPv6Address>
    private let lock = Mutex(())

    public init(peers: BPFMap<fxdp_peer6_key, fxdp_peer6_value>, nodes: BPFMap<fxdp_node6_key, fxdp_node_value>) throws {
        self.peers = peers
        self.nodes = PeerNodeCounts(nodes: nodes, key: BPFIPv6PeerTable.nodeKey, address: { IPv6Address(mapBytes: $0.node_ip) })
        try repairNodes()
    }

    static func key(_ subnet: IPv6Subnet) -> fxdp_peer6_key {
        var k = fxdp_peer6_key()
        k.prefixlen = UInt32(subnet.prefixLength)
        k.subnet = subnet.address.mapBytes
        return k
    }

    /// The fxdp_nodes6 key of `ip`.
    public static func nodeKey(_ ip: IPv6Address) -> fxdp_node6_key {
        var k = fxdp_node6_key()
        k.node_ip = ip.mapBytes
        return k
    }

    public func currentPeers() throws -> Set<BPFPeer6> {
        try lock.withLock { _ in Set(try BPFIPv6PeerTable.entries(peers)) }
    }

    /// The entries of an fxdp_peers6 map (also a pinned one `status` and `peers` open).
    public static func entries(_ peers: BPFMap<fxdp_peer6_key, fxdp_peer6_value>) throws -> [BPFPeer6] {
        var result: [BPFPeer6] = []
        for (k, v) in try peers.entries() {
            guard k.prefixlen <= 128,
                  let subnet = IPv6Subnet(address: IPv6Address(mapBytes: k.subnet), prefixLength: Int(k.prefixlen)) else {
                continue // host bits set: not written by us; repairNodes ignores it too
            }
            let source = IPv6Address(mapBytes: v.source_ip)
            result.append(BPFPeer6(subnet: subnet, publicIP: IPv6Address(mapBytes: v.node_ip), vtepMAC: MACAddress(tuple: v.vtep_mac),
                                   direct: v.flags & UInt16(FXDP_PEER_F_DIRECT) != 0,
                                   sourceIP: source.isUnspecifiedAddress ? nil : source))
        }
        return result
    }

    /// The address an fxdp_nodes6 (or fxdp_peer_stats6) key names.
    public static func address(of key: fxdp_node6_key) -> IPv6Address { IPv6Address(mapBytes: key.node_ip) }

    public func upsert(_ peer: BPFPeer6) throws {
        guard !peer.vtepMAC.isZero, !peer.vtepMAC.isMulticast else {
            throw DataplaneError(operation: "BPFIPv6PeerTable.upsert(\(peer))", detail: "no unicast VtepMAC",
                                 hint: "only vxlan leases (BackendV6Data.VtepMAC) belong in the BPF IPv6 peer table")
        }
        guard !peer.publicIP.isUnspecifiedAddress else {
            throw DataplaneError(operation: "BPFIPv6PeerTable.upsert(\(peer))", detail: "PublicIPv6 is ::",
                                 hint: "a peer's IPv6 subnet needs the PublicIPv6 of its lease")
        }
        try lock.withLock { _ in
            let key = BPFIPv6PeerTable.key(peer.subnet)
            let before = try peers.lookup(key).map { BPFIPv6PeerTable.addresses(of: $0) } ?? []
            let after = peer.sourceAddresses
            for address in after where !before.contains(address) { try nodes.adjust(address, by: 1) }
            var value = fxdp_peer6_value()
            value.node_ip = peer.publicIP.mapBytes
            value.vtep_mac = peer.vtepMAC.tuple
            value.flags = peer.direct ? UInt16(FXDP_PEER_F_DIRECT) : 0
            if let source = peer.sourceIP { value.source_ip = source.mapBytes }
            try peers.update(key, value)
            for address in before where !after.contains(address) { try nodes.adjust(address, by: -1) }
        }
    }

    public func remove(_ peer: BPFPeer6) throws {
        try lock.withLock { _ in
            let key = BPFIPv6PeerTable.key(peer.subnet)
            guard let old = try peers.lookup(key) else { return }
            _ = try peers.delete(key)
            for address in BPFIPv6PeerTable.addresses(of: old) { try nodes.adjust(address, by: -1) }
        }
    }

    /// The addresses a map entry makes the source checks accept: its node address and source address.
    static func addresses(of value: fxdp_peer6_value) -> [IPv6Address] {
        let node = IPv6Address(mapBytes: value.node_ip), source = IPv6Address(mapBytes: value.source_ip)
        return source.isUnspecifiedAddress || source == node ? [node] : [node, source]
    }

    /// Addresses the IPv6 source checks accept VXLAN from, with how many subnets name each.
    public func acceptedNodes() throws -> [IPv6Address: UInt32] { try nodes.entries() }

    /// Rewrites fxdp_nodes6 from fxdp_peers6; returns how many entries it changed.
    @discardableResult
    public func repairNodes() throws -> Int {
        try lock.withLock { _ in
            var want: [IPv6Address: UInt32] = [:]
            for (_, v) in try peers.entries() {
                for address in BPFIPv6PeerTable.addresses(of: v) { want[address, default: 0] += 1 }
            }
            return try nodes.rewrite(to: want)
        }
    }
}
