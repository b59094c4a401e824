// The leases this node last confirmed with etcd, kept on disk so that a node that reboots while etcd
// is unreachable can still bring its overlay up: the network config, our own lease (with when it
// expires) and every peer lease, each stored as the text etcd held. Reading it back runs every value
// through the same validation as a fresh etcd read (NetworkConfig.parse, LeaseDecoder.decode): the
// file is data from the past, not trusted input, and a peer lease that would be refused from etcd
// is refused from here too.
//
// Format (one JSON object; unknown members are ignored so an older daemon reads a newer file):
//   {"format":1,"savedAt":<unix s>,"etcdAPI":"v3","config":"<config JSON text>",
//    "lease":{"key":"10.5.3.0-24","value":"<lease JSON text>","reservation":false,"expiresAt":<unix s>},
//    "peers":[{"key":"10.5.7.0-24","value":"<lease JSON text>"},...]}
// Written atomically with fsync (AtomicFile), mode 0644: nothing in it is secret, and a reader must
// never see half a file after a power cut.

import Glibc
import NetTypes
import RuntimeSupport

public struct LastKnownLeases: Sendable, Equatable {
    public static let format: Int64 = 1
    /// 5000 peers take ~1 MB; anything far beyond is damage, not state.
    public static let maxFileBytes = 32 << 20

    /// Unix seconds when the state was saved.
    public var savedAt: Int64
    public var etcdAPI: EtcdAPIVersion
    public var config: NetworkConfig
    public var own: Lease
    /// Unix seconds when our lease expires unless renewed; nil for a reservation (no TTL).
    public var ownExpiresAt: Int64?
    public var peers: [Lease]

    public init(savedAt: Int64, etcdAPI: EtcdAPIVersion, config: NetworkConfig, own: Lease, ownExpiresAt: Int64?, peers: [Lease]) {
        self.savedAt = savedAt
        self.etcdAPI = etcdAPI
        self.config = config
        self.own = own
        self.ownExpiresAt = ownExpiresAt
        self.peers = peers
    }

    /// True while our lease has not expired at `now` (unix seconds); a reservation never expires.
    public func ownLeaseIsLive(now: Int64) -> Bool {
        own.isReservation || (ownExpiresAt ?? 0) > now
    }

    public var json: String { String(decoding: encoded, as: UTF8.self) }

    /// The file's bytes, written peer by peer: at 50 000 peers a value tree of the whole document
    /// would hold several times the file's ~12 MB while it is written (every second under churn).
    public var encoded: [UInt8] {
        var lease = [JSONMember("key", .string(own.key)), JSONMember("value", .string(own.attributes.json)),
                     JSONMember("reservation", .bool(own.isReservation))]
        if let ownExpiresAt { lease.append(JSONMember("expiresAt", .int(ownExpiresAt))) }
        var head = JSONValue.object([
            JSONMember("format", .int(Self.format)),
            JSONMember("savedAt", .int(savedAt)),
            JSONMember("etcdAPI", .string(etcdAPI.rawValue)),
            JSONMember("config", .string(config.rawJSON)),
            JSONMember("lease", .object(lease)),
            JSONMember("peers", .array([])),
        ]).serialized
        head.removeLast(2)  // "]}": the peers follow
        var out = Array(head.utf8)
        out.reserveCapacity(out.count + 256 * peers.count + 3)
        var entry = ""
        for (i, peer) in peers.enumerated() {
            entry.removeAll(keepingCapacity: true)
            entry += i == 0 ? "{\"key\":" : ",{\"key\":"
            JSONValue.writeString(peer.key, into: &entry)
            entry += ",\"value\":"
            JSONValue.writeString(peer.attributes.json, into: &entry)
            entry += "}"
            out += entry.utf8
        }
        out += "]}\n".utf8
        return out
    }

    /// Parses the file's text. Peer leases that fail validation are left out and returned in
    /// `skipped`; anything wrong with the config or our own lease makes the whole file unusable.
    public static func parse(_ text: String, path: String) throws(LastKnownLeasesError) -> (state: LastKnownLeases, skipped: [LeaseRejected]) {
        func bad(_ field: String, _ why: String) -> LastKnownLeasesError { .damaged(path: path, field: field, reason: why) }
        let doc: JSONValue
        do { doc = try JSONValue.parse(text) } catch { throw bad("file", "\(error)") }
        guard doc.objectMembers != nil else { throw bad("file", "not a JSON object") }
        guard let format = doc["format"]?.int64Value else { throw bad("format", "missing or not an integer") }
        guard format == Self.format else {
            throw bad("format", "format \(format) is not \(Self.format) (written by another flanneld-xdp version)")
        }
        guard let savedAt = doc["savedAt"]?.int64Value else { throw bad("savedAt", "missing or not an integer") }
        guard let apiText = doc["etcdAPI"]?.stringValue, let api = EtcdAPIVersion(rawValue: apiText), api != .auto else {
            throw bad("etcdAPI", "missing or not v2/v3")
        }
        guard let configText = doc["config"]?.stringValue else { throw bad("config", "missing or not a string") }
        let config: NetworkConfig
        do { config = try NetworkConfig.parse(configText) } catch { throw bad("config", error.description) }

        guard let leaseDoc = doc["lease"], leaseDoc.objectMembers != nil else { throw bad("lease", "missing or not an object") }
        guard let key = leaseDoc["key"]?.stringValue, let ownKey = LeaseKey(key) else {
            throw bad("lease.key", "missing or not a subnet key")
        }
        let subnet = ownKey.subnet
        guard config.allows(subnet) else { throw bad("lease.key", "\(subnet) is not a subnet of the saved config") }
        if let v6 = config.ipv6 {
            guard let ipv6 = ownKey.ipv6Subnet, v6.allows(ipv6) else {
                throw bad("lease.key", "\(key) holds no IPv6 subnet of the saved config's \(v6.network)")
            }
        }
        guard let value = leaseDoc["value"]?.stringValue else { throw bad("lease.value", "missing or not a string") }
        let attributes: LeaseAttributes
        switch LeaseDecoder.parseAttributes(Array(value.utf8)) {
        case .success(let a): attributes = a
        case .failure(let e): throw bad("lease.value", "\(e.reason): \(e.detail)")
        }
        let reservation = leaseDoc["reservation"]?.boolValue ?? false
        let expiresAt = leaseDoc["expiresAt"]?.int64Value
        guard reservation || expiresAt != nil else { throw bad("lease.expiresAt", "missing for a lease with a TTL") }

        guard let peerDocs = doc["peers"]?.arrayValue else { throw bad("peers", "missing or not an array") }
        var peers: [Lease] = []
        var skipped: [LeaseRejected] = []
        for (i, peerDoc) in peerDocs.enumerated() {
            guard let key = peerDoc["key"]?.stringValue, let value = peerDoc["value"]?.stringValue else {
                skipped.append(LeaseRejected(key: "peers[\(i)]", reason: .keyNotASubnet, detail: "entry without key/value strings"))
                continue
            }
            switch LeaseDecoder.decode(key: key, value: Array(value.utf8), isReservation: false, ttl: nil, revision: 0, config: config) {
            case .success(let lease) where OwnIdentity(key: key, subnet: subnet, publicIP: attributes.publicIP, ipv6Subnet: ownKey.ipv6Subnet,
                                                       publicIPv6: attributes.publicIPv6).isOwn(lease, config: config):
                skipped.append(LeaseRejected(key: key, reason: .keyNotASubnet, detail: "our own subnet or PublicIP among the peers"))
            case .success(let lease): peers.append(lease)
            case .failure(let rejected): skipped.append(rejected)
            }
        }
        let own = Lease(subnet: subnet, ipv6Subnet: ownKey.ipv6Subnet, attributes: attributes, isReservation: reservation)
        return (LastKnownLeases(savedAt: savedAt, etcdAPI: api, config: config, own: own,
                                ownExpiresAt: reservation ? nil : expiresAt, peers: peers), skipped)
    }

    /// nil when the file does not exist.
    public static func read(from path: String) throws(LastKnownLeasesError) -> (state: LastKnownLeases, skipped: [LeaseRejected])? {
        let file: (bytes: [UInt8], truncated: Bool)?
        do { file = try AtomicFile.read(from: path, limit: maxFileBytes) } catch {
            throw .io(operation: error.operation, path: error.path, errno: error.errno)
        }
        guard let file else { return nil }
        guard !file.truncated else { throw .damaged(path: path, field: "file", reason: "larger than \(maxFileBytes) bytes") }
        return try parse(String(decoding: file.bytes, as: UTF8.self), path: path)
    }

    public func write(to path: String) throws(LastKnownLeasesError) {
        do { try AtomicFile.write(encoded, to: path, mode: 0o644) } catch {
            throw .io(operation: error.operation, path: error.path, errno: error.errno)
        }
    }
}

public enum LastKnownLeasesError: Error, Sendable, Equatable, CustomStringConvertible {
    case io(operation: String, path: String, errno: Int32)
    case damaged(path: String, field: String, reason: String)

    public var description: String {
        switch self {
        case let .io(operation, path, errno):
            "last known state \(path): \(operation) failed: \(String(cString: strerror(errno))) (errno \(errno)); "
                + "check the folder exists and is writable by root (--last-known-state)"
        case let .damaged(path, field, reason):
            "last known state \(path) is unusable: \(field): \(reason); it is rewritten once etcd answers"
        }
    }
}
