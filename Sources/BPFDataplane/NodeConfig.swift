// NodeConfig — this node's settings as the programs read them (struct fxdp_config, map
// fxdp_config_v2 index 0). Swift-side it uses NetTypes values; `cValue` / `init(c:)` convert.

import BPFLoader
import CBPF
import NetTypes

public struct NodeConfig: Sendable, Equatable, CustomStringConvertible {
    /// The --iface address: outer source, and the only local address VXLAN is accepted at.
    public var nodeIP: IPv4Address
    /// flannel.<VNI>'s MAC: inner source, and the inner destination decap accepts.
    public var vtepMAC: MACAddress
    public var vni: UInt32
    /// VXLAN UDP port (flannel: 8472).
    public var udpPort: UInt16
    /// The --iface interface (in the daemon's network namespace).
    public var underlayIfindex: Int32
    /// Its MAC: the decap re-addresses stripped frames to it.
    public var underlayMAC: MACAddress
    /// flannel.<VNI>.
    public var overlayIfindex: Int32
    /// Underlay MTU − 50; 0 disables the encap's non-GSO size check.
    public var overlayMTU: UInt16
    /// False: every program passes every packet to the kernel (counted as *_pass_disabled).
    public var enabled: Bool
    /// Outer IPv4 TTL (the node's net.ipv4.ip_default_ttl, as the kernel vxlan device with flannel's
    /// TTL "auto" sends); 0 means 64.
    public var outerTTL: UInt8
    /// Decap accepts an inner packet only from an address of the sending peer (its subnets, its own
    /// address): `--inner-source-check`.
    public var innerSourceCheck: Bool
    /// The flannel Network: pods' VXLAN out of it is dropped (fxdp_pod_guard). nil: none.
    public var network: IPv4Subnet?
    /// The lease's PublicIP when it is another address than `nodeIP` (--public-ip): peers send to
    /// it, so VXLAN is accepted there too when it is local. nil: the same as `nodeIP`.
    public var publicIP: IPv4Address?
    /// Established pod-to-pod flows skip both stacks (`--fast-path`; docs/BPF-DATAPATH.md).
    public var fastPath: Bool
    /// net.netfilter.nf_conntrack_tcp_be_liberal is 1 in the node's namespace: the fast path may take
    /// TCP (conntrack then accepts a later packet whose sequence numbers it did not follow).
    public var conntrackTCPLiberal: Bool

    public init(nodeIP: IPv4Address, vtepMAC: MACAddress, vni: UInt32 = 1, udpPort: UInt16 = 8472,
                underlayIfindex: Int32, underlayMAC: MACAddress, overlayIfindex: Int32, overlayMTU: UInt16,
                enabled: Bool = true, outerTTL: UInt8 = 0, innerSourceCheck: Bool = true, network: IPv4Subnet? = nil,
                publicIP: IPv4Address? = nil, fastPath: Bool = false, conntrackTCPLiberal: Bool = false) {
        self.nodeIP = nodeIP
        self.vtepMAC = vtepMAC
        self.vni = vni
        self.udpPort = udpPort
        self.underlayIfindex = underlayIfindex
        self.underlayMAC = underlayMAC
        self.overlayIfindex = overlayIfindex
        self.overlayMTU = overlayMTU
        self.enabled = enabled
        self.outerTTL = outerTTL
        self.innerSourceCheck = innerSourceCheck
        self.network = network
        self.publicIP = publicIP == nodeIP ? nil : publicIP
        self.fastPath = fastPath
        self.conntrackTCPLiberal = conntrackTCPLiberal
    }

    public init(c: fxdp_config) {
        nodeIP = IPv4Address(tuple: c.node_ip)
        vtepMAC = MACAddress(tuple: c.vtep_mac)
        vni = c.vni
        udpPort = c.udp_port
        underlayIfindex = Int32(bitPattern: c.underlay_ifindex)
        underlayMAC = MACAddress(tuple: c.underlay_mac)
        overlayIfindex = Int32(bitPattern: c.overlay_ifindex)
        overlayMTU = c.overlay_mtu
        enabled = c.flags & UInt16(FXDP_CFG_F_ENABLED) != 0
        outerTTL = c.outer_ttl
        innerSourceCheck = c.flags & UInt16(FXDP_CFG_F_INNER_SOURCE_CHECK) != 0
        network = c.network_prefixlen == 0 ? nil
            : IPv4Subnet(containing: IPv4Address(tuple: c.network), prefixLength: Int(min(c.network_prefixlen, 32)))
        let publicIP = IPv4Address(tuple: c.public_ip)
        self.publicIP = publicIP.value == 0 ? nil : publicIP
        fastPath = c.flags & UInt16(FXDP_CFG_F_FAST_PATH) != 0
        conntrackTCPLiberal = c.flags & UInt16(FXDP_CFG_F_CT_TCP_LIBERAL) != 0
    }

    public var cValue: fxdp_config {
        var c = fxdp_config()
        c.node_ip = nodeIP.tuple
        c.vtep_mac = vtepMAC.tuple
        c.udp_port = udpPort
        c.vni = vni
        c.underlay_ifindex = UInt32(bitPattern: underlayIfindex)
        c.overlay_ifindex = UInt32(bitPattern: overlayIfindex)
        c.overlay_mtu = overlayMTU
        c.flags = (enabled ? UInt16(FXDP_CFG_F_ENABLED) : 0) | (innerSourceCheck ? UInt16(FXDP_CFG_F_INNER_SOURCE_CHECK) : 0)
            | (fastPath ? UInt16(FXDP_CFG_F_FAST_PATH) : 0) | (conntrackTCPLiberal ? UInt16(FXDP_CFG_F_CT_TCP_LIBERAL) : 0)
        c.underlay_mac = underlayMAC.tuple
        c.outer_ttl = outerTTL
        if let network {
            c.network = network.address.tuple
            c.network_prefixlen = UInt8(network.prefixLength)
        }
        if let publicIP { c.public_ip = publicIP.tuple }
        return c
    }

    /// Checks what the programs rely on; returns the problem, or nil.
    public var problem: String? {
        if vni > 0xFF_FFFF { return "VNI \(vni) is outside 0...16777215" }
        if udpPort == 0 { return "UDP port 0" }
        if underlayIfindex <= 0 { return "underlay ifindex \(underlayIfindex)" }
        if vtepMAC.isZero || vtepMAC.isMulticast { return "VtepMAC \(vtepMAC) is not a unicast address" }
        if underlayMAC.isZero { return "underlay MAC is zero" }
        return nil
    }

    public var description: String {
        "node \(nodeIP)" + (publicIP.map { " (public \($0))" } ?? "") + " vtep \(vtepMAC) vni \(vni) port \(udpPort) underlay #\(underlayIfindex) \(underlayMAC) "
            + "overlay #\(overlayIfindex) mtu \(overlayMTU) ttl \(outerTTL == 0 ? 64 : Int(outerTTL))"
            + (network.map { " network \($0)" } ?? "") + (innerSourceCheck ? "" : " (inner source check off)")
            + (fastPath ? " fast path" + (conntrackTCPLiberal ? "" : " (UDP only: conntrack TCP not liberal)") : "")
            + (enabled ? "" : " (disabled)")
    }
}

extension NodeConfig {
    /// The settings in fxdp_config, nil while none were written: the underlay's index says it was
    /// (VNI 0 is a valid VNI, so an all-zero value cannot).
    public static func read(from map: BPFMap<UInt32, fxdp_config>) throws(BPFError) -> NodeConfig? {
        guard let c = try map.lookup(0), c.underlay_ifindex != 0 else { return nil }
        return NodeConfig(c: c)
    }
}
