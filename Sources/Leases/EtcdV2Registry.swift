// etcd v2 keys API (`/v2/keys`), the store flannel ≤ 0.17 uses. etcd 3.4/3.5 serve it only with
// `--enable-v2=true`; its keyspace is separate from v3's.
//
// create  PUT  <key>?prevExist=false&ttl=N   errorCode 105 (node exists)  → conflict
// update  PUT  <key>?prevIndex=M[&ttl=N]      errorCode 101/100            → conflict (no TTL: reservation)
// list    GET  <prefix>/subnets?recursive=true, revision = X-Etcd-Index
// watch   GET  <prefix>/subnets?wait=true&recursive=true&waitIndex=N, one event per request;
//         errorCode 401 (index outside the 1000-event window) → historyUnavailable → re-list.
// Auth: HTTP basic (--etcd-username/--etcd-password).

import NIOHTTP1
import NetTypes
import RuntimeSupport

public final class EtcdV2Registry: SubnetRegistry {
    public var apiVersion: EtcdAPIVersion { .v2 }
    public let prefix: String
    let client: EtcdHTTPClient
    private let authHeader: [(String, String)]

    init(client: EtcdHTTPClient, prefix: String, username: String?, password: String?) {
        self.client = client
        self.prefix = normalizedPrefix(prefix)
        if let username, !username.isEmpty {
            authHeader = [("Authorization", "Basic " + Base64.encode(username + ":" + (password ?? "")))]
        } else {
            authHeader = []
        }
    }

    private func keyURI(_ key: String) -> String { "/v2/keys" + key.percentEncoded(keepSlash: true) }
    private func leaseKey(_ name: String) -> String { subnetsKey + name }

    private struct V2Error {
        var code: Int
        var message: String
        var index: Int64?
    }

    private func v2Error(_ r: HTTPResponse) -> V2Error? {
        guard let doc = try? JSONValue.parse(bytes: r.body), let code = doc["errorCode"]?.int64Value else { return nil }
        let message = (doc["message"]?.stringValue ?? "") + (doc["cause"]?.stringValue.map { " (\($0))" } ?? "")
        return V2Error(code: Int(code), message: message, index: doc["index"]?.int64Value)
    }

    private func fail(_ op: String, _ r: HTTPResponse) -> any Error {
        if let e = v2Error(r) {
            // 110: insufficient credentials (v2 auth with the guest role revoked).
            if e.code == 110 { return EtcdClientError.authentication("\(op): \(e.message)") }
            return RegistryError.server(operation: op, status: r.status, message: "errorCode \(e.code): \(e.message)")
        }
        if r.status == 404 {
            return RegistryError.server(operation: op, status: 404, message: "the v2 API is not served: start etcd with --enable-v2=true, or use the v3 API")
        }
        if r.status == 401 {
            return EtcdClientError.authentication("\(op): HTTP 401")
        }
        return RegistryError.server(operation: op, status: r.status, message: String(r.bodyText.prefix(200)))
    }

    private func parse(_ op: String, _ r: HTTPResponse) throws -> JSONValue {
        do { return try JSONValue.parse(bytes: r.body) } catch {
            throw RegistryError.malformedResponse(operation: op, detail: "\(error)")
        }
    }

    private func record(_ node: JSONValue) -> LeaseRecord? {
        guard node["dir"]?.boolValue != true, let key = node["key"]?.stringValue else { return nil }
        // The whole path below subnets/, as v3 gives it: a key in a folder under it is no lease of
        // the subnet its last element names (LeaseKey rejects it).
        let name = key.hasPrefix(subnetsKey) ? String(key.dropFirst(subnetsKey.count)) : key
        let ttl = node["ttl"]?.int64Value
        return LeaseRecord(name: name, value: Array((node["value"]?.stringValue ?? "").utf8),
                           isReservation: ttl == nil, ttl: ttl.map { .seconds($0) },
                           revision: node["modifiedIndex"]?.int64Value ?? 0,
                           createRevision: node["createdIndex"]?.int64Value)
    }

    public func getConfigText() async throws -> String {
        let r = try await client.request(.GET, keyURI(configKey), headers: authHeader)
        if r.status == 404, let e = v2Error(r), e.code == 100 {
            throw RegistryError.configNotFound(key: configKey, api: "v2")
        }
        guard r.status == 200 else { throw fail("get config", r) }
        guard let value = try parse("get config", r)["node"]?["value"]?.stringValue else {
            throw RegistryError.malformedResponse(operation: "get config", detail: "no node.value (is \(configKey) a directory?)")
        }
        return value
    }

    /// v2 has no paging: the one answer, `{"action":"get","node":{…,"nodes":[{…},…]}}`, is read as it
    /// arrives and each node handed to `body` when it has been read.
    public func listLeases(_ body: (LeaseRecord) throws -> Void) async throws -> Int64 {
        let s = try await client.openStream(.GET, keyURI(String(subnetsKey.dropLast())) + "?recursive=true", headers: authHeader,
                                            idleTimeout: client.options.requestTimeout)
        defer { s.close() }
        let index = s.headers.first(name: "X-Etcd-Index").flatMap { Int64($0) }
        guard s.status == 200 else {
            let r = HTTPResponse(status: s.status, headers: s.headers, body: try await s.errorBody())
            if r.status == 404, let e = v2Error(r), e.code == 100 { return index ?? e.index ?? 0 }
            throw fail("list leases", r)
        }
        guard let index else {
            throw RegistryError.malformedResponse(operation: "list leases", detail: "no X-Etcd-Index header")
        }
        let json = s.json()
        do {
            try await json.enterObject()
            while let name = try await json.nextName() {
                guard name == "node" else { try await json.skipValue(); continue }
                try await json.enterObject()
                while let field = try await json.nextName() {
                    guard field == "nodes" else { try await json.skipValue(); continue }
                    try await json.enterArray()
                    while try await json.hasElement() {
                        if let rec = record(try await Self.nodeWithoutChildren(json)) { try body(rec) }
                    }
                }
            }
            try await json.end()
        } catch let error as JSONParseError {
            throw RegistryError.malformedResponse(operation: "list leases", detail: "\(error)")
        }
        return index
    }

    /// A listed node's own members; the children of a folder under subnets/ (no lease, skipped by
    /// `record`) are read past, not held.
    private static func nodeWithoutChildren(_ json: JSONStreamReader) async throws -> JSONValue {
        guard try await json.peek() == .objectStart else { return try await json.value() }
        try await json.enterObject()
        var members: [JSONMember] = []
        while let name = try await json.nextName() {
            if name == "nodes" {
                try await json.skipValue()
            } else {
                members.append(JSONMember(name, try await json.value()))
            }
        }
        return .object(members)
    }

    private func put(_ op: String, _ name: String, _ value: String, query: String) async throws -> Int64 {
        let body = Array(("value=" + value.percentEncoded(keepSlash: false)).utf8)
        let r = try await client.request(.PUT, keyURI(leaseKey(name)) + query, body: body, headers: authHeader,
                                          contentType: "application/x-www-form-urlencoded")
        if r.status == 200 || r.status == 201 {
            guard let rev = try parse(op, r)["node"]?["modifiedIndex"]?.int64Value else {
                throw RegistryError.malformedResponse(operation: op, detail: "no node.modifiedIndex")
            }
            return rev
        }
        // 105 node exists (create), 101 compare failed / 100 key not found (update).
        if let e = v2Error(r), [100, 101, 105].contains(e.code) { throw RegistryError.conflict(key: leaseKey(name)) }
        throw fail(op, r)
    }

    public func createLease(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        try await put("create lease", name, value, query: "?prevExist=false" + ttlQuery(ttl))
    }

    public func updateLease(name: String, value: String, ttl: Duration?, expectedRevision: Int64) async throws -> Int64 {
        // No ttl parameter makes the key permanent: how a reused reservation stays TTL-less.
        try await put("update lease", name, value, query: "?prevIndex=\(expectedRevision)" + ttlQuery(ttl))
    }

    private func ttlQuery(_ ttl: Duration?) -> String {
        guard let ttl else { return "" }
        return "&ttl=\(max(1, ttl.components.seconds))"
    }

    public func getLease(name: String) async throws -> LeaseRecord? {
        let r = try await client.request(.GET, keyURI(leaseKey(name)), headers: authHeader)
        if r.status == 404, let e = v2Error(r), e.code == 100 { return nil }
        guard r.status == 200 else { throw fail("get lease", r) }
        return try parse("get lease", r)["node"].flatMap(record)
    }

    public func deleteLease(name: String, expectedRevision: Int64?) async throws {
        let query = expectedRevision.map { "?prevIndex=\($0)" } ?? ""
        let r = try await client.request(.DELETE, keyURI(leaseKey(name)) + query, headers: authHeader)
        if r.status == 200 { return }
        if let e = v2Error(r) {
            if e.code == 100, expectedRevision == nil { return }
            if e.code == 100 || e.code == 101 { throw RegistryError.conflict(key: leaseKey(name)) }
        }
        throw fail("delete lease", r)
    }

    /// Test hook: writes any value under `<prefix>/subnets/` (hostile-lease tests, reservations).
    public func putRaw(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        try await put("put raw", name, value, query: ttl.map { "?ttl=\(max(1, $0.components.seconds))" } ?? "")
    }

    public func watchLeases(fromRevision: Int64) -> AsyncThrowingStream<[LeaseWatchEvent], any Error> {
        let (stream, continuation) = AsyncThrowingStream<[LeaseWatchEvent], any Error>.makeStream()
        let task = Task { [self] in
            var next = fromRevision
            do {
                while !Task.isCancelled {
                    let uri = keyURI(String(subnetsKey.dropLast())) + "?wait=true&recursive=true&waitIndex=\(next)"
                    let s: HTTPStreamingResponse
                    do { s = try await client.openStream(.GET, uri, headers: authHeader) } catch EtcdClientError.timeout { continue }
                    var body: [UInt8] = []
                    do {
                        defer { s.close() }
                        for try await var chunk in s.chunks {
                            body += chunk.readBytes(length: chunk.readableBytes) ?? []
                            guard body.count <= EtcdHTTPClient.maxResponseBytes else {
                                throw EtcdClientError.responseTooLarge(endpoint: s.endpoint.description, limit: EtcdHTTPClient.maxResponseBytes)
                            }
                        }
                    } catch EtcdClientError.timeout {
                        // No event within the idle timeout: ask again from the same index.
                        continue
                    }
                    let r = HTTPResponse(status: s.status, headers: s.headers, body: body)
                    if let e = v2Error(r) {
                        if e.code == 401 { throw RegistryError.historyUnavailable(requested: next, detail: e.message) }
                        throw fail("watch", r)
                    }
                    guard r.status == 200 else { throw fail("watch", r) }
                    let doc = try parse("watch", r)
                    guard let node = doc["node"], let index = node["modifiedIndex"]?.int64Value else {
                        throw RegistryError.malformedResponse(operation: "watch", detail: "event without node.modifiedIndex")
                    }
                    next = index + 1
                    let action = doc["action"]?.stringValue ?? ""
                    guard node["dir"]?.boolValue != true, let rec = record(node) else { continue }
                    switch action {
                    case "delete", "expire", "compareAndDelete":
                        continuation.yield([.delete(name: rec.name, revision: index, expired: action == "expire")])
                    default:
                        continuation.yield([.put(rec)])
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
}

func normalizedPrefix(_ prefix: String) -> String {
    var p = prefix
    while p.hasSuffix("/") { p.removeLast() }
    if !p.hasPrefix("/") { p = "/" + p }
    return p
}
