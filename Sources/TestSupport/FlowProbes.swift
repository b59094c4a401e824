// Flows between lab namespaces that say what each end saw: the tools of the fast-path tests, which
// must show that a connection works AND who the peer looked like from each side (a reply to a
// DNAT must come back from the service address, a masqueraded client must look like its node).
//
// TCPConversation: one connection, many request/response exchanges (the first few take the kernel
// path while conntrack learns the flow, the rest may take the fast path), every byte checked.
// TCPStream: a connection that keeps sending a checked byte pattern in the background while a test
// changes the node under it (restarts, hand-back to the kernel path); `waitForProgress` blocks
// until more bytes arrived, so a test waits on an event, not on time.
// UDPProbe: datagrams whose TTL the receiver reads (IP_RECVTTL), after one exchange that lets
// conntrack see the flow answered.

import Glibc
import RuntimeSupport
import NetTypes
import Synchronization

/// What one end of a TCP or UDP flow saw.
public struct FlowEnds: Sendable, Equatable, CustomStringConvertible {
    /// The client's address and port as the server's accept() returned them.
    public var clientAsSeenByServer: (IPv4Address, UInt16)
    /// The server's address and port as the client's getpeername() returned them.
    public var serverAsSeenByClient: (IPv4Address, UInt16)

    public static func == (a: FlowEnds, b: FlowEnds) -> Bool {
        a.clientAsSeenByServer == b.clientAsSeenByServer && a.serverAsSeenByClient == b.serverAsSeenByClient
    }

    public var description: String {
        "server saw \(clientAsSeenByServer.0):\(clientAsSeenByServer.1), client saw \(serverAsSeenByClient.0):\(serverAsSeenByClient.1)"
    }
}

public struct FlowProbeError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension sockaddr_in {
    /// The IPv4 socket address `ip`:`port`.
    public init(_ ip: IPv4Address, _ port: UInt16) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        sin_addr.s_addr = ip.value.bigEndian
    }
}

enum ProbeSocket {
    static func endpoint(_ sa: sockaddr_in) -> (IPv4Address, UInt16) {
        (IPv4Address(UInt32(bigEndian: sa.sin_addr.s_addr)), UInt16(bigEndian: sa.sin_port))
    }

    /// A socket of `type` made in `namespace` (it stays there whatever thread uses it), bound to
    /// `bindTo` when given.
    static func make(_ type: Int32, in namespace: String, bindTo: (IPv4Address, UInt16)? = nil, listen backlog: Int32? = nil) throws -> Int32 {
        try NetnsThread.run(namespace: namespace) {
            let fd = socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw FlowProbeError("socket in \(namespace): errno \(errno)") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if let (ip, port) = bindTo {
                var sa = sockaddr_in(ip, port)
                let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                guard rc == 0 else { close(fd); throw FlowProbeError("bind \(ip):\(port) in \(namespace): errno \(errno)") }
            }
            if let backlog, listen(fd, backlog) != 0 {
                close(fd)
                throw FlowProbeError("listen in \(namespace): errno \(errno)")
            }
            return fd
        }
    }

    static func waitReadable(_ fd: Int32, seconds: Double) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, Int32(seconds * 1000)) == 1
    }

    static func connect(_ fd: Int32, to ip: IPv4Address, _ port: UInt16, seconds: Double) throws {
        var sa = sockaddr_in(ip, port)
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw FlowProbeError("connect to \(ip):\(port): \(String(cString: strerror(errno)))") }
    }

    static func peer(_ fd: Int32) -> (IPv4Address, UInt16) {
        var sa = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) } }
        return endpoint(sa)
    }

    /// Reads exactly `count` bytes, or throws naming what arrived.
    static func readExactly(_ fd: Int32, _ count: Int, seconds: Double) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while out.count < count {
            guard waitReadable(fd, seconds: seconds) else { throw FlowProbeError("read: \(out.count) of \(count) bytes within \(seconds) s") }
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count - out.count) }
            guard n > 0 else { throw FlowProbeError("read: connection ended after \(out.count) of \(count) bytes (errno \(errno))") }
            out += buffer[0..<n]
        }
        return out
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw FlowProbeError("write: errno \(errno) after \(sent) of \(bytes.count) bytes") }
            sent += n
        }
    }
}

/// A plain thread running `body` once, joined by `join()` (the probes block on sockets: off
/// Swift's shared pool, as the suites' own threads).
final class PosixThread: @unchecked Sendable {
    private var thread = pthread_t()
    private var joined = false

    init(_ body: @escaping @Sendable () -> Void) throws {
        let rc = PlainThread.create(&thread, body)
        guard rc == 0 else { throw FlowProbeError("pthread_create: \(rc)") }
    }

    func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }
}

public enum TCPConversation {
    /// Connects from `clientNS` to `connectTo`, served by a listener in `serverNS` on `listenOn`
    /// (the same address and port unless something translates in between), and exchanges
    /// `exchanges` messages of `size` bytes, each echoed back reversed and checked. Returns what
    /// each end saw of the other.
    public static func run(from clientNS: String, to serverNS: String, connectTo: (IPv4Address, UInt16),
                           listenOn: (IPv4Address, UInt16)? = nil, exchanges: Int = 200, size: Int = 600,
                           timeout: Double = 5) throws -> FlowEnds {
        let listener = try ProbeSocket.make(Int32(SOCK_STREAM.rawValue), in: serverNS, bindTo: listenOn ?? connectTo, listen: 4)
        defer { close(listener) }
        let client = try ProbeSocket.make(Int32(SOCK_STREAM.rawValue), in: clientNS)
        defer { close(client) }
        let served = Mutex<Result<(IPv4Address, UInt16), FlowProbeError>>(.failure(FlowProbeError("server thread did not finish")))
        let server = try PosixThread {
            served.withLock { $0 = serve(listener, exchanges: exchanges, size: size, timeout: timeout) }
        }
        var clientFailure: FlowProbeError?
        do {
            try ProbeSocket.connect(client, to: connectTo.0, connectTo.1, seconds: timeout)
            for i in 0..<exchanges {
                let message = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
                try ProbeSocket.writeAll(client, message)
                let answer = try ProbeSocket.readExactly(client, size, seconds: timeout)
                guard answer == Array(message.reversed()) else { throw FlowProbeError("exchange \(i): the answer is not the message reversed") }
            }
        } catch let error as FlowProbeError {
            clientFailure = error
            shutdown(client, Int32(SHUT_RDWR))
        }
        let seenByClient = ProbeSocket.peer(client)
        server.join()
        if let clientFailure { throw FlowProbeError("client \(clientNS) → \(connectTo.0):\(connectTo.1): \(clientFailure)") }
        let seenByServer = try served.withLock { try $0.get() }
        return FlowEnds(clientAsSeenByServer: seenByServer, serverAsSeenByClient: seenByClient)
    }

    private static func serve(_ listener: Int32, exchanges: Int, size: Int, timeout: Double) -> Result<(IPv4Address, UInt16), FlowProbeError> {
        guard ProbeSocket.waitReadable(listener, seconds: timeout) else { return .failure(FlowProbeError("server: no connection within \(timeout) s")) }
        var sa = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &length) } }
        guard fd >= 0 else { return .failure(FlowProbeError("server: accept errno \(errno)")) }
        defer { close(fd) }
        do {
            for _ in 0..<exchanges {
                let message = try ProbeSocket.readExactly(fd, size, seconds: timeout)
                try ProbeSocket.writeAll(fd, message.reversed())
            }
        } catch let error as FlowProbeError {
            return .failure(FlowProbeError("server: \(error)"))
        } catch {
            return .failure(FlowProbeError("server: \(error)"))
        }
        return .success(ProbeSocket.endpoint(sa))
    }
}

/// A TCP connection that keeps carrying a checked byte stream in the background.
public final class TCPStream: @unchecked Sendable {
    // @unchecked: the fds are owned here; shared state is behind `state`.
    private struct State {
        var received = 0
        var failure: String?
        var stop = false
    }
    /// Shared with the two threads (a Mutex cannot be captured by value).
    private final class Shared: Sendable { let state = Mutex(State()) }
    private let shared = Shared()

    private let listener: Int32
    private let client: Int32
    private var accepted: Int32 = -1
    private var sender: PosixThread?
    private var receiver: PosixThread?

    /// Connects from `clientNS` to `address`:`port` served in `serverNS` and starts sending
    /// (`chunk` bytes, then a pause of `pauseMicroseconds`, so the stream leaves the machine room).
    public init(from clientNS: String, to serverNS: String, address: IPv4Address, port: UInt16,
                chunk: Int = 16384, pauseMicroseconds: UInt32 = 1000) throws {
        listener = try ProbeSocket.make(Int32(SOCK_STREAM.rawValue), in: serverNS, bindTo: (address, port), listen: 1)
        client = try ProbeSocket.make(Int32(SOCK_STREAM.rawValue), in: clientNS)
        try ProbeSocket.connect(client, to: address, port, seconds: 5)
        guard ProbeSocket.waitReadable(listener, seconds: 5) else { throw FlowProbeError("stream: the server saw no connection") }
        accepted = accept(listener, nil, nil)
        guard accepted >= 0 else { throw FlowProbeError("stream: accept errno \(errno)") }
        let (client, accepted, shared) = (self.client, self.accepted, self.shared)
        sender = try PosixThread {
            var offset = 0
            while !shared.state.withLock({ $0.stop }) {
                let bytes = (0..<chunk).map { UInt8(truncatingIfNeeded: (offset + $0) % 251) }
                do { try ProbeSocket.writeAll(client, bytes) } catch {
                    shared.state.withLock { if $0.failure == nil && !$0.stop { $0.failure = "sender: \(error)" } }
                    return
                }
                offset += chunk
                usleep(pauseMicroseconds)
            }
        }
        receiver = try PosixThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            var offset = 0
            while true {
                guard ProbeSocket.waitReadable(accepted, seconds: 0.2) else {
                    if shared.state.withLock({ $0.stop }) { return }
                    continue
                }
                let n = buffer.withUnsafeMutableBytes { Glibc.read(accepted, $0.baseAddress, $0.count) }
                if n <= 0 {
                    shared.state.withLock { if $0.failure == nil && !$0.stop { $0.failure = "receiver: the stream ended after \(offset) bytes" } }
                    return
                }
                for i in 0..<n where buffer[i] != UInt8(truncatingIfNeeded: (offset + i) % 251) {
                    shared.state.withLock { if $0.failure == nil { $0.failure = "receiver: byte \(offset + i) is wrong" } }
                    return
                }
                offset += n
                shared.state.withLock { $0.received = offset }
            }
        }
    }

    deinit {
        _ = stop()
        close(client)
        if accepted >= 0 { close(accepted) }
        close(listener)
    }

    /// Bytes received and checked so far.
    public var received: Int { shared.state.withLock { $0.received } }
    /// The first thing that went wrong, if anything did.
    public var failure: String? { shared.state.withLock { $0.failure } }

    /// Waits until `bytes` more bytes than now arrived; false (with `failure` set or not) when
    /// `timeout` seconds passed first: a failure bound, not a pause.
    public func waitForProgress(bytes: Int, timeout: Double = 10) -> Bool {
        let target = received + bytes
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            if received >= target { return true }
            if failure != nil { return false }
            usleep(10_000)
        }
        return received >= target
    }

    /// Stops both threads; returns (bytes received, failure).
    @discardableResult
    public func stop() -> (received: Int, failure: String?) {
        shared.state.withLock { $0.stop = true }
        sender?.join()
        receiver?.join()
        sender = nil
        receiver = nil
        return shared.state.withLock { ($0.received, $0.failure) }
    }
}

public enum UDPProbe {
    /// One request/response exchange from `clientNS` to `server` (so conntrack sees the flow
    /// answered), then `count` datagrams sent with IP TTL `ttl`. Returns the TTLs the receiver saw
    /// (IP_RECVTTL) for the datagrams that arrived within `timeout` of the last one.
    public static func ttlsSeen(from clientNS: String, to serverNS: String, server: (IPv4Address, UInt16),
                                ttl: Int32, count: Int = 5, timeout: Double = 2) throws -> (ends: FlowEnds, ttls: [Int]) {
        let receiver = try ProbeSocket.make(Int32(SOCK_DGRAM.rawValue), in: serverNS, bindTo: server)
        defer { close(receiver) }
        var one: Int32 = 1
        setsockopt(receiver, Int32(IPPROTO_IP), IP_RECVTTL, &one, socklen_t(MemoryLayout<Int32>.size))
        let sender = try ProbeSocket.make(Int32(SOCK_DGRAM.rawValue), in: clientNS)
        defer { close(sender) }
        try ProbeSocket.connect(sender, to: server.0, server.1, seconds: 2)
        // The exchange: up to 5 tries (the very first datagram may wait for ARP on the way).
        var clientSeen: (IPv4Address, UInt16)?
        for _ in 0..<5 where clientSeen == nil {
            _ = "hello".withCString { Glibc.write(sender, $0, 5) }
            guard ProbeSocket.waitReadable(receiver, seconds: 1) else { continue }
            let (from, _, _) = receive(receiver)
            clientSeen = from
            var to = sockaddr_in(from.0, from.1)
            let reply = Array("reply".utf8)
            _ = withUnsafePointer(to: &to) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    reply.withUnsafeBytes { sendto(receiver, $0.baseAddress, $0.count, 0, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
        }
        guard let clientSeen else { throw FlowProbeError("udp: \(server.0):\(server.1) got nothing from \(clientNS)") }
        guard ProbeSocket.waitReadable(sender, seconds: 2) else { throw FlowProbeError("udp: the reply never reached \(clientNS)") }
        var buffer = [UInt8](repeating: 0, count: 64)
        _ = Glibc.read(sender, &buffer, buffer.count)
        let serverSeen = ProbeSocket.peer(sender)
        var value = ttl
        setsockopt(sender, Int32(IPPROTO_IP), IP_TTL, &value, socklen_t(MemoryLayout<Int32>.size))
        for i in 0..<count {
            let payload = Array("ttl-probe-\(i)".utf8)
            _ = payload.withUnsafeBytes { Glibc.write(sender, $0.baseAddress, $0.count) }
        }
        var ttls: [Int] = []
        while ttls.count < count, ProbeSocket.waitReadable(receiver, seconds: timeout) {
            let (_, received, seen) = receive(receiver)
            if received.starts(with: Array("ttl-probe-".utf8)), let seen { ttls.append(seen) }
        }
        return (FlowEnds(clientAsSeenByServer: clientSeen, serverAsSeenByClient: serverSeen), ttls)
    }

    /// One datagram: sender, payload, the IP_TTL control message's value.
    private static func receive(_ fd: Int32) -> ((IPv4Address, UInt16), [UInt8], Int?) {
        var from = sockaddr_in()
        var data = [UInt8](repeating: 0, count: 2048)
        var control = [UInt8](repeating: 0, count: 64)
        return data.withUnsafeMutableBytes { dataBuffer in
            control.withUnsafeMutableBytes { controlBuffer in
                withUnsafeMutablePointer(to: &from) { fromPointer in
                    var iov = iovec(iov_base: dataBuffer.baseAddress, iov_len: dataBuffer.count)
                    return withUnsafeMutablePointer(to: &iov) { iovPointer in
                        var message = msghdr()
                        message.msg_name = UnsafeMutableRawPointer(fromPointer)
                        message.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                        message.msg_iov = iovPointer
                        message.msg_iovlen = 1
                        message.msg_control = controlBuffer.baseAddress
                        message.msg_controllen = controlBuffer.count
                        let n = recvmsg(fd, &message, 0)
                        var ttl: Int?
                        // struct cmsghdr: size_t len, int level, int type, then the data.
                        var offset = 0
                        while offset + 16 <= message.msg_controllen {
                            let len = controlBuffer.load(fromByteOffset: offset, as: Int.self)
                            let level = controlBuffer.load(fromByteOffset: offset + 8, as: Int32.self)
                            let type = controlBuffer.load(fromByteOffset: offset + 12, as: Int32.self)
                            if level == Int32(IPPROTO_IP) && type == IP_TTL && len >= 20 {
                                ttl = Int(controlBuffer.load(fromByteOffset: offset + 16, as: Int32.self))
                            }
                            guard len > 0 else { break }
                            offset += (len + 7) & ~7
                        }
                        let bytes = n > 0 ? Array(dataBuffer[0..<n]) : []
                        return (ProbeSocket.endpoint(fromPointer.pointee), bytes, ttl)
                    }
                }
            }
        }
    }
}
