// IPv6 through the userspace path (dual-stack and IPv6-only networks), speaking what a stock
// flannel node's `flannel-v6.<VNI>` speaks: VXLAN over UDP over the IPv6 underlay to the peer's
// PublicIPv6 and the config port, the same VNI, inner Ethernet dst = the peer's BackendV6Data
// VtepMAC, src = ours (not the IPv4 device's), type 0x86DD, then the inner IPv6 packet.
//
// One TUN carries both families (the kernel routes the IPv6 pod network into it too). TUN → UDP:
// the TUN worker hands IPv6 packets here; each is looked up in the IPv6 peer snapshot and sent on
// the IPv6 socket, one sendto per packet. UDP → TUN: one extra thread reads the IPv6 socket, checks
// each datagram (sender is a peer node, VXLAN flags and VNI, inner dst MAC = our IPv6 VtepMAC, inner
// type IPv6, inner IPv6 header sane, inner source belongs to the sending peer) and writes the inner
// packet into the TUN. flannel pairs IPv4 with flannel.<VNI> and IPv6 with flannel-v6.<VNI>: an
// inner IPv4 packet on the IPv6 underlay (or the reverse) is dropped as `innerWrongFamily`.
//
// Limits, on purpose: no GSO/GRO for IPv6 (the TUN does not offer TSO6, so IPv6 TCP arrives in
// MTU-size packets), no ICMPv6 errors written back (an unknown destination or a too-big packet is
// counted as `noPeer`/`tooBig`; the daemon routes the IPv6 network into the TUN with the IPv6 MTU,
// so the kernel sends Packet Too Big before a packet gets here), and the outer traffic class is
// not copied into the inner header (the outer ECN of IPv4 is).
import Atomics
import Glibc
import NetTypes
import Synchronization

/// The IPv6 side of the userspace path.
public struct UserspaceIPv6Config: Sendable, Hashable {
    /// Our IPv6 underlay address: the IPv6 socket binds to [localIP]:port.
    public var localIP: IPv6Address
    /// Our IPv6 VtepMAC (published as BackendV6Data.VtepMAC).
    public var localVTEPMAC: MACAddress
    /// The largest inner IPv6 packet: underlay MTU − 70, flannel-v6.<VNI>'s MTU.
    public var mtu: Int

    public init(localIP: IPv6Address, localVTEPMAC: MACAddress, mtu: Int) {
        self.localIP = localIP
        self.localVTEPMAC = localVTEPMAC
        self.mtu = mtu
    }

    var problems: [String] {
        var problems: [String] = []
        if localVTEPMAC.isMulticast || localVTEPMAC.isZero { problems.append("local IPv6 VTEP MAC \(localVTEPMAC) must be unicast and non-zero") }
        if !(1280...65_000).contains(mtu) { problems.append("IPv6 mtu \(mtu) must be within 1280...65000 (IPv6's minimum MTU is 1280)") }
        if localIP == .unspecified || localIP.isMulticast { problems.append("local IPv6 address \(localIP) cannot be bound") }
        return problems
    }
}

/// Where packets for one IPv6 peer subnet go.
struct IPv6PeerTarget: Sendable {
    var nodeAddress: UInt128
    /// The peer's IPv6 VtepMAC in the low 48 bits, first byte most significant.
    var vtepMAC: UInt64
}

/// The IPv6 peer table as the workers see it (see PeerSnapshot for the scheme).
final class IPv6PeerSnapshot: AtomicReference, Sendable {
    struct Group: Sendable {
        var mask: UInt128
        var networks: [UInt128]
        var targets: [IPv6PeerTarget]
    }

    let groups: [Group]
    let nodeIPs: [UInt128]

    init(peers: [IPv6Subnet: IPv6Peer]) {
        var byLength: [Int: [(UInt128, IPv6PeerTarget)]] = [:]
        var nodes = Set<UInt128>()
        for (subnet, peer) in peers {
            let target = IPv6PeerTarget(nodeAddress: peer.publicIP.value, vtepMAC: peer.vtepMAC.map(PeerSnapshot.pack) ?? 0)
            byLength[subnet.prefixLength, default: []].append((subnet.address.value, target))
            nodes.insert(peer.publicIP.value)
        }
        groups = byLength.keys.sorted(by: >).map { length in
            let entries = byLength[length]!.sorted { $0.0 < $1.0 }
            return Group(mask: IPv6Subnet.mask(length), networks: entries.map(\.0), targets: entries.map(\.1))
        }
        nodeIPs = nodes.sorted()
    }

    func lookup(_ destination: UInt128) -> IPv6PeerTarget? {
        for group in groups {
            if let index = PeerSnapshot.search(group.networks, destination & group.mask) { return group.targets[index] }
        }
        return nil
    }

    func mayCarry(innerSource inner: UInt128, from outer: UInt128) -> Bool {
        inner == outer || lookup(inner)?.nodeAddress == outer
    }

    func isPeerNode(_ address: UInt128) -> Bool { PeerSnapshot.search(nodeIPs, address) != nil }
}

/// The userspace path's IPv6 peers (an IPv6PeerTable of the Dataplane module). Upserts rebuild the snapshot
/// and publish it with one atomic store, as for IPv4.
public final class UserspaceIPv6PeerTable: Sendable {
    public var tableName: String { "userspace6" }
    let peers = PublishedPeers<IPv6Subnet, IPv6Peer, IPv6PeerSnapshot> { IPv6PeerSnapshot(peers: $0) }

    public func currentPeers() throws -> Set<IPv6Peer> { peers.current }

    public func upsert(_ peer: IPv6Peer) throws {
        guard peer.vtepMAC != nil else { throw UserspaceError.ipv6PeerWithoutVTEPMAC(peer) }
        peers.upsert(peer, at: peer.subnet)
    }

    public func remove(_ peer: IPv6Peer) throws { peers.remove(at: peer.subnet) }
}

/// What the workers need for IPv6 (read-only after start).
struct IPv6Context: Sendable {
    let table: ManagedAtomic<IPv6PeerSnapshot>
    let socket: Int32
    /// The node's vxlan port and VNI with the IPv6 VtepMAC (flannel-v6.<VNI>'s).
    let framing: Framing
    let mtu: Int
}

extension Wire {
    static let etherTypeIPv6: UInt16 = 0x86DD
    static let ipv6HeaderLength = 40

    @inline(__always) static func load128(_ p: UnsafeRawPointer, _ at: Int) -> UInt128 {
        UInt128(load32(p, at)) << 96 | UInt128(load32(p, at + 4)) << 64 | UInt128(load32(p, at + 8)) << 32 | UInt128(load32(p, at + 12))
    }

    /// The VXLAN header and inner Ethernet header (22 bytes at `p`).
    @inline(__always)
    static func writeVXLAN(_ p: UnsafeMutableRawPointer, vni: UInt32, destinationMAC: UInt64, sourceMAC: UInt64, etherType: UInt16) {
        store32(p, 0, UInt32(vxlanFlagI) << 24)
        store32(p, 4, vni << 8)
        storeMAC(p, 8, destinationMAC)
        storeMAC(p, 14, sourceMAC)
        store16(p, 20, etherType)
    }

    /// The inner IPv6 packet's length (header + payload) when `cursor` starts a sane IPv6 header.
    @inline(__always)
    static func checkIPv6(_ cursor: ByteCursor) -> Int? {
        var c = cursor
        guard let at = c.take(ipv6HeaderLength), c.u8(at) >> 4 == 6 else { return nil }
        let total = ipv6HeaderLength + Int(c.u16(at + 4))
        return total <= cursor.remaining ? total : nil
    }
}

extension IPv6Context {
    /// TUN → UDP for one IPv6 packet at `packet` (`length` bytes, 22 bytes of headroom in front).
    func send(_ packet: UnsafeMutableRawPointer, length: Int, tally: inout Tally, errors: inout ErrorOnce, context: WorkerContext) {
        guard let total = Wire.checkIPv6(ByteCursor(packet, end: length)) else {
            tally.drop(.malformed)
            return
        }
        guard let target = table.load(ordering: .acquiring).lookup(Wire.load128(packet, 24)) else {
            tally.drop(.noPeer)
            return
        }
        guard total <= mtu else {
            tally.drop(.tooBig)
            return
        }
        let start = packet - Wire.vxlanEncapLength
        Wire.writeVXLAN(start, vni: framing.vni, destinationMAC: target.vtepMAC, sourceMAC: framing.localMAC, etherType: Wire.etherTypeIPv6)
        var to = sockaddr_in6()
        to.sin6_family = sa_family_t(AF_INET6)
        to.sin6_port = framing.port.bigEndian
        withUnsafeMutableBytes(of: &to.sin6_addr) { raw in
            for i in 0..<16 { raw[i] = UInt8(truncatingIfNeeded: target.nodeAddress >> UInt128(8 * (15 - i))) }
        }
        let sent = withUnsafePointer(to: &to) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(socket, start, Wire.vxlanEncapLength + total, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
        if sent == Wire.vxlanEncapLength + total {
            tally.bump(Counter.txPackets)
            tally.bump(Counter.txBytes, by: UInt64(total))
        } else {
            errors.log(context.logger, "sendto a peer over IPv6", errno: errno)
            tally.drop(.sendError)
        }
    }
}

/// Opens the IPv6 UDP socket bound to [address]:port (IPv6 only, non-blocking, close-on-exec).
func openIPv6Socket(address: IPv6Address, port: UInt16, bufferBytes: Int) throws(UserspaceError) -> Int32 {
    let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { throw .udp6Socket(address: address, port: port, errno: errno) }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
    if bufferBytes > 0 {
        var size = Int32(clamping: bufferBytes)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }
    var sa = sockaddr_in6()
    sa.sin6_family = sa_family_t(AF_INET6)
    sa.sin6_port = port.bigEndian
    withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address.bytes) }
    let rc = withUnsafePointer(to: &sa) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
    }
    guard rc == 0 else {
        let e = errno
        close(fd)
        throw .udp6Socket(address: address, port: port, errno: e)
    }
    return fd
}

/// IPv6 UDP socket → decapsulate → TUN queue 0.
final class UDP6ToTunWorker: @unchecked Sendable {
    // @unchecked: after start() hands it to its thread, only that thread touches it.
    private let context: WorkerContext
    private let ipv6: IPv6Context
    private let tunFD: Int32
    private let buffer: UnsafeMutableRawPointer
    /// Room in front of the datagram for a virtio_net_hdr (the inner packet moves into the VXLAN
    /// and Ethernet headers' place, which are 22 bytes: enough for it).
    private static let headroom = 16

    init(context: WorkerContext, ipv6: IPv6Context, tunFD: Int32) {
        self.context = context
        self.ipv6 = ipv6
        self.tunFD = tunFD
        buffer = .allocate(byteCount: Self.headroom + WorkerContext.maxPacket, alignment: 64)
    }

    deinit { buffer.deallocate() }

    func run() {
        var tally = Tally()
        var errors = ErrorOnce()
        let vnet = context.vnetHeaderLength
        let datagram = buffer + Self.headroom
        while !context.stopping.load(ordering: .relaxed) {
            var from = sockaddr_in6()
            var fromLength = socklen_t(MemoryLayout<sockaddr_in6>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(ipv6.socket, datagram, WorkerContext.maxPacket, Int32(MSG_TRUNC), $0, &fromLength)
                }
            }
            if n < 0 {
                let e = errno
                if e == EAGAIN || e == EWOULDBLOCK {
                    tally.flush(into: context.counters)
                    if !context.waitReadable(ipv6.socket) { break }
                } else if e != EINTR {
                    errors.log(context.logger, "recvfrom on the IPv6 socket", errno: e)
                    context.backOff()
                }
                continue
            }
            defer { if tally.dirty { tally.flush(into: context.counters) } }
            guard n <= WorkerContext.maxPacket else {
                tally.drop(.truncated)
                continue
            }
            let outer = withUnsafeBytes(of: from.sin6_addr) { raw in raw.reduce(UInt128(0)) { $0 << 8 | UInt128($1) } }
            let snapshot = ipv6.table.load(ordering: .acquiring)
            guard snapshot.isPeerNode(outer) else {
                tally.drop(.notPeer)
                continue
            }
            var cursor = ByteCursor(datagram, end: n)
            guard let vx = cursor.take(Wire.vxlanHeaderLength) else { tally.drop(.malformed); continue }
            guard cursor.u8(vx) & Wire.vxlanFlagI != 0, cursor.u32(vx + 4) >> 8 == ipv6.framing.vni else { tally.drop(.badVNI); continue }
            guard let eth = cursor.take(Wire.ethernetHeaderLength) else { tally.drop(.malformed); continue }
            guard cursor.mac(eth) == ipv6.framing.localMAC else { tally.drop(.innerNotOurs); continue }
            guard cursor.mac(eth + 6) != ipv6.framing.localMAC else { tally.drop(.loop); continue }
            let etherType = cursor.u16(eth + 12)
            guard etherType == Wire.etherTypeIPv6 else {
                tally.drop(etherType == Wire.etherTypeIPv4 ? .innerWrongFamily : .innerNotIPv4)
                continue
            }
            guard let total = Wire.checkIPv6(cursor) else { tally.drop(.malformed); continue }
            let inner = datagram + cursor.offset
            if context.innerSourceCheck, !snapshot.mayCarry(innerSource: Wire.load128(inner, 8), from: outer) {
                tally.drop(.innerSource)
                continue
            }
            let start = inner - vnet
            if vnet > 0 { start.initializeMemory(as: UInt8.self, repeating: 0, count: vnet) }
            context.deliver(tunFD, start, vnet: vnet, length: total, tally: &tally, errors: &errors,
                            what: "write of an IPv6 packet into the TUN")
        }
        tally.flush(into: context.counters)
    }
}
