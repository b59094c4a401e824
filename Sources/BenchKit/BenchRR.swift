// BenchRR — TCP request/response latency between two pods, netperf TCP_RR style (netperf is not
// in Debian's main archive): one connection, a small request, the same-size reply, the next request
// only after the reply, thousands of times; each transaction is timed on the monotonic clock.
//
// Both ends run in this process. Sockets belong to the network namespace they were created in, not
// to the thread that uses them, so each socket is created on a thread inside the pod's namespace
// (NetnsThread) and then served from ordinary threads.

import CBPF
import Glibc
import NetTypes
import RuntimeSupport
import Synchronization
import TestSupport

struct RRError: Error, CustomStringConvertible {
    var description: String
    init(_ what: String, errno e: Int32 = errno) {
        description = "\(what): \(String(cString: strerror(e))) (errno \(e))"
    }
}

/// An IPv4 or IPv6 address with a port, as bind and connect take it.
struct RRSocketAddress {
    private var storage = sockaddr_storage()
    let family: Int32
    let length: socklen_t

    init<A: IPAddressType>(_ address: A, port: UInt16) {
        let bytes = address.bytes
        if bytes.count == 4 {
            family = AF_INET
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutableBytes(of: &storage) { raw in
                raw.storeBytes(of: sockaddr_in(IPv4Address(bytes: bytes), port), as: sockaddr_in.self)
            }
        } else {
            family = AF_INET6
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: bytes) }
            withUnsafeMutableBytes(of: &storage) { raw in raw.storeBytes(of: sa, as: sockaddr_in6.self) }
        }
    }

    func with<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafeBytes(of: storage) { raw in body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }
}

/// An echo server: every connection gets back exactly what it sends.
final class RRServer: @unchecked Sendable {
    // @unchecked: `listener` is immutable; the accept thread is joined in stop().
    private let listener: Int32
    private var thread = pthread_t()

    init<A: IPAddressType>(namespace: String, address: A, port: UInt16) throws {
        let sa = RRSocketAddress(address, port: port)
        listener = try NetnsThread.run(namespace: namespace) { () throws -> Int32 in
            let fd = socket(sa.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RRError("socket") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
            let rc = sa.with { bind(fd, $0, $1) }
            guard rc == 0, listen(fd, 16) == 0 else { let e = errno; close(fd); throw RRError("bind/listen \(address):\(port)", errno: e) }
            return fd
        }
        let fd = listener
        thread = try RRSocket.spawn {
            while true {
                let conn = SystemCall.retrying { accept(fd, nil, nil) }
                if conn < 0 { return }
                _ = fcntl(conn, F_SETFD, FD_CLOEXEC)
                _ = try? RRSocket.spawnDetached { RRServer.echo(conn) }
            }
        }
    }

    private static func echo(_ fd: Int32) {
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = SystemCall.retrying { buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }
            if n <= 0 { return }
            guard RRSocket.sendAll(fd, buffer, count: n) else { return }
        }
    }

    /// Stops accepting (open connections end when their client closes).
    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
        pthread_join(thread, nil)
        close(listener)
    }
}

/// What one RR run measured.
struct RRResult: Sendable {
    var latenciesMicroseconds: [Double]
    var seconds: Double
    var transactionsPerSecond: Double { seconds > 0 ? Double(latenciesMicroseconds.count) / seconds : 0 }
    var p50: Double { BenchMath.percentile(latenciesMicroseconds, 50) }
    var p99: Double { BenchMath.percentile(latenciesMicroseconds, 99) }
}

enum RRClient {
    /// `transactions` request/response exchanges of `size` bytes over one connection, after `warmup`
    /// untimed ones (the first packets pay for ARP/neighbour resolution and slow start).
    static func run<A: IPAddressType>(namespace: String, server: A, port: UInt16, transactions: Int, size: Int = 64,
                                      warmup: Int = 200, timeoutSeconds: Int = 5) throws -> RRResult {
        let sa = RRSocketAddress(server, port: port)
        return try NetnsThread.run(namespace: namespace) { () throws -> RRResult in
            let fd = socket(sa.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RRError("socket") }
            defer { close(fd) }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
            var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var connected = false
            for _ in 0..<50 {
                let rc = sa.with { connect(fd, $0, $1) }
                if rc == 0 { connected = true; break }
                if errno != ECONNREFUSED { throw RRError("connect \(server):\(port)") }
                usleep(100_000)
            }
            guard connected else { throw RRError("connect \(server):\(port)", errno: ECONNREFUSED) }
            let request = [UInt8](repeating: 0x5a, count: size)
            var reply = [UInt8](repeating: 0, count: size)
            func exchange() throws {
                guard RRSocket.sendAll(fd, request, count: size) else { throw RRError("send") }
                var got = 0
                while got < size {
                    let n = SystemCall.retrying { reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, size - got, 0) } }
                    guard n > 0 else { throw RRError(n == 0 ? "recv: server closed" : "recv (timeout \(timeoutSeconds) s?)") }
                    got += n
                }
            }
            for _ in 0..<warmup { try exchange() }
            var samples = [Double]()
            samples.reserveCapacity(transactions)
            let start = RRSocket.now()
            for _ in 0..<transactions {
                let t0 = RRSocket.now()
                try exchange()
                samples.append(Double(RRSocket.now() - t0) / 1000)
            }
            return RRResult(latenciesMicroseconds: samples, seconds: Double(RRSocket.now() - start) / 1e9)
        }
    }
}

enum RRSocket {
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }


    static func sendAll(_ fd: Int32, _ bytes: [UInt8], count: Int) -> Bool {
        var sent = 0
        while sent < count {
            let n = SystemCall.retrying { bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, count - sent, Int32(MSG_NOSIGNAL)) } }
            guard n > 0 else { return false }
            sent += n
        }
        return true
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// A joinable pthread running `body`.
    static func spawn(_ body: @escaping () -> Void) throws -> pthread_t {
        let box = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box)
        guard rc == 0 else { Unmanaged<Body>.fromOpaque(box).release(); throw RRError("pthread_create", errno: rc) }
        return thread
    }

    static func spawnDetached(_ body: @escaping () -> Void) throws {
        let t = try spawn(body)
        pthread_detach(t)
    }
}
