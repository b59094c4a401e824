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
                        // The covering route (the whole network) is the BPF path's, not a peer's.
                        if r.destination == network { continue }
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

    /// `upsert` for many peers in a few netlink sends (NetlinkSocket.apply), in the same order per
    /// peer. Returns the peers that failed, each with its first error; the others are in place.
    public func upsert(batch peers: [P]) -> [(P, any Error)] {
        var changes: [NetlinkChange] = []
        var owners: [Int] = []
        var absentIsFine: [Bool] = []
        var failures: [(P, any Error)] = []
        changes.reserveCapacity(peers.count * 3)
        func add(_ change: NetlinkChange, _ owner: Int, absentIsFine fine: Bool = false) {
            changes.append(change)
            owners.append(owner)
            absentIsFine.append(fine)
        }
        for (i, peer) in peers.enumerated() {
            if peer.direct {
                add(.deleteNeighbour(address: peer.subnet.address, index: device.index), i, absentIsFine: true)
                if let mac = peer.vtepMAC {
                    add(.replaceFDB(BridgeFDBEntry(index: device.index, mac: mac, destination: peer.publicIP, state: .permanent, flags: .device)), i)
                }
                add(.replaceRoute(IPRoute(destination: peer.subnet, gateway: peer.publicIP)), i)
                continue
            }
            guard let mac = peer.vtepMAC else {
                failures.append((peer, OverlayError.peerWithoutVtepMAC("\(peer)")))
                continue
            }
            let gateway = peer.subnet.address
            add(.replaceNeighbour(IPNeighbour(index: device.index, address: gateway, mac: mac, state: .permanent)), i)
            add(.replaceFDB(BridgeFDBEntry(index: device.index, mac: mac, destination: peer.publicIP, state: .permanent, flags: .device)), i)
            add(.replaceRoute(IPRoute(destination: peer.subnet, gateway: gateway, outputIndex: device.index, onlink: true)), i)
        }
        return failures + applyBatch(changes, owners: owners, absentIsFine: absentIsFine, peers: peers, doing: "adding peer")
    }

    /// `remove` for many peers in a few netlink sends; what is already gone is fine.
    public func remove(batch peers: [P]) -> [(P, any Error)] {
        var changes: [NetlinkChange] = []
        var owners: [Int] = []
        changes.reserveCapacity(peers.count * 4)
        // A peer read back without a VtepMAC: its fdb entry is found through its neighbour (one dump).
        var macByGateway: [Address: MACAddress] = [:]
        if peers.contains(where: { $0.vtepMAC == nil }) {
            let neighbours = netlink.withLock { nl in try? nl.neighbourDump(Address.self, index: device.index) } ?? []
            for n in neighbours { if let mac = n.mac { macByGateway[n.address] = mac } }
        }
        for (i, peer) in peers.enumerated() {
            changes.append(.deleteRoute(IPRoute(destination: peer.subnet, outputIndex: device.index)))
            owners.append(i)
            if isPeerDestination(peer.subnet) {
                changes.append(.deleteRoute(IPRoute(destination: peer.subnet, outputIndex: device.underlayIndex)))
                owners.append(i)
            }
            if let mac = peer.vtepMAC ?? macByGateway[peer.subnet.address] {
                changes.append(.deleteFDB(BridgeFDBEntry<Address>(index: device.index, mac: mac, destination: nil, state: [], flags: .device)))
                owners.append(i)
            }
            changes.append(.deleteNeighbour(address: peer.subnet.address, index: device.index))
            owners.append(i)
        }
        return applyBatch(changes, owners: owners, absentIsFine: [Bool](repeating: true, count: changes.count), peers: peers,
                          doing: "removing peer")
    }

    private func applyBatch(_ changes: [NetlinkChange], owners: [Int], absentIsFine: [Bool], peers: [P],
                            doing: String) -> [(P, any Error)] {
        let results = netlink.withLock { nl in nl.apply(changes) }
        var failed = Set<Int>()
        var failures: [(P, any Error)] = []
        for (j, result) in results.enumerated() {
            guard let error = result, !(absentIsFine[j] && error.isNotFound), failed.insert(owners[j]).inserted else { continue }
            let peer = peers[owners[j]]
            failures.append((peer, error.errno == ENODEV ? OverlayError.deviceMissing(name: device.name, index: device.index)
                                                         : OverlayError.netlink(error, while: "\(doing) \(peer) on \(device.name)")))
        }
        return failures
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

extension KernelVXLANTable where P == Peer {
    /// The covering route's gateway: an IPv4 link-local address from the block RFC 3927 keeps out
    /// of autoconfiguration (169.254.255.0/24), so no host holds it and no lease or pod can be it,
    /// unlike any address of the network (a peer's <subnet>.0 is flanneld's gateway for it).
    public static var coveringGateway: IPv4Address { IPv4Address(169, 254, 255, 254) }

    /// `<network> via 169.254.255.254 dev flannel.<VNI> onlink`, its gateway a permanent neighbour
    /// with the device's own MAC. It steers every pod packet for the network that no more specific
    /// route claims (a peer whose kernel state is not programmed yet) into flannel.<VNI>, where
    /// the encap program takes its peer from the map: with the covering route, a peer is reachable
    /// once its map entry is written. The kernel resolves a route's next hop before the packet
    /// reaches the device's egress hook, hence the permanent neighbour; the encap program writes the
    /// inner MAC from the map, so the neighbour's MAC is never sent. A packet the program hands back
    /// (no peer, programs disabled) reaches the kernel vxlan driver with that MAC, which no fdb
    /// entry names: the driver drops it (tx_dropped), as it would with no route at all. Per-peer
    /// routes are more specific and win wherever they exist. Both are replaced, so this repairs.
    public func ensureCoveringRoute() throws(OverlayError) {
        let gateway = Self.coveringGateway
        let results = netlink.withLock { nl in
            nl.apply([.replaceNeighbour(IPNeighbour(index: device.index, address: gateway, mac: device.mac, state: .permanent)),
                      .replaceRoute(IPRoute(destination: network, gateway: gateway, outputIndex: device.index, onlink: true))])
        }
        if let error = results.compactMap({ $0 }).first {
            throw .netlink(error, while: "adding the covering route \(network) via \(gateway) dev \(device.name)")
        }
    }

    /// Removes the covering route (every route of the device via its gateway, whatever network it
    /// was made for) and its neighbour, before the BPF programs go: without them the route only
    /// drops what stock flanneld would send down the default route.
    public func removeCoveringRoute() throws(OverlayError) {
        let gateway = Self.coveringGateway
        try netlink.withLock { nl throws(OverlayError) in
            do throws(NetlinkError) {
                let covering = try nl.routeDump(IPv4Subnet.self).filter { $0.outputIndex == device.index && $0.gateway == gateway }
                let results = nl.apply(covering.map { NetlinkChange.deleteRoute(IPRoute(destination: $0.destination, gateway: gateway, outputIndex: device.index)) }
                    + [.deleteNeighbour(address: gateway, index: device.index)])
                if let error = results.compactMap({ $0 }).first(where: { !$0.isNotFound }) { throw error }
            } catch {
                throw .netlink(error, while: "removing the covering route via \(gateway) dev \(device.name)")
            }
        }
    }

    /// Whether the covering route is in place.
    public func hasCoveringRoute() throws(OverlayError) -> Bool {
        try netlink.withLock { nl throws(OverlayError) -> Bool in
            do throws(NetlinkError) {
                return try nl.routeDump(IPv4Subnet.self).contains {
                    $0.destination == network && $0.outputIndex == device.index && $0.gateway == Self.coveringGateway
                }
            } catch {
                throw .netlink(error, while: "reading the routes of \(device.name)")
            }
        }
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

    /// `upsert` for many peers in a few netlink sends. Returns the peers that failed.
    public func upsert(batch peers: [P]) -> [(P, any Error)] {
        let changes = peers.map { NetlinkChange.replaceRoute(IPRoute(destination: $0.subnet, gateway: $0.publicIP, outputIndex: underlayIndex)) }
        let results = netlink.withLock { nl in nl.apply(changes) }
        return zip(peers, results).compactMap { peer, result in
            result.map { (peer, OverlayError.netlink($0, while: "adding host-gw route for \(peer)")) }
        }
    }

    /// `remove` for many peers in a few netlink sends; routes already gone are fine.
    public func remove(batch peers: [P]) -> [(P, any Error)] {
        let mine = peers.filter { isPeerDestination($0.subnet) }
        let changes = mine.map { NetlinkChange.deleteRoute(IPRoute(destination: $0.subnet, outputIndex: underlayIndex)) }
        let results = netlink.withLock { nl in nl.apply(changes) }
        return zip(mine, results).compactMap { peer, result in
            guard let error = result, !error.isNotFound else { return nil }
            return (peer, OverlayError.netlink(error, while: "removing host-gw route for \(peer)"))
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
