import FlannelDaemon
import Glibc
import Logging
import NIOHTTP1
import Testing

/// A datagram socket standing in for systemd's notify socket: real AF_UNIX, bound by the test.
final class NotifyListener {
    let fd: Int32
    let name: String

    /// `name` starting with '@' binds in the abstract namespace, like systemd's own.
    init(name: String) throws {
        self.name = name
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ToolFailure(command: "socket", status: errno, output: "") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + bytes.count + (abstract ? 0 : 1))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw ToolFailure(command: "bind \(name)", status: e, output: "")
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func receive() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    deinit {
        close(fd)
        if !name.hasPrefix("@") { unlink(name) }
    }
}

extension DaemonSuite {
@Suite("sd_notify over a real datagram socket")
struct SystemdNotifyTests {
    @Test("READY=1 with STATUS reaches an abstract-namespace socket")
    func abstractSocket() throws {
        let listener = try NotifyListener(name: "@\(uniqueTag("n"))")
        let notifier = SystemdNotifier(socketPath: listener.name)
        #expect(notifier.isEnabled)
        try notifier.ready(status: "subnet 10.5.72.0/24, data path xdp")
        #expect(listener.receive() == "READY=1\nSTATUS=subnet 10.5.72.0/24, data path xdp")
        try notifier.status("reconciling")
        #expect(listener.receive() == "STATUS=reconciling")
    }

    @Test("a filesystem socket path works too")
    func pathSocket() throws {
        let listener = try NotifyListener(name: "/tmp/\(uniqueTag("n")).sock")
        try SystemdNotifier(socketPath: listener.name).ready(status: "up")
        #expect(listener.receive() == "READY=1\nSTATUS=up")
    }

    @Test("without NOTIFY_SOCKET notifying does nothing; a dead socket is an error that names it")
    func disabledAndDead() throws {
        let off = SystemdNotifier(socketPath: nil)
        #expect(!off.isEnabled)
        try off.ready(status: "x")
        #expect(!SystemdNotifier(socketPath: "").isEnabled)
        let dead = "/tmp/\(uniqueTag("n"))-absent.sock"
        do {
            try SystemdNotifier(socketPath: dead).ready(status: "x")
            Issue.record("sending to a missing socket must fail")
        } catch {
            #expect(error.description.contains(dead))
            #expect(error.errno == ENOENT)
        }
    }
}
}

/// One HTTP/1.1 request over a plain TCP socket to 127.0.0.1: status code and body.
func httpGet(port: Int, path: String, method: String = "GET") throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw ToolFailure(command: "socket", status: errno, output: "") }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw ToolFailure(command: "connect 127.0.0.1:\(port)", status: errno, output: "") }
    let request = Array("\(method) \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        data.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: data, as: UTF8.self)
    let statusLine = text.split(separator: "\r\n").first ?? ""
    let code = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? -1
    let separator = Array("\r\n\r\n".utf8)
    let body = (0..<max(0, data.count - 3)).first { Array(data[$0..<$0 + 4]) == separator }
        .map { String(decoding: data[($0 + 4)...], as: UTF8.self) } ?? ""
    return (code, body)
}

extension DaemonSuite {
@Suite("/healthz and /readyz over loopback")
struct HealthServerTests {
    @Test("/healthz is 200 at once; /readyz is 503 with reasons until every condition holds")
    func transitions() async throws {
        let readiness = Readiness()
        let server = HealthServer(host: "127.0.0.1", port: 0, readiness: readiness, logger: Logger(label: "test"))
        let port = try await server.start()
        do {
            #expect(port > 0)
            let health = try httpGet(port: port, path: "/healthz")
            #expect(health.status == 200)
            #expect(health.body == "ok\n")

            var ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 503)
            #expect(ready.body.contains("data path attached: not yet"))
            #expect(ready.body.contains("subnet.env written: not yet"))

            readiness.set(.dataplaneAttached, ok: true)
            readiness.set(.tablesFilled, ok: true)
            ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 503)
            #expect(!ready.body.contains("data path"))
            #expect(ready.body.contains("subnet.env written"))

            readiness.set(.subnetFileWritten, ok: true)
            readiness.set(.leaseConfirmed, ok: false, detail: "degraded: started from the last known state")
            ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 503)
            #expect(ready.body == "not ready: lease confirmed by etcd: degraded: started from the last known state\n")

            readiness.set(.leaseConfirmed, ok: true)
            ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 200)
            #expect(ready.body == "ok\n")

            readiness.set(.reconcileHealthy, ok: false, detail: "bpf-maps: upsert failed")
            ready = try httpGet(port: port, path: "/readyz")
            #expect(ready.status == 503)
            #expect(ready.body.contains("bpf-maps: upsert failed"))

            #expect(try httpGet(port: port, path: "/nope").status == 404)
            #expect(try httpGet(port: port, path: "/metrics").status == 404)
            #expect(try httpGet(port: port, path: "/healthz", method: "POST").status == 405)
            let head = try httpGet(port: port, path: "/healthz", method: "HEAD")
            #expect(head.status == 200 && head.body.isEmpty)
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()
        // Closed: nobody answers any more (refused, or at most a connection without a response).
        #expect(((try? httpGet(port: port, path: "/healthz"))?.status ?? -1) == -1)
    }

    @Test("/metrics serves the provider's text when one is set")
    func metrics() async throws {
        let server = HealthServer(host: "127.0.0.1", port: 0, readiness: Readiness(), metrics: { "fxdp_peers 3\n" }, logger: Logger(label: "test"))
        let port = try await server.start()
        let result = Result { try httpGet(port: port, path: "/metrics") }
        await server.stop()
        let response = try result.get()
        #expect(response.status == 200)
        #expect(response.body == "fxdp_peers 3\n")
    }
}
}
