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
