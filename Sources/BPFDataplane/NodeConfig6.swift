// NodeConfig6 — this node's IPv6 settings as the programs read them (struct fxdp_config6, map
// fxdp_config6_v2 index 0): the IPv6 half of a dual-stack or IPv6-only node, for flannel-v6.<VNI>.
// What both families share (underlay, VNI, port, the inner source check, enabled) stays in
// NodeConfig; the IPv6 path runs only while both are written and enabled.

import BPFLoader
import CBPF
import NetTypes

public struct NodeConfig6: Sendable, Equatable, CustomStringConvertible {
    /// flannel-v6.<VNI>'s local address (the node's IPv6 underlay address): outer source, and where
    /// IPv6 VXLAN is accepted.
    public var nodeIP: IPv6Address
    /// flannel-v6.<VNI>'s MAC (the lease's BackendV6Data.VtepMAC).
    public var vtepMAC: MACAddress
    /// flannel-v6.<VNI>.
    public var overlayIfindex: Int32
    /// flannel-v6.<VNI>'s MTU (underlay MTU − 70); 0 disables the encap's non-GSO size check.
    public var overlayMTU: UInt16
    /// Outer hop limit: the underlay's net.ipv6.conf.<dev>.hop_limit, what the kernel device with
    /// flannel's TTL "auto" sends; 0 means 64.
    public var outerHopLimit: UInt8
    /// The flannel IPv6Network: pods' VXLAN out of it is dropped (fxdp_pod_guard6). nil: none.
    public var network: IPv6Subnet?
    /// The lease's PublicIPv6 when it is another local address than `nodeIP`: VXLAN is accepted
    /// there too. nil: the same as `nodeIP`.
    public var publicIP: IPv6Address?
    /// False: IPv6 passes every program untouched, as before IPv6 was configured.
    public var enabled: Bool

    public init(nodeIP: IPv6Address, vtepMAC: MACAddress, overlayIfindex: Int32, overlayMTU: UInt16, outerHopLimit: UInt8 = 0,
                network: IPv6Subnet? = nil, publicIP: IPv6Address? = nil, enabled: Bool = true) {
        self.nodeIP = nodeIP
        self.vtepMAC = vtepMAC
        self.overlayIfindex = overlayIfindex
        self.overlayMTU = overlayMTU
        self.outerHopLimit = outerHopLimit
        self.network = network
        self.publicIP = publicIP == nodeIP ? nil : publicIP
        self.enabled = enabled
    }

    public init(c: fxdp_config6) {
        nodeIP = IPv6Address(mapBytes: c.node_ip)
        vtepMAC = MACAddress(tuple: c.vtep_mac)
        overlayIfindex = Int32(bitPattern: c.overlay_ifindex)
        overlayMTU = c.overlay_mtu
        outerHopLimit = c.outer_hop_limit
        let networkAddress = IPv6Address(mapBytes: c.network)
        network = c.network_prefixlen == 0 ? nil
            : IPv6Subnet(address: networkAddress.masked(to: Int(min(c.network_prefixlen, 128))), prefixLength: Int(min(c.network_prefixlen, 128)))
        let publicIP = IPv6Address(mapBytes: c.public_ip)
        self.publicIP = publicIP.isUnspecifiedAddress ? nil : publicIP
        enabled = c.flags & UInt16(FXDP_CFG6_F_ENABLED) != 0
    }

    public var cValue: fxdp_config6 {
        var c = fxdp_config6()
        c.node_ip = nodeIP.mapBytes
        c.vtep_mac = vtepMAC.tuple
        c.overlay_ifindex = UInt32(bitPattern: overlayIfindex)
        c.overlay_mtu = overlayMTU
        c.outer_hop_limit = outerHopLimit
        if let network {
            c.network = network.address.mapBytes
            c.network_prefixlen = UInt8(network.prefixLength)
        }
        if let publicIP { c.public_ip = publicIP.mapBytes }
        c.flags = enabled ? UInt16(FXDP_CFG6_F_ENABLED) : 0
        return c
    }

    /// Checks what the programs rely on; returns the problem, or nil.
    public var problem: String? {
        if nodeIP.isUnspecifiedAddress { return "IPv6 node address :: (flannel-v6.<VNI> needs the node's IPv6 address)" }
        if vtepMAC.isZero || vtepMAC.isMulticast { return "IPv6 VtepMAC \(vtepMAC) is not a unicast address" }
        if overlayIfindex <= 0 { return "flannel-v6 ifindex \(overlayIfindex)" }
        return nil
    }

    public var description: String {
        "node \(nodeIP)" + (publicIP.map { " (public \($0))" } ?? "") + " vtep \(vtepMAC) overlay #\(overlayIfindex) mtu \(overlayMTU) "
            + "hop limit \(outerHopLimit == 0 ? 64 : Int(outerHopLimit))" + (network.map { " network \($0)" } ?? "")
            + (enabled ? "" : " (disabled)")
    }
}

extension NodeConfig6 {
    /// The settings in fxdp_config6, nil while none were written (the flannel-v6 index says so).
    public static func read(from map: BPFMap<UInt32, fxdp_config6>) throws(BPFError) -> NodeConfig6? {
        guard let c = try map.lookup(0), c.overlay_ifindex != 0 else { return nil }
        return NodeConfig6(c: c)
    }
}

/// IPv6 addresses as the shared header spells them (16 bytes in network order, a tuple in Swift).
extension IPv6Address {
    init(mapBytes t: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)) {
        self = withUnsafeBytes(of: t) { IPv6Address(bytes: Array($0))! }
    }

    var mapBytes: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) {
        var t: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let b = bytes
        withUnsafeMutableBytes(of: &t) { raw in for i in 0..<16 { raw[i] = b[i] } }
        return t
    }

    /// ::, the address a map entry holds where there is none.
    var isUnspecifiedAddress: Bool { bytes.allSatisfy { $0 == 0 } }

    /// This address with the bits past `prefixLength` cleared.
    func masked(to prefixLength: Int) -> IPv6Address {
        var b = bytes
        for bit in max(0, prefixLength)..<128 { b[bit / 8] &= ~(0x80 >> UInt8(bit % 8)) }
        return IPv6Address(bytes: b)!
    }
}
