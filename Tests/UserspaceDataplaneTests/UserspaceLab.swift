// Helpers that put the userspace data path on NetnsLab nodes, the way the daemon will: the
// dataplane is created on a thread inside the node's namespace (so its TUN and sockets live there),
// then the TUN gets <own subnet>.0/32, link up, and one route for the cluster network (the daemon
// does this through netlink; the test uses the ip CLI).
import CBPF
import CSystemShims
import Glibc
import Logging
import NetTypes
import TestSupport
@testable import UserspaceDataplane

let clusterNetwork = IPv4Subnet(cidr: "10.5.0.0/16")!

struct UserspaceNode {
    let node: LabNode
    let dataplane: UserspaceDataplane
    let vtepMAC: MACAddress?

    var asPeer: Peer { Peer(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: vtepMAC) }
}

enum Backend { case vxlan, udp }

func makeUserspaceNode(
    lab: NetnsLab, node: LabNode, backend: Backend = .vxlan, vni: UInt32 = 1, offloads: Bool = true,
    queues: Int = 1
) throws -> UserspaceNode {
    let mac = MACAddress.randomLocal()
    let encapsulation: UserspaceConfig.Encapsulation
    let tunName: String
    switch backend {
    case .vxlan:
        encapsulation = .vxlan(vni: vni, port: 8472, localVTEPMAC: mac)
        tunName = "flannel.\(vni)"
    case .udp:
        encapsulation = .udp(port: 8285)
        tunName = "flannel0"
    }
    let config = UserspaceConfig(
        encapsulation: encapsulation, localIP: node.nodeIP, tunName: tunName,
        mtu: node.underlayMTU - encapsulation.overhead, queues: queues,
        icmpSourceIP: node.podSubnet.address, offloads: offloads)
    var logger = Logger(label: "fxus.\(node.name)")
    logger.logLevel = .warning
    let dataplane = try NetnsThread.run(namespace: node.name) { try UserspaceDataplane(config: config, logger: logger) }
    try lab.sh(node.name, ["addr", "add", "\(node.podSubnet.address)/32", "dev", tunName])
    try lab.sh(node.name, ["link", "set", tunName, "up"])
    try lab.sh(node.name, ["route", "add", "\(clusterNetwork)", "dev", tunName])
    try dataplane.start()
    return UserspaceNode(node: node, dataplane: dataplane, vtepMAC: backend == .vxlan ? mac : nil)
}

/// A lab of `count` nodes whose first two run the userspace path as each other's peers. `close()`
/// stops both paths and removes the lab.
struct UserspacePair {
    let lab: NetnsLab
    let nodes: [LabNode]
    let a: UserspaceNode
    let b: UserspaceNode

    init(nodes count: Int = 2, offloads: Bool = true) throws {
        lab = try NetnsLab(tag: "us")
        do {
            nodes = try lab.makeCluster(nodes: count)
            a = try makeUserspaceNode(lab: lab, node: nodes[0], offloads: offloads)
        } catch {
            lab.cleanup()
            throw error
        }
        do {
            b = try makeUserspaceNode(lab: lab, node: nodes[1], offloads: offloads)
            try meshPeers([a, b])
        } catch {
            a.dataplane.stop()
            lab.cleanup()
            throw error
        }
    }

    func close() {
        a.dataplane.stop()
        b.dataplane.stop()
        lab.cleanup()
    }
}

/// Every node learns every other node as a peer.
func meshPeers(_ nodes: [UserspaceNode]) throws {
    for a in nodes {
        for b in nodes where b.node.name != a.node.name { try a.dataplane.upsert(b.asPeer) }
    }
}


/// A VXLAN datagram payload as flannel sends it: header, inner Ethernet, then `inner`.
func vxlanPayload(vni: UInt32, destinationMAC: MACAddress, sourceMAC: MACAddress, inner: [UInt8], flags: UInt8 = 0x08) -> [UInt8] {
    [flags, 0, 0, 0, UInt8(vni >> 16 & 0xff), UInt8(vni >> 8 & 0xff), UInt8(vni & 0xff), 0]
        + destinationMAC.bytes + sourceMAC.bytes + [0x08, 0x00] + inner
}

/// A minimal valid IPv4/ICMP echo request (header checksum correct).
func ipv4Packet(source: IPv4Address, destination: IPv4Address, payloadLength: Int = 8, ttl: UInt8 = 64) -> [UInt8] {
    let total = 20 + payloadLength
    var p: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0x40, 0, ttl, 1, 0, 0]
    p += source.bytes + destination.bytes
    var sum: UInt32 = 0
    for i in stride(from: 0, to: 20, by: 2) { sum += UInt32(p[i]) << 8 | UInt32(p[i + 1]) }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    let check = ~UInt16(sum)
    p[10] = UInt8(check >> 8)
    p[11] = UInt8(check & 0xff)
    return p + [8, 0, 0xf7, 0xff, 0, 0, 0, 0] + [UInt8](repeating: 0, count: max(0, payloadLength - 8))
}

/// Polls `condition` until true or `timeout` seconds pass.
func eventually(timeout: Double = 3, _ condition: () throws -> Bool) rethrows -> Bool {
    var waited = 0.0
    while waited < timeout {
        if try condition() { return true }
        usleep(50_000)
        waited += 0.05
    }
    return try condition()
}

/// iperf3 single stream from `client` to a one-off server on `server`; returns the receiver's bits
/// per second, or throws with everything iperf3 printed.
/// What an iperf3 run through a path that works carries at the least (bits/s): a stream that moves
/// at all, not a speed. Speed is `make bench`'s to measure; a CI machine at load 25 carried a
/// healthy path's three-node mesh at 8.6 Mbit/s.
let bulkTCPFloor = 1e6

func iperf(_ lab: NetnsLab, from client: LabNode, to server: LabNode, seconds: Int = 2, port: UInt16 = 5201) throws -> Double {
    let daemon = try lab.spawn(server.podNamespace, [LabTools.iperf3, "-s", "-1", "-B", "\(server.podIP)", "-p", "\(port)"])
    defer { daemon.terminate(grace: 1) }
    var result = try lab.run(client.podNamespace, ["/bin/true"])
    for _ in 0..<30 {
        result = try lab.run(client.podNamespace, [LabTools.iperf3, "-c", "\(server.podIP)", "-p", "\(port)", "-t", "\(seconds)", "-J", "--connect-timeout", "5000"])
        let said = result.stdout + result.stderr
        if said.contains("timed out") { print("iperf3 connect timed out (retrying): \(said.suffix(300))") }
        if result.status == 0 && !said.contains("\"error\"") { break }
        if !said.contains("refused") && !said.contains("timed out") { break }
        usleep(100_000)
    }
    let text = result.stdout
    guard result.status == 0, let section = text.firstRange(of: "\"sum_received\""),
          let key = text[section.upperBound...].firstRange(of: "\"bits_per_second\"")
    else {
        let message: String = "iperf3 failed: " + String(text.suffix(1500)) + "; server: " + String(daemon.output().suffix(800))
        throw LabError(command: ["iperf3", "-c", "\(server.podIP)"], status: result.status, stderr: result.stderr, message: message)
    }
    let number = text[key.upperBound...].drop { $0 == ":" || $0 == " " || $0 == "\t" }.prefix { "0123456789.e+-".contains($0) }
    return Double(String(number)) ?? 0
}

/// Byte `i` of the test stream: depends on its position, so a lost, duplicated or reordered
/// segment shows up as a mismatch, not only a flipped bit.
@inline(__always) func patternByte(_ i: UInt64) -> UInt8 {
    UInt8(truncatingIfNeeded: ((i &+ 0x5851_F42D_4C95_7F2D) &* 0x9E37_79B9_7F4A_7C15) >> 56) ^ UInt8(truncatingIfNeeded: i >> 12)
}

struct TransferResult: CustomStringConvertible {
    var received: Int
    var mismatches: Int
    var firstMismatch: Int?
    var description: String { "received \(received) B, \(mismatches) wrong bytes, first at \(firstMismatch.map(String.init) ?? "-")" }
}

private final class ReceiverState: @unchecked Sendable {
    // @unchecked: written by the receiver thread, read after pthread_join.
    var result = TransferResult(received: 0, mismatches: 0, firstMismatch: nil)
    var failure: String?
    let listening = ManagedAtomicFlag()
}

/// A one-word atomic flag without importing Atomics into every test file.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value = false
    init() { pthread_mutex_init(lock, nil) }
    deinit { pthread_mutex_destroy(lock); lock.deallocate() }
    func set() { pthread_mutex_lock(lock); value = true; pthread_mutex_unlock(lock) }
    var isSet: Bool { pthread_mutex_lock(lock); defer { pthread_mutex_unlock(lock) }; return value }
}

/// Sends `bytes` of the pattern over TCP from a socket in `from` to a listener in `to` at
/// address:port, and checks every byte on arrival (no tools: iperf3 -F does not write faithfully).
func transferAndVerify(_ lab: NetnsLab, from: String, to: String, address: IPv4Address, port: UInt16, bytes: Int) throws -> TransferResult {
    let state = ReceiverState()
    let receiverNS = to
    let receiver = try spawnThread(name: "fxus-recv") {
        let nsfd = open("/run/netns/\(receiverNS)", O_RDONLY | O_CLOEXEC)
        guard nsfd >= 0, shim_setns_net(nsfd) == 0 else { state.failure = "setns \(receiverNS)"; state.listening.set(); return }
        close(nsfd)
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = UInt32(bigEndian: address.value)
        let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(listener, 1) == 0 else { state.failure = "bind/listen errno \(errno)"; state.listening.set(); return }
        state.listening.set()
        var timeout = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(listener, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let conn = accept(listener, nil, nil)
        guard conn >= 0 else { state.failure = "accept errno \(errno)"; return }
        defer { close(conn) }
        setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var position = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(conn, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            for i in 0..<n where buffer[i] != patternByte(UInt64(position + i)) {
                state.result.mismatches += 1
                if state.result.firstMismatch == nil { state.result.firstMismatch = position + i }
            }
            position += n
        }
        state.result.received = position
    }
    while !state.listening.isSet { usleep(10_000) }
    if let failure = state.failure { pthread_join(receiver, nil); throw LabError(command: [], message: failure) }
    let sendError: String? = try NetnsThread.run(namespace: from) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = UInt32(bigEndian: address.value)
        let connected = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return "connect errno \(errno)" }
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var position = 0
        while position < bytes {
            let size = min(chunk.count, bytes - position)
            for i in 0..<size { chunk[i] = patternByte(UInt64(position + i)) }
            var offset = 0
            while offset < size {
                let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress! + offset, size - offset) }
                if n <= 0 { return "write errno \(errno)" }
                offset += n
            }
            position += size
        }
        shutdown(fd, Int32(SHUT_WR))
        return nil
    }
    pthread_join(receiver, nil)
    if let sendError { throw LabError(command: [], message: sendError) }
    if let failure = state.failure { throw LabError(command: [], message: failure) }
    return state.result
}
