// etcd v3 through its JSON gateway (`/v3/...` on the client port), the store flannel ≥ 0.18 uses.
//
// Why the gateway and not gRPC (measured, docs/PITFALLS.md): grpc-swift + protobuf costs ~8.5 min
// of clean build and a ~125 MB debug binary (Foundation, ICU, generated code to commit and
// re-strip of gogoproto options), against ~1 min and ~29 MB for the gateway over plain SwiftNIO,
// which the v2 client needs anyway. The gateway carries the same KV/lease/watch/auth RPCs; what gRPC
// would add is HTTP/2 pings to notice a dead server, which TCP keepalive, `progress_notify` and an
// idle timeout on the watch connection replace here. Gateway encoding: int64 as decimal strings,
// bytes as base64, default-valued fields omitted (a PUT event has no "type").
//
// create  grant(TTL) + txn{ version(key) == 0 → put(key, value, lease) }       lost → conflict
// update  grant(TTL) + txn{ mod_revision(key) == expected → range(key), put }  lost → conflict;
//         then the old lease is revoked (flannel's renew is an unconditional put: ours never
//         overwrites a subnet someone else took).
// watch   POST /v3/watch {create_request{start_revision, progress_notify}}, newline-delimited
//         results; compact_revision → historyUnavailable → re-list.
// Auth:   /v3/auth/authenticate → token in the Authorization header, renewed when etcd rejects it.

import NIOHTTP1
import NetTypes
import RuntimeSupport
import Synchronization

public final class EtcdV3Registry: SubnetRegistry {
    public var apiVersion: EtcdAPIVersion { .v3 }
    public let prefix: String
    let client: EtcdHTTPClient
    private let credentials: (user: String, password: String)?
    private let token = Mutex<String?>(nil)

    init(client: EtcdHTTPClient, prefix: String, username: String?, password: String?) {
        self.client = client
        self.prefix = normalizedPrefix(prefix)
        if let username, !username.isEmpty { credentials = (username, password ?? "") } else { credentials = nil }
    }

    // MARK: calls

    /// The token header; "" is remembered when etcd has auth disabled (credentials are then not
    /// needed, as etcd's own client treats it), and a refusal later re-authenticates.
    private func authHeaders(refresh: Bool) async throws -> [(String, String)] {
        guard let credentials else { return [] }
        if !refresh, let t = token.withLock({ $0 }) { return t.isEmpty ? [] : [("Authorization", t)] }
        let body = JSONValue.object([JSONMember("name", .string(credentials.user)), JSONMember("password", .string(credentials.password))])
        let r = try await client.request(.POST, "/v3/auth/authenticate", body: Array(body.serialized.utf8))
        guard r.status == 200, let doc = try? JSONValue.parse(bytes: r.body), let t = doc["token"]?.stringValue else {
            let message = Self.errorMessage(r)
            if message.contains("authentication is not enabled") {
                token.withLock { $0 = "" }
                return []
            }
            if message.contains("invalid user ID or password") {
                throw EtcdClientError.credentialsRejected(user: credentials.user, detail: message)
            }
            throw EtcdClientError.authentication(message)
        }
        token.withLock { $0 = t }
        return [("Authorization", t)]
    }

    static func errorMessage(_ r: HTTPResponse) -> String {
        if let doc = try? JSONValue.parse(bytes: r.body) {
            if let m = doc["message"]?.stringValue ?? doc["error"]?.stringValue { return m }
            if let m = doc["error"]?["message"]?.stringValue { return m }
        }
        return String(r.bodyText.prefix(200))
    }

    private static func isAuthFailure(_ r: HTTPResponse) -> Bool {
        guard r.status != 200 else { return false }
        let m = errorMessage(r)
        return m.contains("invalid auth token") || m.contains("user name is empty") || m.contains("token")
    }

    static func isPermissionDenied(_ message: String) -> Bool {
        message.contains("permission denied")
    }

    /// POSTs a gateway call on `key`; re-authenticates once if the token expired.
    private func call(_ op: String, _ path: String, _ body: JSONValue, key: String) async throws -> JSONValue {
        let bytes = Array(body.serialized.utf8)
        var r = try await client.request(.POST, path, body: bytes, headers: try await authHeaders(refresh: false))
        if credentials != nil, Self.isAuthFailure(r) {
            r = try await client.request(.POST, path, body: bytes, headers: try await authHeaders(refresh: true))
        }
        guard r.status == 200 else { throw failure(op, path, r, key: key) }
        do { return try JSONValue.parse(bytes: r.body) } catch {
            throw RegistryError.malformedResponse(operation: op, detail: "\(error)")
        }
    }

    /// A gateway call whose answer `read` walks as it arrives (a listing page), instead of holding
    /// it whole; re-authenticates once if the token expired.
    private func streamingCall<T>(_ op: String, _ path: String, _ body: JSONValue, key: String,
                                  _ read: (JSONStreamReader) async throws -> T) async throws -> T {
        let bytes = Array(body.serialized.utf8)
        var refresh = false
        while true {
            let s = try await client.openStream(.POST, path, body: bytes, headers: try await authHeaders(refresh: refresh),
                                                idleTimeout: client.options.requestTimeout)
            defer { s.close() }
            guard s.status == 200 else {
                let r = HTTPResponse(status: s.status, headers: s.headers, body: try await s.errorBody())
                if credentials != nil, !refresh, Self.isAuthFailure(r) {
                    refresh = true
                    continue
                }
                throw failure(op, path, r, key: key)
            }
            do { return try await read(s.json()) } catch let error as JSONParseError {
                throw RegistryError.malformedResponse(operation: op, detail: "\(error)")
            }
        }
    }

    /// The error a non-200 gateway answer means.
    private func failure(_ op: String, _ path: String, _ r: HTTPResponse, key: String) -> RegistryError {
        let message = Self.errorMessage(r)
        if Self.isPermissionDenied(message) {
            return .permissionDenied(operation: op, key: key, user: credentials?.user)
        }
        if credentials == nil, message.contains("user name is empty") {
            return .permissionDenied(operation: op, key: key, user: nil)
        }
        // The gateway maps gRPC NotFound to 404 too ("requested lease not found", with a JSON
        // body carrying its gRPC code): only a 404 without one means there is no gateway.
        if r.status == 404, (try? JSONValue.parse(bytes: r.body))?["code"] == nil {
            return .server(operation: op, status: 404, message: "no v3 JSON gateway at \(path) (etcd older than 3.4?)")
        }
        return .server(operation: op, status: r.status, message: message)
    }

    private static func b64(_ s: String) -> JSONValue { .string(Base64.encode(s)) }

    /// The range end covering every key that starts with `key`.
    private static func prefixEnd(_ key: String) -> JSONValue {
        var bytes = Array(key.utf8)
        while let last = bytes.last {
            if last < 0xff {
                bytes[bytes.count - 1] = last + 1
                return .string(Base64.encode(bytes))
            }
            bytes.removeLast()
        }
        return .string(Base64.encode([0]))
    }

    private static func int64(_ v: JSONValue?) -> Int64? {
        guard let v else { return nil }
        if let s = v.stringValue { return Int64(s) }
        return v.int64Value
    }

    private func record(_ kv: JSONValue) -> LeaseRecord? {
        guard let keyB64 = kv["key"]?.stringValue, let keyBytes = Base64.decode(keyB64) else { return nil }
        return record(kv, key: keyBytes)
    }

    private func record(_ kv: JSONValue, key keyBytes: [UInt8]) -> LeaseRecord {
        let key = String(decoding: keyBytes, as: UTF8.self)
        let name = key.hasPrefix(subnetsKey) ? String(key.dropFirst(subnetsKey.count)) : key
        let value = kv["value"]?.stringValue.flatMap(Base64.decode) ?? []
        let lease = Self.int64(kv["lease"]) ?? 0
        return LeaseRecord(name: name, value: value, isReservation: lease == 0, ttl: nil,
                           revision: Self.int64(kv["mod_revision"]) ?? 0, createRevision: Self.int64(kv["create_revision"]))
    }

    private func revision(_ doc: JSONValue, _ op: String) throws -> Int64 {
        guard let rev = Self.int64(doc["header"]?["revision"]) else {
            throw RegistryError.malformedResponse(operation: op, detail: "no header.revision")
        }
        return rev
    }

    // MARK: SubnetRegistry

    public func getConfigText() async throws -> String {
        let doc = try await call("get config", "/v3/kv/range", .object([JSONMember("key", Self.b64(configKey))]), key: configKey)
        guard let kv = doc["kvs"]?.arrayValue?.first else { throw RegistryError.configNotFound(key: configKey, api: "v3") }
        return String(decoding: kv["value"]?.stringValue.flatMap(Base64.decode) ?? [], as: UTF8.self)
    }

    /// The listing in pages (`EtcdClientOptions.listPageSize` keys): the first page fixes the
    /// revision, the others read at that revision (one consistent view, and the watch resumes after
    /// it), each from the successor of the last key seen (key + "\0") to the prefix's range end.
    public func listLeases(_ body: (LeaseRecord) throws -> Void) async throws -> Int64 {
        var revision: Int64?
        var from = Array(subnetsKey.utf8)
        while true {
            var request = [
                JSONMember("key", .string(Base64.encode(from))), JSONMember("range_end", Self.prefixEnd(subnetsKey)),
                JSONMember("limit", .string(String(max(1, client.options.listPageSize)))),
            ]
            if let revision { request.append(JSONMember("revision", .string(String(revision)))) }
            let page: ListPage
            do {
                page = try await streamingCall("list leases", "/v3/kv/range", .object(request), key: subnetsKey) { json in
                    try await readPage(json, body)
                }
            } catch RegistryError.server(_, _, let message) where revision != nil && message.contains("compacted") {
                throw RegistryError.historyUnavailable(requested: revision ?? 0, detail: "compacted while listing: \(message)")
            }
            let listed = revision ?? page.revision
            revision = listed
            guard page.more else { return listed }
            guard let last = page.lastKey else {
                throw RegistryError.malformedResponse(operation: "list leases", detail: "\"more\" without any key")
            }
            let next = last + [0]
            guard from.lexicographicallyPrecedes(next) else {
                throw RegistryError.malformedResponse(operation: "list leases", detail: "a page did not move past its first key")
            }
            from = next
        }
    }

    private struct ListPage {
        var revision: Int64
        var more = false
        var lastKey: [UInt8]?
    }

    /// One range answer, `{"header":{…,"revision":"N"},"kvs":[…],"more":true,"count":"N"}`, read as
    /// it arrives: each key handed to `body` when its object has been read.
    private func readPage(_ json: JSONStreamReader, _ body: (LeaseRecord) throws -> Void) async throws -> ListPage {
        var revision: Int64?
        var page = ListPage(revision: 0)
        try await json.enterObject()
        while let name = try await json.nextName() {
            switch name {
            case "header":
                revision = Self.int64(try await json.value()["revision"])
            case "kvs":
                try await json.enterArray()
                while try await json.hasElement() {
                    let kv = try await json.value()
                    guard let keyText = kv["key"]?.stringValue, let key = Base64.decode(keyText) else {
                        throw RegistryError.malformedResponse(operation: "list leases", detail: "a key-value without a base64 key")
                    }
                    page.lastKey = key
                    try body(record(kv, key: key))
                }
            case "more":
                page.more = try await json.value().boolValue ?? false
            default:
                try await json.skipValue()
            }
        }
        try await json.end()
        guard let revision else { throw RegistryError.malformedResponse(operation: "list leases", detail: "no header.revision") }
        page.revision = revision
        return page
    }

    private func grant(_ ttl: Duration) async throws -> Int64 {
        let doc = try await call("grant lease", "/v3/lease/grant", .object([JSONMember("TTL", .string(String(max(1, ttl.components.seconds))))]),
                                 key: "(lease grant)")
        guard let id = Self.int64(doc["ID"]), id != 0 else {
            throw RegistryError.malformedResponse(operation: "grant lease", detail: "no lease ID (\(Self.int64(doc["error"]) ?? 0))")
        }
        return id
    }

    private func revoke(_ id: Int64) async {
        _ = try? await call("revoke lease", "/v3/lease/revoke", .object([JSONMember("ID", .string(String(id)))]), key: "(lease revoke)")
    }

    private func putOp(_ key: String, _ value: String, lease: Int64?) -> JSONValue {
        var members = [JSONMember("key", Self.b64(key)), JSONMember("value", Self.b64(value))]
        if let lease { members.append(JSONMember("lease", .string(String(lease)))) }
        return .object([JSONMember("request_put", .object(members))])
    }

    /// A put under a just-granted etcd lease fails with "requested lease not found" when the
    /// lease expired between grant and put (a short TTL on a slow or loaded etcd): grant anew.
    private func withFreshGrant<T>(_ ttl: Duration?, _ body: (Int64?) async throws -> T) async throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            let lease = try await ttl.asyncMap(grant)
            do {
                return try await body(lease)
            } catch RegistryError.server(_, 404, let message) where lease != nil && attempt < 3 && message.contains("lease not found") {
                continue
            }
        }
    }

    public func createLease(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        try await withFreshGrant(ttl) { lease in try await createLease(name: name, value: value, lease: lease) }
    }

    private func createLease(name: String, value: String, lease: Int64?) async throws -> Int64 {
        let key = subnetsKey + name
        let doc = try await call("create lease", "/v3/kv/txn", .object([
            JSONMember("compare", .array([.object([
                JSONMember("key", Self.b64(key)), JSONMember("result", .string("EQUAL")),
                JSONMember("target", .string("VERSION")), JSONMember("version", .string("0")),
            ])])),
            JSONMember("success", .array([putOp(key, value, lease: lease)])),
        ]), key: key)
        guard doc["succeeded"]?.boolValue == true else {
            if let lease { await revoke(lease) }
            throw RegistryError.conflict(key: key)
        }
        return try revision(doc, "create lease")
    }

    public func updateLease(name: String, value: String, ttl: Duration?, expectedRevision: Int64) async throws -> Int64 {
        try await withFreshGrant(ttl) { lease in
            try await updateLease(name: name, value: value, lease: lease, expectedRevision: expectedRevision)
        }
    }

    private func updateLease(name: String, value: String, lease: Int64?, expectedRevision: Int64) async throws -> Int64 {
        let key = subnetsKey + name
        let doc = try await call("update lease", "/v3/kv/txn", .object([
            JSONMember("compare", .array([.object([
                JSONMember("key", Self.b64(key)), JSONMember("result", .string("EQUAL")),
                JSONMember("target", .string("MOD")), JSONMember("mod_revision", .string(String(expectedRevision))),
            ])])),
            JSONMember("success", .array([
                .object([JSONMember("request_range", .object([JSONMember("key", Self.b64(key))]))]),
                putOp(key, value, lease: lease),
            ])),
        ]), key: key)
        guard doc["succeeded"]?.boolValue == true else {
            if let lease { await revoke(lease) }
            throw RegistryError.conflict(key: key)
        }
        // The key now hangs on the new lease; the old one would otherwise live on until its TTL.
        let old = doc["responses"]?.arrayValue?.first?["response_range"]?["kvs"]?.arrayValue?.first?["lease"]
        if let oldID = Self.int64(old), oldID != 0, oldID != lease { await revoke(oldID) }
        return try revision(doc, "update lease")
    }

    public func getLease(name: String) async throws -> LeaseRecord? {
        let doc = try await call("get lease", "/v3/kv/range", .object([JSONMember("key", Self.b64(subnetsKey + name))]), key: subnetsKey + name)
        return doc["kvs"]?.arrayValue?.first.flatMap(record)
    }

    public func deleteLease(name: String, expectedRevision: Int64?) async throws {
        let key = subnetsKey + name
        let compare: [JSONValue] = expectedRevision.map {
            [.object([
                JSONMember("key", Self.b64(key)), JSONMember("result", .string("EQUAL")),
                JSONMember("target", .string("MOD")), JSONMember("mod_revision", .string(String($0))),
            ])]
        } ?? []
        let doc = try await call("delete lease", "/v3/kv/txn", .object([
            JSONMember("compare", .array(compare)),
            JSONMember("success", .array([
                .object([JSONMember("request_range", .object([JSONMember("key", Self.b64(key))]))]),
                .object([JSONMember("request_delete_range", .object([JSONMember("key", Self.b64(key))]))]),
            ])),
        ]), key: key)
        guard doc["succeeded"]?.boolValue == true else { throw RegistryError.conflict(key: key) }
        let old = doc["responses"]?.arrayValue?.first?["response_range"]?["kvs"]?.arrayValue?.first?["lease"]
        if let oldID = Self.int64(old), oldID != 0 { await revoke(oldID) }
    }

    /// Test hook: writes any value under `<prefix>/subnets/` (hostile-lease tests, reservations).
    public func putRaw(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        let lease = try await ttl.asyncMap(grant)
        var members = [JSONMember("key", Self.b64(subnetsKey + name)), JSONMember("value", Self.b64(value))]
        if let lease { members.append(JSONMember("lease", .string(String(lease)))) }
        return try revision(try await call("put raw", "/v3/kv/put", .object(members), key: subnetsKey + name), "put raw")
    }

    public func watchLeases(fromRevision: Int64) -> AsyncThrowingStream<[LeaseWatchEvent], any Error> {
        let (stream, continuation) = AsyncThrowingStream<[LeaseWatchEvent], any Error>.makeStream()
        let task = Task { [self] in
            var next = fromRevision
            var tokenRefreshes = 0
            do {
                while !Task.isCancelled {
                    let request = JSONValue.object([JSONMember("create_request", .object([
                        JSONMember("key", Self.b64(subnetsKey)), JSONMember("range_end", Self.prefixEnd(subnetsKey)),
                        JSONMember("start_revision", .string(String(next))), JSONMember("progress_notify", .bool(true)),
                    ]))])
                    let s: HTTPStreamingResponse
                    do {
                        s = try await client.openStream(.POST, "/v3/watch", body: Array(request.serialized.utf8),
                                                        headers: try await authHeaders(refresh: false))
                    } catch EtcdClientError.timeout { continue }
                    do {
                        defer { s.close() }
                        if s.status != 200 {
                            let r = HTTPResponse(status: s.status, headers: s.headers, body: try await s.errorBody())
                            if credentials != nil, Self.isAuthFailure(r) {
                                _ = try await authHeaders(refresh: true)
                                continue
                            }
                            throw RegistryError.server(operation: "watch", status: s.status, message: Self.errorMessage(r))
                        }
                        var pending: [UInt8] = []
                        for try await var chunk in s.chunks {
                            pending += chunk.readBytes(length: chunk.readableBytes) ?? []
                            guard pending.count <= EtcdHTTPClient.maxResponseBytes else {
                                throw EtcdClientError.responseTooLarge(endpoint: s.endpoint.description, limit: EtcdHTTPClient.maxResponseBytes)
                            }
                            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                                let line = Array(pending[..<nl])
                                pending.removeSubrange(...nl)
                                if let events = try handleWatchLine(line, next: &next, requested: fromRevision), !events.isEmpty {
                                    continuation.yield(events)
                                }
                                tokenRefreshes = 0
                            }
                        }
                        if !pending.isEmpty, let events = try handleWatchLine(pending, next: &next, requested: fromRevision), !events.isEmpty {
                            continuation.yield(events)
                        }
                        // The server ended the stream: treat it as a connection loss.
                        throw EtcdClientError.closed(endpoint: s.endpoint.description)
                    } catch EtcdClientError.timeout {
                        // Idle longer than the watch timeout: reopen from where we are.
                        continue
                    } catch is WatchTokenExpired {
                        // Simple tokens expire (--auth-token-ttl) and vanish when etcd restarts.
                        tokenRefreshes += 1
                        guard tokenRefreshes <= 3 else { throw EtcdClientError.authentication("watch: token refused after re-authenticating") }
                        _ = try await authHeaders(refresh: true)
                        continue
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// One newline-delimited gateway message. Advances `next` past what it reports.
    private func handleWatchLine(_ line: [UInt8], next: inout Int64, requested: Int64) throws -> [LeaseWatchEvent]? {
        guard line.contains(where: { $0 != 0x20 && $0 != 0x0d }) else { return nil }
        let doc: JSONValue
        do { doc = try JSONValue.parse(bytes: line) } catch {
            throw RegistryError.malformedResponse(operation: "watch", detail: "\(error)")
        }
        if let err = doc["error"] {
            let message = err["message"]?.stringValue ?? err.serialized
            if message.contains("compacted") { throw RegistryError.historyUnavailable(requested: next, detail: message) }
            throw RegistryError.server(operation: "watch", status: Int(Self.int64(err["http_code"]) ?? 0), message: message)
        }
        guard let result = doc["result"] else { return nil }
        if let compact = Self.int64(result["compact_revision"]), compact > 0 {
            throw RegistryError.historyUnavailable(requested: next, detail: "revision compacted (oldest available \(compact))")
        }
        if result["canceled"]?.boolValue == true {
            let reason = result["cancel_reason"]?.stringValue ?? "no reason given"
            if credentials != nil, reason.contains("invalid auth token") { throw WatchTokenExpired() }
            if Self.isPermissionDenied(reason) {
                throw RegistryError.permissionDenied(operation: "watch", key: subnetsKey, user: credentials?.user)
            }
            throw RegistryError.server(operation: "watch", status: 0, message: "watch canceled by the server: \(reason)")
        }
        var events: [LeaseWatchEvent] = []
        for ev in result["events"]?.arrayValue ?? [] {
            guard let kv = ev["kv"], let rec = record(kv) else { continue }
            next = max(next, rec.revision + 1)
            if ev["type"]?.stringValue == "DELETE" {
                events.append(.delete(name: rec.name, revision: rec.revision, expired: false))
            } else {
                events.append(.put(rec))
            }
        }
        // A progress notification (no events) says every change up to its revision was sent: it
        // moves the resume point, here and (through `.progress`) in the caller, so a quiet prefix on
        // a busy, compacting etcd reconnects without a re-list.
        if events.isEmpty, let rev = Self.int64(result["header"]?["revision"]), result["created"]?.boolValue != true {
            next = max(next, rev + 1)
            events.append(.progress(revision: rev))
        }
        return events
    }
}

private struct WatchTokenExpired: Error {}

extension Optional {
    func asyncMap<U>(_ transform: (Wrapped) async throws -> U) async throws -> U? {
        guard let self else { return nil }
        return try await transform(self)
    }
}
