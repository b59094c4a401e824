// Leases → the peers every table should hold. The policy mirrors flannel: our own lease is skipped,
// and only leases written by the same backend type count (a vxlan node ignores host-gw leases and
// vice versa). It reads the few fields of a lease it needs (`RemoteLease`), so this module knows
// nothing of etcd or of the Leases module; the daemon maps one onto the other.

import NetTypes

/// The kind of backend the network config names, as far as peers are concerned.
public enum BackendKind: Sendable, Equatable, CustomStringConvertible {
    case vxlan(directRouting: Bool)
    case hostGW
    case udp

    /// The `BackendType` a lease written by this backend carries.
    public var leaseBackendType: String {
        switch self {
        case .vxlan: "vxlan"
        case .hostGW: "host-gw"
        case .udp: "udp"
        }
    }

    public var description: String {
        switch self {
        case .vxlan(let direct): direct ? "vxlan (DirectRouting)" : "vxlan"
        case .hostGW: "host-gw"
        case .udp: "udp"
        }
    }
}

/// What the reconciler needs of one lease; the Leases module's lease maps onto it.
public struct RemoteLease: Sendable, Hashable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var publicIP: IPv4Address
    /// `BackendType` from the lease JSON; nil when absent (the udp backend writes none).
    public var backendType: String?
    /// `BackendData.VtepMAC`, parsed; nil when absent or unparsable.
    public var vtepMAC: MACAddress?
    /// `BackendData.SourceIP`: where the node's VXLAN comes from when not from its PublicIP.
    public var sourceIP: IPv4Address?
    /// The IPv6 half: the key's IPv6 subnet, `PublicIPv6`, `BackendV6Data.VtepMAC` (nil when absent).
    public var ipv6Subnet: IPv6Subnet?
    public var publicIPv6: IPv6Address?
    public var ipv6VtepMAC: MACAddress?

    public init(subnet: IPv4Subnet, publicIP: IPv4Address, backendType: String?, vtepMAC: MACAddress?,
                sourceIP: IPv4Address? = nil, ipv6Subnet: IPv6Subnet? = nil, publicIPv6: IPv6Address? = nil,
                ipv6VtepMAC: MACAddress? = nil) {
        self.ipv6Subnet = ipv6Subnet
        self.publicIPv6 = publicIPv6
        self.ipv6VtepMAC = ipv6VtepMAC
        self.subnet = subnet
        self.publicIP = publicIP
        self.backendType = backendType
        self.vtepMAC = vtepMAC
        self.sourceIP = sourceIP
    }

    public var description: String {
        "\(subnet) at \(publicIP)" + (ipv6Subnet.map { " + \($0) at \(publicIPv6.map(String.init(describing:)) ?? "no PublicIPv6")" } ?? "")
            + " (\(backendType ?? "no BackendType"))"
    }
}

/// Turns the current lease set into the peers every table should hold.
public struct DesiredPeerPolicy: Sendable {
    public var ownSubnet: IPv4Subnet
    public var backend: BackendKind
    /// The underlay L2 network; with DirectRouting, peers whose PublicIP is inside it get `direct`.
    public var underlaySubnet: IPv4Subnet?

    public init(ownSubnet: IPv4Subnet, backend: BackendKind, underlaySubnet: IPv4Subnet?) {
        self.ownSubnet = ownSubnet
        self.backend = backend
        self.underlaySubnet = underlaySubnet
    }

    public struct Skipped: Sendable, Hashable {
        public var lease: RemoteLease
        public var reason: String
    }

    /// What one lease means for the tables.
    public enum Verdict: Sendable, Equatable {
        case peer(Peer)
        /// Our own lease: never a peer.
        case own
        case skipped(reason: String)
    }

    /// One lease on its own: the desired peer at a subnet depends on that subnet's lease only, so a
    /// lease event changes exactly one entry of the desired set.
    public func verdict(for lease: RemoteLease) -> Verdict {
        if lease.subnet == ownSubnet { return .own }
        let type = lease.backendType ?? "udp"
        guard type == backend.leaseBackendType else {
            return .skipped(reason: "BackendType \(type) is not this network's \(backend.leaseBackendType)")
        }
        switch backend {
        case .vxlan(let directRouting):
            guard let mac = lease.vtepMAC else { return .skipped(reason: "vxlan lease without a valid BackendData.VtepMAC") }
            let direct = directRouting && (underlaySubnet?.contains(lease.publicIP) ?? false)
            return .peer(Peer(subnet: lease.subnet, publicIP: lease.publicIP, vtepMAC: mac, direct: direct, sourceIP: lease.sourceIP))
        case .hostGW, .udp:
            return .peer(Peer(subnet: lease.subnet, publicIP: lease.publicIP, vtepMAC: nil))
        }
    }

    public func peers(from leases: some Sequence<RemoteLease>) -> (peers: Set<Peer>, skipped: [Skipped]) {
        var peers: Set<Peer> = []
        var skipped: [Skipped] = []
        for lease in leases {
            switch verdict(for: lease) {
            case .peer(let peer): peers.insert(peer)
            case .own: continue
            case .skipped(let reason): skipped.append(Skipped(lease: lease, reason: reason))
            }
        }
        return (peers, skipped)
    }
}

extension Peer {
    /// A peer as the kernel's tables hold it: they keep no source address (the kernel vxlan device
    /// accepts VXLAN from anyone; our source checks live in BPF).
    public static let kernelView: @Sendable (Peer) -> Peer = { peer in
        var view = peer
        view.sourceIP = nil
        return view
    }
}


/// The IPv6 half of `DesiredPeerPolicy`: the peers flannel-v6.<VNI> (and the IPv6 maps, the
/// userspace path's IPv6 table, host-gw's IPv6 routes) should hold, from the leases' IPv6 halves.
/// A lease without one (an IPv4-only node of a dual-stack network) is simply no IPv6 peer, as in
/// flannel's vxlan backend.
public struct DesiredIPv6PeerPolicy: Sendable {
    public var ownSubnet: IPv6Subnet
    public var backend: BackendKind
    /// The IPv6 network of the underlay; with DirectRouting, peers whose PublicIPv6 is inside it get `direct`.
    public var underlaySubnet: IPv6Subnet?

    public init(ownSubnet: IPv6Subnet, backend: BackendKind, underlaySubnet: IPv6Subnet?) {
        self.ownSubnet = ownSubnet
        self.backend = backend
        self.underlaySubnet = underlaySubnet
    }

    public enum Verdict: Sendable, Equatable {
        case peer(IPv6Peer)
        /// Our own lease: never a peer.
        case own
        /// The lease names no IPv6 subnet: nothing for the IPv6 tables.
        case noIPv6Half
        case skipped(reason: String)
    }

    public func verdict(for lease: RemoteLease) -> Verdict {
        guard let subnet = lease.ipv6Subnet else { return .noIPv6Half }
        if subnet == ownSubnet { return .own }
        guard let publicIP = lease.publicIPv6 else { return .skipped(reason: "an IPv6 subnet without PublicIPv6") }
        let type = lease.backendType ?? "udp"
        guard type == backend.leaseBackendType else {
            return .skipped(reason: "BackendType \(type) is not this network's \(backend.leaseBackendType)")
        }
        switch backend {
        case .vxlan(let directRouting):
            guard let mac = lease.ipv6VtepMAC else { return .skipped(reason: "vxlan lease without a valid BackendV6Data.VtepMAC") }
            let direct = directRouting && (underlaySubnet?.contains(publicIP) ?? false)
            return .peer(IPv6Peer(subnet: subnet, publicIP: publicIP, vtepMAC: mac, direct: direct))
        case .hostGW:
            return .peer(IPv6Peer(subnet: subnet, publicIP: publicIP, vtepMAC: nil))
        case .udp:
            return .skipped(reason: "the udp backend carries IPv4 only")
        }
    }

    public func peers(from leases: some Sequence<RemoteLease>) -> (peers: Set<IPv6Peer>, skipped: [(lease: RemoteLease, reason: String)]) {
        var peers: Set<IPv6Peer> = []
        var skipped: [(lease: RemoteLease, reason: String)] = []
        for lease in leases {
            switch verdict(for: lease) {
            case .peer(let peer): peers.insert(peer)
            case .own, .noIPv6Half: continue
            case .skipped(let reason): skipped.append((lease, reason))
            }
        }
        return (peers, skipped)
    }
}
