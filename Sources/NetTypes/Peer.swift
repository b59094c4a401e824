/// One remote node as the data path needs it: which pod subnet lives behind which node IP and VTEP.
/// The reconciler turns leases into a set of these; every data path applies the same set.
public struct Peer: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var publicIP: IPv4Address
    /// The peer's VtepMAC; nil for backends without one (udp, host-gw).
    public var vtepMAC: MACAddress?
    /// DirectRouting: the peer shares our L2 network and is reached with a plain route.
    public var direct: Bool

    public init(subnet: IPv4Subnet, publicIP: IPv4Address, vtepMAC: MACAddress?, direct: Bool = false) {
        self.subnet = subnet
        self.publicIP = publicIP
        self.vtepMAC = vtepMAC
        self.direct = direct
    }

    public var description: String {
        "\(subnet) via \(publicIP)" + (vtepMAC.map { " vtep \($0)" } ?? "") + (direct ? " direct" : "")
    }
}
