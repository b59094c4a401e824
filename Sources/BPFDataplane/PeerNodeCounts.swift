// PeerNodeCounts — the half both BPF peer tables (IPv4: fxdp_nodes, IPv6: fxdp_nodes6) share: a map
// from a peer address to how many peer subnets name it, which the source checks read. An address
// is there exactly while some subnet names it; the tables call `adjust` as subnets come and go and
// `rewrite` to heal drift (a crash between the two maps' writes).

import BPFLoader
import CBPF

struct PeerNodeCounts<NodeKey: BitwiseCopyable, Address: Hashable>: Sendable {
    let nodes: BPFMap<NodeKey, fxdp_node_value>
    let key: @Sendable (Address) -> NodeKey
    let address: @Sendable (NodeKey) -> Address

    /// Every address in the map with its count.
    func entries() throws -> [Address: UInt32] {
        var result: [Address: UInt32] = [:]
        for (k, v) in try nodes.entries() { result[address(k)] = v.subnets }
        return result
    }

    /// One more (`delta` 1) or one fewer (-1) subnet names `ip`; at 0 the address goes.
    func adjust(_ ip: Address, by delta: Int) throws {
        let k = key(ip)
        let next = max(0, Int(try nodes.lookup(k)?.subnets ?? 0) + delta)
        if next == 0 {
            _ = try nodes.delete(k)
        } else {
            var v = fxdp_node_value()
            v.subnets = UInt32(next)
            try nodes.update(k, v)
        }
    }

    /// Makes the map hold exactly `want`: adds what is missing, fixes counts, deletes addresses no
    /// subnet names. Returns how many entries it changed.
    func rewrite(to want: [Address: UInt32]) throws -> Int {
        var missing = want
        var changed = 0
        for (k, v) in try nodes.entries() {
            let ip = address(k)
            if let count = missing.removeValue(forKey: ip) {
                guard count != v.subnets else { continue }
                var fixed = v
                fixed.subnets = count
                try nodes.update(k, fixed)
            } else {
                _ = try nodes.delete(k)
            }
            changed += 1
        }
        for (ip, count) in missing {
            var v = fxdp_node_value()
            v.subnets = count
            try nodes.update(key(ip), v)
            changed += 1
        }
        return changed
    }
}
