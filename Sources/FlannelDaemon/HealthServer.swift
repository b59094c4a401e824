// A very small HTTP/1.1 server on SwiftNIO for the probes: /healthz (200 while the process serves),
// /readyz (200 only when `Readiness` says so, else 503 with the reason), and /metrics once a
// provider is set. One response per connection (`Connection: close`): probes and scrapers open a
// connection per request anyway, and it keeps the handler free of keep-alive state.

import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

public struct HTTPEndpointResponse: Sendable {
    public var status: HTTPResponseStatus
    public var contentType: String
    public var body: String

    public init(status: HTTPResponseStatus, contentType: String = "text/plain; charset=utf-8", body: String) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }
}

public final class HealthServer: Service, Sendable {
    public let host: String
    public let requestedPort: Int
    private let readiness: Readiness
    private let metrics: (@Sendable () -> String)?
    private let logger: Logger
    private let channel = Mutex<(any Channel)?>(nil)
    /// Connections being served. Probes and scrapers hold one for a few milliseconds; a client that
    /// opens many and never sends must not take every fd or every event-loop slot of the daemon.
    private let openConnections = Atomic<Int>(0)
    /// At most this many at once; more are closed as soon as they are accepted.
    public static let maxConnections = 32
    /// A connection is closed this long after it was accepted, answered or not (a client that
    /// sends a byte now and then never trips a read timeout alone).
    public static let connectionDeadline: TimeAmount = .seconds(10)

    public init(host: String, port: Int, readiness: Readiness, metrics: (@Sendable () -> String)? = nil, logger: Logger) {
        self.host = host
        self.requestedPort = port
        self.readiness = readiness
        self.metrics = metrics
        self.logger = logger
    }

    /// The answer for one request path; pure, so it is also what tests check.
    public func respond(method: HTTPMethod, path: String) -> HTTPEndpointResponse {
        guard method == .GET || method == .HEAD else {
            return HTTPEndpointResponse(status: .methodNotAllowed, body: "use GET\n")
        }
        let route = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        switch route {
        case "/healthz":
            return HTTPEndpointResponse(status: .ok, body: "ok\n")
        case "/readyz":
            let warnings = readiness.warningLines.map { "warning: \($0)\n" }.joined()
            if let reason = readiness.notReadyReason {
                return HTTPEndpointResponse(status: .serviceUnavailable, body: "not ready: \(reason)\n" + warnings)
            }
            return HTTPEndpointResponse(status: .ok, body: "ok\n" + warnings)
        case "/metrics":
            guard let metrics else { return HTTPEndpointResponse(status: .notFound, body: "metrics are not enabled\n") }
            return HTTPEndpointResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics())
        default:
            return HTTPEndpointResponse(status: .notFound, body: "not found: try /healthz, /readyz\n")
        }
    }

    /// Binds and starts serving; returns the bound port (useful when `port` is 0).
    @discardableResult
    public func start() async throws -> Int {
        let server = self
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard server.openConnections.wrappingAdd(1, ordering: .relaxed).newValue <= HealthServer.maxConnections else {
                    server.openConnections.wrappingSubtract(1, ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in server.openConnections.wrappingSubtract(1, ordering: .relaxed) }
                let deadline = channel.eventLoop.scheduleTask(in: HealthServer.connectionDeadline) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in deadline.cancel() }
                return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(ProbeHandler(server: server))
                }
            }
        let bound = try await bootstrap.bind(host: host, port: requestedPort).get()
        channel.withLock { $0 = bound }
        let port = bound.localAddress?.port ?? requestedPort
        logger.info("health server listening", metadata: ["address": "\(host):\(port)"])
        return port
    }

    public func stop() async {
        let bound = channel.withLock { value -> (any Channel)? in
            defer { value = nil }
            return value
        }
        try? await bound?.close()
    }

    /// Service: serve until graceful shutdown, then close the listening socket.
    public func run() async throws {
        try await start()
        try? await gracefulShutdown()
        await stop()
    }
}

private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: HealthServer
    private var request: HTTPRequestHead?

    init(server: HealthServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            let response = server.respond(method: head.method, path: head.uri)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: String(response.body.utf8.count))
            headers.add(name: "Connection", value: "close")
            let responseHead = HTTPResponseHead(version: head.version, status: response.status, headers: headers)
            context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
            if head.method != .HEAD {
                var buffer = context.channel.allocator.buffer(capacity: response.body.utf8.count)
                buffer.writeString(response.body)
                context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }
}
