// Lease values: what a node publishes at `<prefix>/subnets/<net>-<len>`.
//
// Writing is byte-compatible with flannel (field order PublicIP, PublicIPv6 (null), BackendType,
// BackendData {VNI, VtepMAC}, MAC lowercase). Reading treats every value as untrusted: anything that
// could hurt the data path (a subnet outside the network or overlapping ours at another size, an
// unusable PublicIP, a multicast or zero VtepMAC, a 1 MiB value, a backend we do not run) is refused
// with a `LeaseRejection` reason that the watcher logs once and counts; it never stops the watch.

import NetTypes

/// The attributes flannel stores in a lease value.
public struct LeaseAttributes: Sendable, Equatable, CustomStringConvertible {
    public var publicIP: IPv4Address
    /// nil for the udp backend's form, which writes no BackendType.
    public var backendType: String?
    /// vxlan `BackendData.VNI`.
    public var vni: UInt32?
    /// vxlan `BackendData.VtepMAC`.
    public var vtepMAC: MACAddress?

    public init(publicIP: IPv4Address, backendType: String?, vni: UInt32? = nil, vtepMAC: MACAddress? = nil) {
        self.publicIP = publicIP
        self.backendType = backendType
        self.vni = vni
        self.vtepMAC = vtepMAC
    }

    /// The attributes a vxlan node publishes.
    public static func vxlan(publicIP: IPv4Address, vni: UInt32, vtepMAC: MACAddress) -> LeaseAttributes {
        LeaseAttributes(publicIP: publicIP, backendType: "vxlan", vni: vni, vtepMAC: vtepMAC)
    }

    /// The attributes for a config's backend: vxlan carries VNI and VtepMAC, udp writes no
    /// BackendType (as flannel's udp backend), others write only their type.
    public static func forBackend(_ backend: BackendConfig, publicIP: IPv4Address, vtepMAC: MACAddress?) -> LeaseAttributes {
        switch backend.type {
        case "vxlan": LeaseAttributes(publicIP: publicIP, backendType: "vxlan", vni: backend.vni, vtepMAC: vtepMAC)
        case "udp": LeaseAttributes(publicIP: publicIP, backendType: nil)
        default: LeaseAttributes(publicIP: publicIP, backendType: backend.type)
        }
    }

    /// flannel's JSON, e.g.
    /// `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`
    public var json: String {
        var members = [JSONMember("PublicIP", .string(publicIP.description)), JSONMember("PublicIPv6", .null)]
        if let backendType, !backendType.isEmpty { members.append(JSONMember("BackendType", .string(backendType))) }
        if vni != nil || vtepMAC != nil {
            var data: [JSONMember] = []
            if let vni { data.append(JSONMember("VNI", .int(vni))) }
            if let vtepMAC { data.append(JSONMember("VtepMAC", .string(vtepMAC.description))) }
            members.append(JSONMember("BackendData", .object(data)))
        }
        return JSONValue.object(members).serialized
    }

    public var description: String {
        "\(publicIP)" + (backendType.map { " \($0)" } ?? "") + (vni.map { " vni \($0)" } ?? "")
            + (vtepMAC.map { " vtep \($0)" } ?? "")
    }
}

/// One subnet lease as read from etcd.
public struct Lease: Sendable, Equatable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var attributes: LeaseAttributes
    /// A key without TTL: an administrator's permanent reservation. Kept TTL-less when reused.
    public var isReservation: Bool
    /// Remaining time to live when read, when the API reports it (v2 does; v3 only for our own).
    public var ttl: Duration?
    /// etcd v3 mod_revision or v2 modifiedIndex of the key.
    public var revision: Int64

    public init(subnet: IPv4Subnet, attributes: LeaseAttributes, isReservation: Bool = false,
                ttl: Duration? = nil, revision: Int64 = 0) {
        self.subnet = subnet
        self.attributes = attributes
        self.isReservation = isReservation
        self.ttl = ttl
        self.revision = revision
    }

    /// The data-path view of this lease.
    public var peer: Peer {
        Peer(subnet: subnet, publicIP: attributes.publicIP, vtepMAC: attributes.vtepMAC)
    }

    /// Same subnet and attributes (ignores revision and TTL, which change on every renewal).
    public func sameContent(as other: Lease) -> Bool {
        subnet == other.subnet && attributes == other.attributes
    }

    public var description: String { "\(subnet) → \(attributes)" + (isReservation ? " (reservation)" : "") }
}

/// Why a lease written by someone else was skipped. Raw values are stable metric labels.
public enum LeaseRejection: String, Sendable, CaseIterable, Hashable, CustomStringConvertible {
    case keyNotASubnet = "key_not_a_subnet"
    case subnetOutsideNetwork = "subnet_outside_network"
    case subnetWrongLength = "subnet_wrong_length"
    case valueTooLarge = "value_too_large"
    case invalidJSON = "invalid_json"
    case notAnObject = "not_an_object"
    case missingPublicIP = "missing_public_ip"
    case badPublicIP = "bad_public_ip"
    case badBackendType = "bad_backend_type"
    case unknownBackendType = "unknown_backend_type"
    case backendMismatch = "backend_mismatch"
    case badBackendData = "bad_backend_data"
    case badVtepMAC = "bad_vtep_mac"

    public var description: String { rawValue }
}

/// A refused lease value: the reason and a detail for the log line.
public struct LeaseRejected: Error, Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var reason: LeaseRejection
    public var detail: String
    public var description: String { "lease \(key) skipped (\(reason)): \(detail)" }
}

/// Reads lease keys and values with flannel's rules plus the checks the data path needs.
public enum LeaseDecoder {
    /// Values above this are refused before parsing (flannel's are ~140 bytes).
    public static let maxValueBytes = 64 * 1024

    /// Backend types flannel knows; a lease naming another is `unknownBackendType`.
    public static let knownBackendTypes: Set<String> = [
        "vxlan", "udp", "host-gw", "ipip", "wireguard", "extension", "alloc", "ipsec",
        "aws-vpc", "gce", "ali-vpc", "tencent-vpc",
    ]

    /// The subnet a lease key names: "10.5.52.0-24", or the IPv4 half of a dual-stack key
    /// "10.12.13.0-24&fd00:12:13::-56". nil for anything else.
    public static func subnet(fromKey key: String) -> IPv4Subnet? {
        let v4Part = key.split(separator: "&", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return IPv4Subnet(leaseKey: v4Part)
    }

    /// Full validation for a peer lease under `config`.
    public static func decode(key: String, value: [UInt8], isReservation: Bool, ttl: Duration?, revision: Int64,
                              config: NetworkConfig) -> Result<Lease, LeaseRejected> {
        func reject(_ r: LeaseRejection, _ detail: String) -> Result<Lease, LeaseRejected> {
            .failure(LeaseRejected(key: key, reason: r, detail: detail))
        }
        guard let subnet = subnet(fromKey: key) else { return reject(.keyNotASubnet, "key is not <address>-<prefix>") }
        guard config.network.contains(subnet.address) else {
            return reject(.subnetOutsideNetwork, "\(subnet) is outside Network \(config.network)")
        }
        guard subnet.prefixLength == config.subnetLen else {
            return reject(.subnetWrongLength, "/\(subnet.prefixLength) but the config's SubnetLen is \(config.subnetLen)")
        }
        let attributes: LeaseAttributes
        switch parseAttributes(value) {
        case .success(let a): attributes = a
        case .failure(let e): return reject(e.reason, e.detail)
        }
        // flannel's udp backend writes no BackendType.
        let theirs = attributes.backendType ?? "udp"
        if theirs != config.backend.type {
            guard knownBackendTypes.contains(theirs) else {
                return reject(.unknownBackendType, "BackendType \"\(theirs.prefix(40))\" is not a flannel backend")
            }
            return reject(.backendMismatch, "BackendType \(theirs) but this network runs \(config.backend.type)")
        }
        if config.backend.type == "vxlan" {
            guard let mac = attributes.vtepMAC else { return reject(.badBackendData, "vxlan lease without BackendData.VtepMAC") }
            guard !mac.isZero, !mac.isMulticast else { return reject(.badVtepMAC, "VtepMAC \(mac) is not a unicast address") }
        }
        return .success(Lease(subnet: subnet, attributes: attributes, isReservation: isReservation, ttl: ttl, revision: revision))
    }

    /// Parses a lease value's JSON (Go's case-insensitive keys) without looking at the network config.
    public static func parseAttributes(_ value: [UInt8]) -> Result<LeaseAttributes, LeaseRejected> {
        func reject(_ r: LeaseRejection, _ detail: String) -> Result<LeaseAttributes, LeaseRejected> {
            .failure(LeaseRejected(key: "", reason: r, detail: detail))
        }
        guard value.count <= maxValueBytes else {
            return reject(.valueTooLarge, "value is \(value.count) bytes (limit \(maxValueBytes))")
        }
        let doc: JSONValue
        do { doc = try JSONValue.parse(bytes: value) } catch { return reject(.invalidJSON, error.description) }
        guard doc.objectMembers != nil else { return reject(.notAnObject, "value is a JSON \(doc.typeName)") }

        guard let ipValue = doc.member(caseInsensitive: "PublicIP"), !ipValue.isNull else {
            return reject(.missingPublicIP, "no PublicIP")
        }
        guard let ipText = ipValue.stringValue else { return reject(.badPublicIP, "PublicIP is a \(ipValue.typeName)") }
        guard let ip = IPv4Address(ipText) else { return reject(.badPublicIP, "PublicIP \"\(ipText.prefix(40))\" is not IPv4") }
        let first = ip.value >> 24
        guard ip.value != 0, ip.value != UInt32.max, first != 127, first < 224 else {
            return reject(.badPublicIP, "PublicIP \(ip) cannot be a node address")
        }

        var backendType: String?
        if let t = doc.member(caseInsensitive: "BackendType"), !t.isNull {
            guard let s = t.stringValue else { return reject(.badBackendType, "BackendType is a \(t.typeName)") }
            backendType = s.isEmpty ? nil : s
        }
        var vni: UInt32?
        var mac: MACAddress?
        if let data = doc.member(caseInsensitive: "BackendData"), !data.isNull {
            guard data.objectMembers != nil else { return reject(.badBackendData, "BackendData is a \(data.typeName)") }
            if let v = data.member(caseInsensitive: "VNI"), !v.isNull {
                guard let n = v.int64Value, (0...0xFF_FFFF).contains(n) else {
                    return reject(.badBackendData, "VNI \(v.serialized.prefix(40)) is not an integer in 0...16777215")
                }
                vni = UInt32(n)
            }
            if let m = data.member(caseInsensitive: "VtepMAC"), !m.isNull {
                guard let text = m.stringValue else { return reject(.badVtepMAC, "VtepMAC is a \(m.typeName)") }
                guard text.utf8.count == 17, let parsed = MACAddress(text) else {
                    return reject(.badVtepMAC, "VtepMAC \"\(text.prefix(40))\" is not a MAC address")
                }
                mac = parsed
            }
        }
        return .success(LeaseAttributes(publicIP: ip, backendType: backendType, vni: vni, vtepMAC: mac))
    }
}
