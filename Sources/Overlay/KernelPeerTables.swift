// Peer tables kept in the kernel: the vxlan triple (neighbour, fdb, onlink route) that flanneld
// programs per peer, DirectRouting routes, and host-gw routes.
//
// Design note:
// - Upserts write in flanneld's order — neighbour <subnet>.0 → VtepMAC (permanent), fdb VtepMAC →
//   PublicIP (self, permanent), then the route <subnet> via <subnet>.0 dev flannel.N onlink — so
//   the kernel never resolves the route's gateway by ARP before the permanent neighbour is there.
//   Every write is a replace, so an upsert repairs a half-present or changed peer in one pass.
// - `currentPeers()` reads the kernel back every time (route dump + neighbour dump + fdb dump) and
//   never returns a remembered copy: the reconciler's periodic pass then sees drift (an entry
//   deleted by hand, a device recreated) and repairs it. A peer whose neighbour or fdb entry is
//   missing reads back with `vtepMAC == nil` or `publicIP == 0.0.0.0`, so it differs from the
//   wanted peer and gets upserted again.
// - Which routes are ours: on the vxlan device, every route with a gateway; on the underlay, only
//   routes with a gateway whose destination lies inside the flannel network (host-gw and
//   DirectRouting peers). Routes anyone else made outside the network are never touched.
// - Direct peers (DirectRouting) get `<subnet> via <PublicIP>` on the underlay as in flanneld, and
//   no neighbour; their fdb entry (VtepMAC → PublicIP) is kept so that the peer reads back exactly
//   as it was given (MAC included) and a reconciler comparing sets sees no false difference. The
//   entry is inert: nothing resolves to that MAC on flannel.N without a neighbour entry.
// - Removals delete in reverse (route, then fdb, then neighbour); what is already gone is fine.
// - Both families: `KernelVXLANPeerTable` programs flannel.<VNI> with IPv4 peers,
//   `KernelVXLANv6PeerTable` flannel-v6.<VNI> with IPv6 peers (IPv6 neighbour, fdb entry whose
//   destination is the peer's PublicIPv6, route <IPv6 subnet> via <IPv6 subnet address> onlink), in
//   the same order, as flanneld's handleSubnetEvents does for each; one implementation.
// - The netlink socket is owned by the table behind a mutex; it stays in the namespace it was
//   opened in, so tests and the daemon may call from any thread.

import Glibc
import Logging
import NetTypes
import Netlink
import Synchronization

public final class KernelVXLANTable<P: OverlayPeer>: Sendable {
    public typealias Subnet = P.Subnet
    public typealias Address = P.Subnet.Address
    public var tableName: String { Address.family == .ipv4 ? "kernel-vxlan" : "kernel-vxlan6" }
    public let device: FlannelVXLANLink<Subnet>
    /// The flannel network: DirectRouting routes inside it on the underlay are ours.
    public let network: Subnet
    private let netlink: Mutex<NetlinkSocket>
    private let logger: Logger

    /// Uses `socket` (moved in) for all kernel access; its namespace is the table's namespace.
    public init(device: FlannelVXLANLink<Subnet>, network: Subnet, socket: consuming NetlinkSocket,
                logger: Logger = Logger(label: "flanneld-xdp.overlay")) {
        self.device = device
        self.network = network
        self.netlink = Mutex(socket)
        self.logger = logger
    }

    /// Opens its own socket in the namespace at `networkNamespace` (nil: the calling thread's).
    public convenience init(device: FlannelVXLANLink<Subnet>, network: Subnet, networkNamespace: String? = nil,
                            logger: Logger = Logger(label: "flanneld-xdp.overlay")) throws(OverlayError) {
        let socket = try openSocket(networkNamespace)
        self.init(device: device, network: network, socket: socket, logger: logger)
    }

    public func currentPeers() throws -> Set<P> {
        try netlink.withLock { nl throws(OverlayError) -> Set<P> in
            try checkDevice(&nl)
            do throws(NetlinkError) {
                let routes = try nl.routeDump(Subnet.self)
                let macByGateway = Dictionary(
                    try nl.neighbourDump(Address.self, index: device.index).compactMap { n in n.mac.map { (n.address, $0) } },
                    uniquingKeysWith: { a, _ in a })
                let ipByMAC = Dictionary(
                    try nl.fdbDump(Address.self, index: device.index).compactMap { e in e.destination.map { (e.mac, $0) } },
                    uniquingKeysWith: { a, _ in a })
                var peers = Set<P>()
                for r in routes where r.type == 1 {
                    guard let gw = r.gateway else { continue }
                    if r.outputIndex == device.index {
                        let mac = macByGateway[gw]
                        let ip = mac.flatMap { ipByMAC[$0] } ?? Address.unspecifiedAddress
                        peers.insert(P.kernelPeer(subnet: r.destination, publicIP: ip, vtepMAC: mac, direct: false))
                    } else if r.outputIndex == device.underlayIndex, isPeerDestination(r.destination) {
                        let mac = ipByMAC.first { $0.value == gw }?.key
                        peers.insert(P.kernelPeer(subnet: r.destination, publicIP: gw, vtepMAC: mac, direct: true))
                    }
                }
                return peers
            } catch {
                throw .netlink(error, while: "reading \(tableName) peers of \(device.name)")
            }
        }
    }

    public func upsert(_ peer: P) throws {
        try netlink.withLock { nl throws(OverlayError) in
            do {
                if peer.direct {
                    // A peer that moves from vxlan to direct must not leave its neighbour behind
                    // (absent is fine; no dumps). The fdb entry stays, pointing at the PublicIP.
                    try ignoringMissing { () throws(NetlinkError) in
                        try nl.deleteNeighbour(address: peer.subnet.address, index: device.index)
                    }
                    if let mac = peer.vtepMAC {
                        try nl.replaceFDB(BridgeFDBEntry(index: device.index, mac: mac, destination: peer.publicIP, state: .permanent, flags: .device))
                    }
                    try nl.replaceRoute(IPRoute(destination: peer.subnet, gateway: peer.publicIP))
                    logger.debug("direct route", metadata: ["peer": "\(peer)"])
                    return
                }
                guard let mac = peer.vtepMAC else { throw OverlayError.peerWithoutVtepMAC("\(peer)") }
                let gateway = peer.subnet.address
                try nl.replaceNeighbour(IPNeighbour(index: device.index, address: gateway, mac: mac, state: .permanent))
                try nl.replaceFDB(BridgeFDBEntry(index: device.index, mac: mac, destination: peer.publicIP, state: .permanent, flags: .device))
                try nl.replaceRoute(IPRoute(destination: peer.subnet, gateway: gateway, outputIndex: device.index, onlink: true))
                logger.debug("vxlan peer", metadata: ["peer": "\(peer)"])
            } catch let e as OverlayError {
                throw e
            } catch let e as NetlinkError {
                if e.errno == ENODEV { throw .deviceMissing(name: device.name, index: device.index) }
                throw .netlink(e, while: "adding peer \(peer) to \(device.name)")
            } catch {
                throw .netlink(NetlinkError(operation: "upsert", object: "\(peer)", errno: EIO), while: "\(error)")
            }
        }
    }

    public func remove(_ peer: P) throws {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                // Route first: nothing is sent towards the peer once its fdb entry is gone. Both
                // kinds are tried (a peer may have switched between vxlan and direct); a route
                // that is not there is fine. No dumps here: removal stays O(1) per peer.
                try ignoringMissing { () throws(NetlinkError) in
                    try nl.deleteRoute(IPRoute(destination: peer.subnet, outputIndex: device.index))
                }
                if isPeerDestination(peer.subnet) {
                    try ignoringMissing { () throws(NetlinkError) in
                        try nl.deleteRoute(IPRoute(destination: peer.subnet, outputIndex: device.underlayIndex))
                    }
                }
                // The fdb entry is keyed by the VtepMAC; a peer read back without one (its
                // neighbour was missing) has none left to remove, unless the neighbour says otherwise.
                var mac = peer.vtepMAC
                if mac == nil {
                    mac = try nl.neighbourDump(Address.self, index: device.index).first { $0.address == peer.subnet.address }?.mac
                }
                if let mac {
                    // Without a destination the whole entry for the MAC goes, whichever PublicIP it
                    // points at now (a VtepMAC belongs to exactly one peer).
                    try ignoringMissing { () throws(NetlinkError) in
                        try nl.deleteFDB(BridgeFDBEntry<Address>(index: device.index, mac: mac, destination: nil, state: [], flags: .device))
                    }
                }
                try ignoringMissing { () throws(NetlinkError) in
                    try nl.deleteNeighbour(address: peer.subnet.address, index: device.index)
                }
            } catch {
                throw .netlink(error, while: "removing peer \(peer) from \(device.name)")
            }
        }
    }

    /// Throws `deviceMissing` unless our ifindex still names our vxlan device. Reading an empty
    /// table off a deleted device would tell the reconciler "no peers" when the truth is "no device".
    public func verifyDevice() throws(OverlayError) {
        try netlink.withLock { nl throws(OverlayError) in try checkDevice(&nl) }
    }

    private func checkDevice(_ nl: inout NetlinkSocket) throws(OverlayError) {
        let link: LinkInfo?
        do {
            link = try nl.link(index: device.index)
        } catch {
            throw .netlink(error, while: "checking \(device.name)")
        }
        guard let link, link.name == device.name, link.kind == "vxlan", link.vxlan?.vni == device.vni else {
            throw .deviceMissing(name: device.name, index: device.index)
        }
    }

    private func isPeerDestination(_ d: Subnet) -> Bool {
        network.contains(d) && d != device.subnet
    }
}

public typealias KernelVXLANPeerTable = KernelVXLANTable<Peer>
/// flannel-v6.<VNI>'s peers.
public typealias KernelVXLANv6PeerTable = KernelVXLANTable<IPv6Peer>

/// host-gw: one route per peer, `<subnet> via <PublicIP> dev <underlay>`, as flanneld's host-gw
/// backend (IPv4 and, in a dual-stack network, IPv6: `<IPv6 subnet> via <PublicIPv6>`).
public final class HostGWTable<P: OverlayPeer>: Sendable {
    public typealias Subnet = P.Subnet
    public var tableName: String { Subnet.Address.family == .ipv4 ? "kernel-host-gw" : "kernel-host-gw6" }
    public let underlayIndex: Int32
    /// The flannel network: only routes inside it are read back or removed.
    public let network: Subnet
    /// This node's own subnet, never treated as a peer.
    public let ownSubnet: Subnet?
    private let netlink: Mutex<NetlinkSocket>

    public init(underlayIndex: Int32, network: Subnet, ownSubnet: Subnet?, socket: consuming NetlinkSocket) {
        self.underlayIndex = underlayIndex
        self.network = network
        self.ownSubnet = ownSubnet
        self.netlink = Mutex(socket)
    }

    public convenience init(underlayIndex: Int32, network: Subnet, ownSubnet: Subnet?,
                            networkNamespace: String? = nil) throws(OverlayError) {
        let socket = try openSocket(networkNamespace)
        self.init(underlayIndex: underlayIndex, network: network, ownSubnet: ownSubnet, socket: socket)
    }

    public func currentPeers() throws -> Set<P> {
        try netlink.withLock { nl throws(OverlayError) -> Set<P> in
            do throws(NetlinkError) {
                var peers = Set<P>()
                for r in try nl.routeDump(Subnet.self) where r.type == 1 && r.outputIndex == underlayIndex && isPeerDestination(r.destination) {
                    if let gw = r.gateway { peers.insert(P.kernelPeer(subnet: r.destination, publicIP: gw, vtepMAC: nil, direct: false)) }
                }
                return peers
            } catch {
                throw .netlink(error, while: "reading \(tableName) routes")
            }
        }
    }

    public func upsert(_ peer: P) throws {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                try nl.replaceRoute(IPRoute(destination: peer.subnet, gateway: peer.publicIP, outputIndex: underlayIndex))
            } catch {
                throw .netlink(error, while: "adding host-gw route for \(peer)")
            }
        }
    }

    public func remove(_ peer: P) throws {
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                guard isPeerDestination(peer.subnet) else { return }
                try ignoringMissing { () throws(NetlinkError) in
                    try nl.deleteRoute(IPRoute(destination: peer.subnet, outputIndex: underlayIndex))
                }
            } catch {
                throw .netlink(error, while: "removing host-gw route for \(peer)")
            }
        }
    }

    private func isPeerDestination(_ d: Subnet) -> Bool {
        network.contains(d) && d != network && d != ownSubnet
    }
}

public typealias HostGWPeerTable = HostGWTable<Peer>
public typealias HostGWv6PeerTable = HostGWTable<IPv6Peer>

func openSocket(_ networkNamespace: String?) throws(OverlayError) -> NetlinkSocket {
    do {
        if let networkNamespace { return try NetlinkSocket(networkNamespace: networkNamespace) }
        return try NetlinkSocket()
    } catch {
        throw .netlink(error, while: "opening a netlink socket")
    }
}

/// Runs `body`; "no such entry" is success (removing what is already gone).
func ignoringMissing(_ body: () throws(NetlinkError) -> Void) throws(NetlinkError) {
    do {
        try body()
    } catch where error.isNotFound {
    }
}
