// The peer table as the workers see it: an immutable snapshot built by the writer (the reconciler's
// upsert/remove) and swapped in with one atomic store. A worker loads the current snapshot once per
// batch (one atomic load + retain) and looks destinations up without locks; an update never blocks
// packets, and a batch in flight finishes on the snapshot it started with.
//
// Lookup is longest-prefix match: entries are grouped by prefix length, longest first; each group is
// a sorted array of network addresses searched by bisection. flannel clusters have one group (/24),
// so a lookup is one binary search over the peers. The node-IP set (sources we accept datagrams
// from) is a sorted array too.
import Atomics
import NetTypes

/// Where packets for one peer subnet go, in the form the hot path writes into headers.
struct PeerTarget: Sendable {
    /// The peer's node IP as `in_addr.s_addr` (network-order bytes in memory), for shim_dgram.addr.
    var nodeAddressRaw: UInt32
    /// The peer's VtepMAC in the low 48 bits, first byte most significant (0 for udp framing).
    var vtepMAC: UInt64
    /// The peer's node IP and the other address it sends from (0: none), host order.
    var nodeAddress: UInt32
    var sourceAddress: UInt32
}

final class PeerSnapshot: AtomicReference, Sendable {
    struct Group: Sendable {
        var prefixLength: Int
        var mask: UInt32
        var networks: [UInt32]  // sorted, host order
        var targets: [PeerTarget]  // parallel to networks
    }

    let groups: [Group]
    let nodeIPs: [UInt32]  // sorted, host order
    let peers: [IPv4Subnet: Peer]

    init(peers: [IPv4Subnet: Peer]) {
        self.peers = peers
        var byLength: [Int: [(UInt32, PeerTarget)]] = [:]
        var nodes = Set<UInt32>()
        for (subnet, peer) in peers {
            let target = PeerTarget(
                nodeAddressRaw: UInt32(bigEndian: peer.publicIP.value),
                vtepMAC: peer.vtepMAC.map(PeerSnapshot.pack) ?? 0,
                nodeAddress: peer.publicIP.value, sourceAddress: peer.sourceIP?.value ?? 0)
            byLength[subnet.prefixLength, default: []].append((subnet.address.value, target))
            for address in peer.sourceAddresses { nodes.insert(address.value) }
        }
        groups = byLength.keys.sorted(by: >).map { length in
            let entries = byLength[length]!.sorted { $0.0 < $1.0 }
            return Group(
                prefixLength: length, mask: IPv4Subnet.mask(length),
                networks: entries.map(\.0), targets: entries.map(\.1))
        }
        nodeIPs = nodes.sorted()
    }

    static func pack(_ mac: MACAddress) -> UInt64 {
        mac.bytes.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// The target for the longest prefix containing `destination` (host order).
    @inline(__always)
    func lookup(_ destination: UInt32) -> PeerTarget? {
        for group in groups {
            let key = destination & group.mask
            if let index = PeerSnapshot.search(group.networks, key) { return group.targets[index] }
        }
        return nil
    }

    /// Whether a peer that sends from `outer` may send a packet whose source is `inner` (host
    /// order): its own address, or one in a subnet that belongs to it.
    @inline(__always)
    func mayCarry(innerSource inner: UInt32, from outer: UInt32) -> Bool {
        if inner == outer { return true }
        guard let owner = lookup(inner) else { return false }
        return owner.nodeAddress == outer || (owner.sourceAddress != 0 && owner.sourceAddress == outer)
    }

    /// Whether `address` (host order) is a known peer node IP.
    @inline(__always)
    func isPeerNode(_ address: UInt32) -> Bool {
        PeerSnapshot.search(nodeIPs, address) != nil
    }

    @inline(__always)
    static func search<T: Comparable>(_ sorted: [T], _ key: T) -> Int? {
        var low = 0
        var high = sorted.count
        while low < high {
            let mid = (low + high) >> 1
            let value = sorted[mid]
            if value == key { return mid }
            if value < key { low = mid + 1 } else { high = mid }
        }
        return nil
    }
}
