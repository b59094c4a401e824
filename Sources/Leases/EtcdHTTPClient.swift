// A small HTTP/1.1 client over SwiftNIO for etcd: one request per connection (lease traffic is a
// few requests an hour, and a fresh connection never carries a half-dead state), plus long-lived
// streaming responses for watches.
//
// Why not AsyncHTTPClient: it adds ~6 minutes of clean build and ~50 MB to the binary for features
// etcd does not need (docs/PITFALLS.md, "Talking to etcd from Swift"). Why not gRPC for v3: see
// EtcdV3Registry.swift.
//
// Robustness: connect timeout; a read-idle timeout per connection (request timeout for
// request/response, a longer one for watches, which v3 keeps alive with progress notifications);
// TCP keepalive so a dead peer is noticed even when idle; several endpoints tried in turn, the one
// that answered last tried first next time. TLS through NIOSSL with the --etcd-cafile/certfile/keyfile
// files; TLS failures are reported with what to check.

import Glibc
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import RuntimeSupport
import Synchronization

/// One etcd client URL.
public struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var tls: Bool
    public var host: String
    public var port: Int

    /// Parses "http://host:port" / "https://host:port" (port defaults to 2379; a trailing path is ignored).
    public init(url: String) throws(EtcdClientError) {
        var rest = Substring(url)
        if rest.hasPrefix("http://") {
            tls = false
            rest = rest.dropFirst(7)
        } else if rest.hasPrefix("https://") {
            tls = true
            rest = rest.dropFirst(8)
        } else {
            throw .badEndpoint(url, "must start with http:// or https://")
        }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard !rest.isEmpty else { throw .badEndpoint(url, "no host") }
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw .badEndpoint(url, "unterminated [IPv6] host") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.isEmpty {
                port = 2379
            } else {
                guard after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) else {
                    throw .badEndpoint(url, "bad port")
                }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw .badEndpoint(url, "bad port")
            }
            port = p
        } else {
            host = String(rest)
            port = 2379
        }
        guard !host.isEmpty else { throw .badEndpoint(url, "no host") }
    }

    public var description: String {
        (tls ? "https://" : "http://") + (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
    }

    var isIPLiteral: Bool {
        host.contains(":") || IPv4AddressCheck.isDottedQuad(host)
    }
}

extension EtcdEndpoint {
    /// The host is this machine: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or `localhost`.
    public var isLoopback: Bool {
        let name = host.lowercased()
        if name == "localhost" || name == "localhost." { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, name, &v4) == 1 {
            return UInt32(bigEndian: v4.s_addr) >> 24 == 127
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, name, &v6) == 1 else { return false }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) && bytes[15] == 1 { return true }
        let mapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff
        return mapped && bytes[12] == 127
    }

    /// The endpoints among `urls` that speak plain http to another machine: leases and the network
    /// config cross the network in clear text there, and anyone on the path can rewrite them
    /// (docs/SECURITY.md). Unparseable entries are left to the client, which names them.
    public static func plainTextRemote(_ urls: [String]) -> [EtcdEndpoint] {
        urls.flatMap { $0.split(separator: ",") }.compactMap { try? EtcdEndpoint(url: String($0).trimmingSpaces) }
            .filter { !$0.tls && !$0.isLoopback }
    }

    /// The start-up warning for `plainTextRemote` endpoints, nil when there are none.
    public static func plainTextWarning(_ urls: [String]) -> String? {
        let remote = plainTextRemote(urls)
        guard !remote.isEmpty else { return nil }
        return "etcd at \(remote.map(\.description).joined(separator: ", ")) is reached over plain http from another host: "
            + "the leases and the network config travel in clear text and anyone on the path can read or rewrite them, "
            + "which redirects pod traffic. Use https:// endpoints with --etcd-cafile, --etcd-certfile and --etcd-keyfile "
            + "(docs/SECURITY.md)"
    }
}

private enum IPv4AddressCheck {
    static func isDottedQuad(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
    }
}

/// Transport failures, each saying which endpoint and what to check.
public enum EtcdClientError: Error, Sendable, CustomStringConvertible {
    case badEndpoint(String, String)
    case tlsSetup(file: String, detail: String)
    case connect(endpoint: String, detail: String)
    case tls(endpoint: String, detail: String, hint: String)
    case timeout(endpoint: String, after: Duration)
    case closed(endpoint: String)
    case responseTooLarge(endpoint: String, limit: Int)
    case allEndpointsFailed([EtcdClientError])
    case authentication(String)
    /// etcd said the user name or password is wrong: a configuration error, not an outage.
    case credentialsRejected(user: String, detail: String)

    public var description: String {
        switch self {
        case .badEndpoint(let url, let why): "etcd endpoint \"\(url)\": \(why) (--etcd-endpoints)"
        case .tlsSetup(let file, let detail): "cannot load TLS file \(file): \(detail) (--etcd-cafile/--etcd-certfile/--etcd-keyfile)"
        case .connect(let ep, let detail): "cannot connect to etcd at \(ep): \(detail)"
        case .tls(let ep, let detail, let hint): "TLS with etcd at \(ep) failed: \(detail); \(hint)"
        case .timeout(let ep, let after): "etcd at \(ep) did not answer within \(after)"
        case .closed(let ep): "etcd at \(ep) closed the connection before the response ended"
        case .responseTooLarge(let ep, let limit): "response from etcd at \(ep) is larger than \(limit) bytes"
        case .allEndpointsFailed(let errors):
            "no etcd endpoint answered: " + errors.map(\.description).joined(separator: "; ")
        case .authentication(let detail): "etcd authentication failed: \(detail) (--etcd-username/--etcd-password)"
        case .credentialsRejected(let user, let detail):
            "etcd rejected the credentials of user \"\(user)\" (\(detail)): check --etcd-username and --etcd-password "
                + "(FLANNELD_ETCD_USERNAME/FLANNELD_ETCD_PASSWORD) and that the user exists in etcd"
        }
    }

    /// Errors after which another endpoint may do better.
    var isTransport: Bool {
        switch self {
        case .connect, .tls, .timeout, .closed: true
        default: false
        }
    }
}

/// Connection settings shared by both registries.
public struct EtcdClientOptions: Sendable {
    /// flannel's default.
    public static let defaultEndpoints = ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]

    public var endpoints: [String] = EtcdClientOptions.defaultEndpoints
    public var prefix = "/coreos.com/network"
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    public var username: String?
    public var password: String?
    public var apiVersion: EtcdAPIVersion = .auto
    public var connectTimeout: Duration = .seconds(5)
    public var requestTimeout: Duration = .seconds(10)
    /// A watch connection with no bytes for this long is reopened (from the last revision it
    /// covered). A backstop only: TCP keepalive notices a dead server within about a minute, and
    /// v3 watches hear a progress notification every 10 minutes (etcd's default interval), so this
    /// is set just above that.
    public var watchIdleTimeout: Duration = .seconds(11 * 60)
    /// Keys per page of a v3 listing. A flannel lease is ~400 bytes on the gateway: 1000 make a
    /// page of ~400 KB that etcd answers from one consistent revision, and 50 000 leases 50 pages.
    public var listPageSize = 1000
    /// TCP keepalive: first probe after this idle time, then every `keepAliveInterval`, 3 probes.
    public var keepAliveIdle: Duration = .seconds(30)
    public var keepAliveInterval: Duration = .seconds(10)

    public init(endpoints: [String] = EtcdClientOptions.defaultEndpoints, prefix: String = "/coreos.com/network",
                apiVersion: EtcdAPIVersion = .auto) {
        self.endpoints = endpoints
        self.prefix = prefix
        self.apiVersion = apiVersion
    }
}

struct HTTPResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: [UInt8]
    var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// An open streaming response: status and headers, then body chunks until the server ends it.
struct HTTPStreamingResponse: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var endpoint: EtcdEndpoint
    var chunks: AsyncThrowingStream<ByteBuffer, any Error>
    var close: @Sendable () -> Void

    /// The body as JSON read piece by piece as it arrives: memory holds the token or value being
    /// read, never the body. At most `EtcdHTTPClient.maxResponseBytes` are read in all.
    func json(maxValueBytes: Int = EtcdHTTPClient.maxValueBytes) -> JSONStreamReader {
        let pieces = ChunkIterator(chunks.makeAsyncIterator())
        let endpoint = endpoint.description
        return JSONStreamReader(maxValueBytes: maxValueBytes) {
            guard var chunk = try await pieces.iterator.next() else { return nil }
            pieces.total += chunk.readableBytes
            guard pieces.total <= EtcdHTTPClient.maxResponseBytes else {
                throw EtcdClientError.responseTooLarge(endpoint: endpoint, limit: EtcdHTTPClient.maxResponseBytes)
            }
            return chunk.readBytes(length: chunk.readableBytes) ?? []
        }
    }

    /// An error answer's body, at most `limit` bytes: what the message needs. Reading stops there,
    /// so a server (or anything in its place) that streams without end costs nothing more.
    func errorBody(limit: Int = 64 * 1024) async throws -> [UInt8] {
        var body: [UInt8] = []
        for try await var chunk in chunks {
            body += chunk.readBytes(length: min(chunk.readableBytes, limit - body.count)) ?? []
            if body.count >= limit { break }
        }
        return body
    }
}

final class EtcdHTTPClient: Sendable {
    let endpoints: [EtcdEndpoint]
    let options: EtcdClientOptions
    let sslContext: NIOSSLContext?
    let group: any EventLoopGroup
    let counters: LeaseCounters
    private let preferred = Mutex(0)
    /// Caps a single response: what a request/response call holds, what a listing may stream.
    static let maxResponseBytes = 64 << 20
    /// Caps one token or value read from a streamed listing: etcd refuses requests above 1.5 MiB
    /// unless --max-request-bytes is raised, so no lease value it holds comes near.
    static let maxValueBytes = 4 << 20

    init(options: EtcdClientOptions, group: any EventLoopGroup, counters: LeaseCounters) throws(EtcdClientError) {
        var eps: [EtcdEndpoint] = []
        for url in options.endpoints.flatMap({ $0.split(separator: ",") }) {
            let trimmed = String(url).trimmingSpaces
            if !trimmed.isEmpty { eps.append(try EtcdEndpoint(url: trimmed)) }
        }
        guard !eps.isEmpty else { throw .badEndpoint("", "no endpoints given") }
        endpoints = eps
        self.options = options
        self.group = group
        self.counters = counters
        sslContext = eps.contains(where: \.tls) ? try EtcdHTTPClient.makeSSLContext(options) : nil
    }

    static func makeSSLContext(_ options: EtcdClientOptions) throws(EtcdClientError) -> NIOSSLContext {
        var config = TLSConfiguration.makeClientConfiguration()
        config.minimumTLSVersion = .tlsv12
        if let ca = options.caFile {
            do {
                config.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
            } catch { throw .tlsSetup(file: ca, detail: "\(error)") }
        }
        switch (options.certFile, options.keyFile) {
        case (let cert?, let key?):
            do {
                config.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
            } catch { throw .tlsSetup(file: cert, detail: "\(error)") }
            do {
                config.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            } catch { throw .tlsSetup(file: key, detail: "\(error)") }
        case (nil, nil):
            break
        case (let cert?, nil):
            throw .tlsSetup(file: cert, detail: "--etcd-certfile needs --etcd-keyfile")
        case (nil, let key?):
            throw .tlsSetup(file: key, detail: "--etcd-keyfile needs --etcd-certfile")
        }
        do { return try NIOSSLContext(configuration: config) } catch {
            throw .tlsSetup(file: options.certFile ?? options.caFile ?? "", detail: "\(error)")
        }
    }

    // MARK: request/response

    /// Sends one request, trying each endpoint in turn on transport errors.
    func request(_ method: HTTPMethod, _ uri: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                 contentType: String = "application/json") async throws -> HTTPResponse {
        var errors: [EtcdClientError] = []
        let start = preferred.withLock { $0 }
        for i in 0..<endpoints.count {
            let index = (start + i) % endpoints.count
            let endpoint = endpoints[index]
            do {
                let response = try await requestOnce(endpoint, method, uri, body: body, headers: headers, contentType: contentType)
                if index != start { preferred.withLock { $0 = index } }
                return response
            } catch let error as EtcdClientError where error.isTransport {
                errors.append(error)
                if i + 1 < endpoints.count { counters.update { $0.endpointFailovers += 1 } }
            }
        }
        if errors.count == 1 { throw errors[0] }
        throw EtcdClientError.allEndpointsFailed(errors)
    }

    private func requestOnce(_ endpoint: EtcdEndpoint, _ method: HTTPMethod, _ uri: String, body: [UInt8]?,
                             headers: [(String, String)], contentType: String) async throws -> HTTPResponse {
        let stream = try await open(endpoint, method, uri, body: body, headers: headers, contentType: contentType,
                                    idleTimeout: options.requestTimeout)
        defer { stream.close() }
        var collected: [UInt8] = []
        do {
            for try await var chunk in stream.chunks {
                guard collected.count + chunk.readableBytes <= EtcdHTTPClient.maxResponseBytes else {
                    throw EtcdClientError.responseTooLarge(endpoint: endpoint.description, limit: EtcdHTTPClient.maxResponseBytes)
                }
                collected += chunk.readBytes(length: chunk.readableBytes) ?? []
            }
        } catch {
            throw mapErrorStatic(error, Self.label(endpoint, method, uri), options.requestTimeout)
        }
        return HTTPResponse(status: stream.status, headers: stream.headers, body: collected)
    }

    // MARK: streaming

    /// Opens a streaming request on the first endpoint that answers. `idleTimeout` nil: the watch
    /// idle timeout (a watch); a listing read as it streams passes the request timeout.
    func openStream(_ method: HTTPMethod, _ uri: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                    idleTimeout: Duration? = nil) async throws -> HTTPStreamingResponse {
        var errors: [EtcdClientError] = []
        let start = preferred.withLock { $0 }
        for i in 0..<endpoints.count {
            let index = (start + i) % endpoints.count
            do {
                let s = try await open(endpoints[index], method, uri, body: body, headers: headers,
                                       contentType: "application/json", idleTimeout: idleTimeout ?? options.watchIdleTimeout)
                if index != start { preferred.withLock { $0 = index } }
                return s
            } catch let error as EtcdClientError where error.isTransport {
                errors.append(error)
                if i + 1 < endpoints.count { counters.update { $0.endpointFailovers += 1 } }
            }
        }
        if errors.count == 1 { throw errors[0] }
        throw EtcdClientError.allEndpointsFailed(errors)
    }

    /// Connects, sends the request and waits for the response head.
    private func open(_ endpoint: EtcdEndpoint, _ method: HTTPMethod, _ uri: String, body: [UInt8]?,
                      headers: [(String, String)], contentType: String, idleTimeout: Duration) async throws -> HTTPStreamingResponse {
        let (parts, continuation) = AsyncThrowingStream<HTTPClientResponsePart, any Error>.makeStream()
        let ssl = endpoint.tls ? sslContext : nil
        let sniHost: String? = endpoint.isIPLiteral ? nil : endpoint.host
        let idle = idleTimeout.timeAmount
        let keepIdle = Int(options.keepAliveIdle.components.seconds)
        let keepInterval = Int(options.keepAliveInterval.components.seconds)

        let pacer = ReadPacer()
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(options.connectTimeout.timeAmount)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.Types.SocketOption(level: .init(rawValue: Int32(IPPROTO_TCP)), name: .init(rawValue: TCP_KEEPIDLE)), value: keepIdle)
            .channelOption(ChannelOptions.Types.SocketOption(level: .init(rawValue: Int32(IPPROTO_TCP)), name: .init(rawValue: TCP_KEEPINTVL)), value: keepInterval)
            .channelOption(ChannelOptions.Types.SocketOption(level: .init(rawValue: Int32(IPPROTO_TCP)), name: .init(rawValue: TCP_KEEPCNT)), value: 3)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let ssl {
                        try sync.addHandler(NIOSSLClientHandler(context: ssl, serverHostname: sniHost))
                    }
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(IdleStateHandler(readTimeout: idle))
                    pacer.eventLoop = channel.eventLoop
                    try sync.addHandler(ResponseForwarder(continuation: continuation, pacer: pacer))
                }
            }
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: uri)
        head.headers.add(name: "Host", value: endpoint.isIPLiteral && endpoint.host.contains(":")
            ? "[\(endpoint.host)]:\(endpoint.port)" : "\(endpoint.host):\(endpoint.port)")
        head.headers.add(name: "Connection", value: "close")
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        if let body {
            head.headers.add(name: "Content-Type", value: contentType)
            head.headers.add(name: "Content-Length", value: String(body.count))
        }
        // The request goes out on the event loop the moment the connection is up, not after this
        // task gets a thread again: the read timeout starts at connect, and it must measure etcd's
        // answer, not how long a busy process took to schedule us (a loaded node, or a test
        // process full of blocking tests, delayed the send by seconds and "etcd did not answer").
        let requestHead = head
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: endpoint.host, port: endpoint.port).map { channel in
                channel.write(HTTPClientRequestPart.head(requestHead), promise: nil)
                if let body { channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
                return channel
            }.get()
        } catch {
            continuation.finish()
            throw EtcdClientError.connect(endpoint: endpoint.description, detail: "\(error)")
        }
        continuation.onTermination = { _ in channel.close(promise: nil) }
        let close: @Sendable () -> Void = { channel.close(promise: nil) }

        // Wait for the head; the rest is handed to the caller as body chunks.
        let iterator = IteratorBox(parts.makeAsyncIterator())
        let responseHead: HTTPResponseHead
        do {
            guard let first = try await iterator.it.next() else { throw EtcdClientError.closed(endpoint: endpoint.description) }
            guard case .head(let h) = first else {
                throw EtcdClientError.closed(endpoint: endpoint.description)
            }
            responseHead = h
        } catch {
            close()
            throw mapErrorStatic(error, Self.label(endpoint, method, uri), idleTimeout)
        }
        let endpointName = Self.label(endpoint, method, uri)
        let chunks = AsyncThrowingStream<ByteBuffer, any Error> {
            do {
                while let part = try await iterator.it.next() {
                    switch part {
                    case .head: continue
                    case .body(let buffer):
                        pacer.consumed(buffer.readableBytes)
                        return buffer
                    case .end: return nil
                    }
                }
                throw EtcdClientError.closed(endpoint: endpointName)
            } catch let e as EtcdClientError {
                throw e
            } catch {
                throw mapErrorStatic(error, endpointName, idleTimeout)
            }
        }
        return HTTPStreamingResponse(status: Int(responseHead.status.code), headers: responseHead.headers,
                                     endpoint: endpoint, chunks: chunks, close: close)
    }

    /// "http://10.0.0.1:2379 (PUT /v2/keys/coreos.com/network/subnets/10.5.1.0-24)" for error messages.
    static func label(_ endpoint: EtcdEndpoint, _ method: HTTPMethod, _ uri: String) -> String {
        "\(endpoint) (\(method.rawValue) \(uri.split(separator: "?", maxSplits: 1).first ?? ""))"
    }
}

/// Turns NIO/NIOSSL errors into `EtcdClientError`s that say what to check.
func mapErrorStatic(_ error: any Error, _ endpoint: String, _ timeout: Duration) -> any Error {
    if let e = error as? EtcdClientError { return e }
    if error is IdleTimeout { return EtcdClientError.timeout(endpoint: endpoint, after: timeout) }
    if error is CancellationError { return error }
    let text = "\(error)"
    if error is NIOSSLError || error is BoringSSLError || text.contains("SSL") || text.contains("sslError") {
        let hint: String
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
            hint = "the server's certificate is not signed by the CA in --etcd-cafile (or its name/IP does not match the endpoint)"
        } else if text.contains("CERTIFICATE_REQUIRED") || text.contains("BAD_CERTIFICATE") || text.contains("HANDSHAKE_FAILURE") {
            hint = "the server requires a client certificate it trusts: set --etcd-certfile and --etcd-keyfile"
        } else if text.contains("WRONG_VERSION_NUMBER") {
            hint = "the endpoint does not speak TLS: use http:// for it"
        } else {
            hint = "check --etcd-cafile, --etcd-certfile and --etcd-keyfile"
        }
        return EtcdClientError.tls(endpoint: endpoint, detail: text, hint: hint)
    }
    if error is ChannelError || error is IOError {
        return EtcdClientError.closed(endpoint: endpoint)
    }
    return EtcdClientError.connect(endpoint: endpoint, detail: text)
}

struct IdleTimeout: Error {}

/// The response iterator, moved from `open` into the chunk stream's closure. Only ever used by one
/// task at a time (the one consuming the stream), which is what AsyncThrowingStream requires anyway.
private final class IteratorBox: @unchecked Sendable {
    var it: AsyncThrowingStream<HTTPClientResponsePart, any Error>.AsyncIterator
    init(_ it: AsyncThrowingStream<HTTPClientResponsePart, any Error>.AsyncIterator) { self.it = it }
}

/// A body chunk iterator with its running total, moved into `json()`'s closure (one task reads it).
private final class ChunkIterator: @unchecked Sendable {
    var iterator: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator
    var total = 0
    init(_ iterator: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator) { self.iterator = iterator }
}

/// Backpressure for a response: the socket is read only while the body bytes received and not yet
/// taken by the consumer stay under `highWater`. Without it a listing arrives faster than it is
/// parsed and piles up whole in the stream's buffer. State lives on the channel's event loop.
final class ReadPacer: @unchecked Sendable {
    static let highWater = 256 << 10
    static let lowWater = 64 << 10
    var eventLoop: (any EventLoop)?
    var context: ChannelHandlerContext?
    /// Body bytes handed to the stream and not yet taken.
    var pending = 0
    /// A read was held back.
    var paused = false

    /// The consumer took `bytes` (any thread).
    func consumed(_ bytes: Int) {
        eventLoop?.execute { [self] in
            pending -= bytes
            if paused, pending < Self.lowWater {
                paused = false
                context?.read()
            }
        }
    }
}

/// Forwards response parts to an AsyncThrowingStream; ends it on error, idle timeout or close.
/// Holds back reads while the consumer is behind (ReadPacer).
private final class ResponseForwarder: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    let continuation: AsyncThrowingStream<HTTPClientResponsePart, any Error>.Continuation
    let pacer: ReadPacer
    var finished = false

    init(continuation: AsyncThrowingStream<HTTPClientResponsePart, any Error>.Continuation, pacer: ReadPacer) {
        self.continuation = continuation
        self.pacer = pacer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        pacer.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        pacer.context = nil
    }

    func read(context: ChannelHandlerContext) {
        if pacer.pending >= ReadPacer.highWater {
            pacer.paused = true
        } else {
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard !finished else { return }
        if case .body(let buffer) = part { pacer.pending += buffer.readableBytes }
        continuation.yield(part)
        if case .end = part {
            finished = true
            continuation.finish()
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(throwing: error)
        context.close(promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            finish(throwing: IdleTimeout())
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(throwing: ChannelError.eof)
        context.fireChannelInactive()
    }

    private func finish(throwing error: any Error) {
        guard !finished else { return }
        finished = true
        continuation.finish(throwing: error)
    }
}

extension String {
    var trimmingSpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }

    /// Percent-encodes for a URL path or query value (RFC 3986 unreserved characters and '/').
    func percentEncoded(keepSlash: Bool) -> String {
        var out = ""
        for b in utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out += "/"
            default:
                let hex = String(b, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}

extension Duration {
    var timeAmount: TimeAmount {
        .nanoseconds(components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000)
    }
}
