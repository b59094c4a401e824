/// One remote node as the data path needs it: which pod subnet lives behind which node IP and VTEP.
/// The reconciler turns leases into a set of these; every data path applies the same set.
public struct Peer: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var publicIP: IPv4Address
    /// The peer's VtepMAC; nil for backends without one (udp, host-gw).
    public var vtepMAC: MACAddress?
    /// DirectRouting: the peer shares our L2 network and is reached with a plain route.
    public var direct: Bool
    /// Another address the peer's VXLAN comes from (its lease's `BackendData.SourceIP`: the node's
    /// interface address when its PublicIP is another one and no NAT rewrites it); the source checks
    /// accept it as this peer. nil: it sends from `publicIP`.
    public var sourceIP: IPv4Address?

    public init(subnet: IPv4Subnet, publicIP: IPv4Address, vtepMAC: MACAddress?, direct: Bool = false,
                sourceIP: IPv4Address? = nil) {
        self.subnet = subnet
        self.publicIP = publicIP
        self.vtepMAC = vtepMAC
        self.direct = direct
        self.sourceIP = sourceIP == publicIP ? nil : sourceIP
    }

    /// The addresses VXLAN from this peer may come from.
    public var sourceAddresses: [IPv4Address] { sourceIP.map { [publicIP, $0] } ?? [publicIP] }

    public var description: String {
        "\(subnet) via \(publicIP)" + (vtepMAC.map { " vtep \($0)" } ?? "") + (direct ? " direct" : "")
            + (sourceIP.map { " from \($0)" } ?? "")
    }
}

/// The IPv6 half of a dual-stack (or IPv6-only) peer: its IPv6 pod subnet behind its PublicIPv6 and
/// the VtepMAC of its `flannel-v6.<VNI>` device (the lease's BackendV6Data), which is not the MAC of
/// its IPv4 device. flannel programs the two halves independently, each on its own device.
public struct IPv6Peer: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv6Subnet
    public var publicIP: IPv6Address
    /// BackendV6Data.VtepMAC; nil for backends without one (host-gw).
    public var vtepMAC: MACAddress?
    /// DirectRouting: the peer's PublicIPv6 is on one of our links; a plain route, no VXLAN.
    public var direct: Bool

    public init(subnet: IPv6Subnet, publicIP: IPv6Address, vtepMAC: MACAddress?, direct: Bool = false) {
        self.subnet = subnet
        self.publicIP = publicIP
        self.vtepMAC = vtepMAC
        self.direct = direct
    }

    public var description: String {
        "\(subnet) via \(publicIP)" + (vtepMAC.map { " vtep \($0)" } ?? "") + (direct ? " direct" : "")
    }
}

/// What the kernel's peer tables need of a peer of either family (`Peer`, `IPv6Peer`), so that one
/// implementation programs both devices.
public protocol OverlayPeer: Hashable, Sendable, CustomStringConvertible {
    associatedtype Subnet: IPSubnetType
    var subnet: Subnet { get }
    var publicIP: Subnet.Address { get }
    var vtepMAC: MACAddress? { get }
    var direct: Bool { get }
    /// A peer as a kernel table reads it back (it keeps no source address).
    static func kernelPeer(subnet: Subnet, publicIP: Subnet.Address, vtepMAC: MACAddress?, direct: Bool) -> Self
}

extension Peer: OverlayPeer {
    public static func kernelPeer(subnet: IPv4Subnet, publicIP: IPv4Address, vtepMAC: MACAddress?, direct: Bool) -> Peer {
        Peer(subnet: subnet, publicIP: publicIP, vtepMAC: vtepMAC, direct: direct)
    }
}

extension IPv6Peer: OverlayPeer {
    public static func kernelPeer(subnet: IPv6Subnet, publicIP: IPv6Address, vtepMAC: MACAddress?, direct: Bool) -> IPv6Peer {
        IPv6Peer(subnet: subnet, publicIP: publicIP, vtepMAC: vtepMAC, direct: direct)
    }
}
