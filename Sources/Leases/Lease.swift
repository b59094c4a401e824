// Lease values: what a node publishes at `<prefix>/subnets/<net>-<len>`.
//
// Writing is byte-compatible with flannel (field order PublicIP, PublicIPv6 (null), BackendType,
// BackendData {VNI, VtepMAC}, MAC lowercase). Reading treats every value as untrusted: anything that
// could hurt the data path (a subnet outside the network or overlapping ours at another size, an
// unusable PublicIP, a multicast or zero VtepMAC, a 1 MiB value, a backend we do not run) is refused
// with a `LeaseRejection` reason that the watcher logs once and counts; it never stops the watch.

import NetTypes
import RuntimeSupport

/// The attributes flannel stores in a lease value.
public struct LeaseAttributes: Sendable, Equatable, CustomStringConvertible {
    public var publicIP: IPv4Address
    /// nil for the udp backend's form, which writes no BackendType.
    public var backendType: String?
    /// vxlan `BackendData.VNI`.
    public var vni: UInt32?
    /// vxlan `BackendData.VtepMAC`.
    public var vtepMAC: MACAddress?
    /// vxlan `BackendData.SourceIP`, a field of flanneld-xdp's that flannel ignores: the address the
    /// node's VXLAN leaves from when that is not its PublicIP (--public-ip naming another address,
    /// without NAT). Peers' source checks accept it as this node. nil when it is the PublicIP.
    public var sourceIP: IPv4Address?

    public init(publicIP: IPv4Address, backendType: String?, vni: UInt32? = nil, vtepMAC: MACAddress? = nil,
                sourceIP: IPv4Address? = nil) {
        self.publicIP = publicIP
        self.backendType = backendType
        self.vni = vni
        self.vtepMAC = vtepMAC
        self.sourceIP = sourceIP == publicIP ? nil : sourceIP
    }

    /// The attributes a vxlan node publishes.
    public static func vxlan(publicIP: IPv4Address, vni: UInt32, vtepMAC: MACAddress, sourceIP: IPv4Address? = nil) -> LeaseAttributes {
        LeaseAttributes(publicIP: publicIP, backendType: "vxlan", vni: vni, vtepMAC: vtepMAC, sourceIP: sourceIP)
    }

    /// The attributes for a config's backend: vxlan carries VNI and VtepMAC (and SourceIP when the
    /// node's VXLAN leaves from another address than its PublicIP), udp writes no BackendType (as
    /// flannel's udp backend), others write only their type.
    public static func forBackend(_ backend: BackendConfig, publicIP: IPv4Address, vtepMAC: MACAddress?,
                                  sourceIP: IPv4Address? = nil) -> LeaseAttributes {
        switch backend.type {
        case "vxlan": LeaseAttributes(publicIP: publicIP, backendType: "vxlan", vni: backend.vni, vtepMAC: vtepMAC, sourceIP: sourceIP)
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
            if let sourceIP { data.append(JSONMember("SourceIP", .string(sourceIP.description))) }
            members.append(JSONMember("BackendData", .object(data)))
        }
        return JSONValue.object(members).serialized
    }

    public var description: String {
        "\(publicIP)" + (backendType.map { " \($0)" } ?? "") + (vni.map { " vni \($0)" } ?? "")
            + (vtepMAC.map { " vtep \($0)" } ?? "") + (sourceIP.map { " sends from \($0)" } ?? "")
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
        Peer(subnet: subnet, publicIP: attributes.publicIP, vtepMAC: attributes.vtepMAC, sourceIP: attributes.sourceIP)
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
    case keyNotCanonical = "key_not_canonical"
    case subnetOutsideNetwork = "subnet_outside_network"
    case subnetWrongLength = "subnet_wrong_length"
    case valueTooLarge = "value_too_large"
    case invalidJSON = "invalid_json"
    case notAnObject = "not_an_object"
    case missingPublicIP = "missing_public_ip"
    case badPublicIP = "bad_public_ip"
    case publicIPInNetwork = "public_ip_in_network"
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

    /// The subnet a lease key names as flannel writes keys (`MakeSubnetKey`): "10.5.52.0-24", or the
    /// IPv4 half of a dual-stack key "10.12.13.0-24&fd00:12:13::-56". nil for anything else,
    /// including keys flannel's more lenient parser would also read (see `flannelSubnet(fromKey:)`).
    public static func subnet(fromKey key: String) -> IPv4Subnet? {
        LeaseKey(key)?.subnet
    }

    /// The subnet flannel reads from a key: its ParseSubnetKey searches
    /// `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$` anywhere in the key, so "x10.5.1.0-24" or
    /// "old/10.5.1.0-24" name 10.5.1.0/24 to a flannel node. Used where flannel's view matters: a
    /// subnet any flannel node sees as taken is never handed out here. Peers come only from the
    /// keys flannel writes (`subnet(fromKey:)`), so such an alias can neither shadow a lease nor,
    /// when deleted, remove one.
    public static func flannelSubnet(fromKey key: String) -> IPv4Subnet? {
        if let canonical = LeaseKey(key) { return canonical.subnet }
        guard key.utf8.count <= 256, let match = key.firstMatch(of: flannelKeyPattern) else { return nil }
        // net.ParseIP(...).To4() and strconv.ParseUint(prefix, 10, 5): at most /31.
        guard let address = IPv4Address(match.output.1), let prefix = Int(match.output.2), prefix <= 31 else { return nil }
        return IPv4Subnet(containing: address, prefixLength: prefix)
    }

    /// flannel's subnetRegex, with \d spelled [0-9] (Go's \d is ASCII only).
    nonisolated(unsafe) static let flannelKeyPattern = #/([0-9]+\.[0-9]+.[0-9]+.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?$/#

    /// Full validation for a peer lease under `config`.
    public static func decode(key: String, value: [UInt8], isReservation: Bool, ttl: Duration?, revision: Int64,
                              config: NetworkConfig) -> Result<Lease, LeaseRejected> {
        func reject(_ r: LeaseRejection, _ detail: String) -> Result<Lease, LeaseRejected> {
            .failure(LeaseRejected(key: key, reason: r, detail: detail))
        }
        guard let subnet = subnet(fromKey: key) else {
            if let alias = flannelSubnet(fromKey: key) {
                return reject(.keyNotCanonical, "flannel nodes read this key as \(alias), but no node writes it so (\(alias.leaseKey)): "
                              + "an alias, ignored so that it can neither shadow nor remove the lease of \(alias)")
            }
            return reject(.keyNotASubnet, "key is not <address>-<prefix>[&<ipv6 address>-<prefix>]")
        }
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
        // A node address inside the pod network would make a pod (or the flannel.<VNI> address of
        // a node) a peer whose VXLAN the source checks accept.
        for (field, address) in [("PublicIP", Optional(attributes.publicIP)), ("BackendData.SourceIP", attributes.sourceIP)] {
            if let address, config.network.contains(address) {
                return reject(.publicIPInNetwork, "\(field) \(address) lies inside the pod Network \(config.network): pods are never peers")
            }
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
        guard isNodeAddress(ip) else { return reject(.badPublicIP, "PublicIP \(ip) cannot be a node address") }

        var backendType: String?
        if let t = doc.member(caseInsensitive: "BackendType"), !t.isNull {
            guard let s = t.stringValue else { return reject(.badBackendType, "BackendType is a \(t.typeName)") }
            backendType = s.isEmpty ? nil : s
        }
        var vni: UInt32?
        var mac: MACAddress?
        var sourceIP: IPv4Address?
        if let data = doc.member(caseInsensitive: "BackendData"), !data.isNull {
            guard data.objectMembers != nil else { return reject(.badBackendData, "BackendData is a \(data.typeName)") }
            if let v = data.member(caseInsensitive: "VNI"), !v.isNull {
                guard let n = v.int64Value, (0...0xFF_FFFF).contains(n) else {
                    return reject(.badBackendData, "VNI \(v.serialized.prefix(40)) is not an integer in 0...16777215")
                }
                vni = UInt32(n)
            }
            if let source = data.member(caseInsensitive: "SourceIP"), !source.isNull {
                guard let text = source.stringValue, let address = IPv4Address(text) else {
                    return reject(.badPublicIP, "BackendData.SourceIP \(source.serialized.prefix(40)) is not an IPv4 address")
                }
                guard isNodeAddress(address) else {
                    return reject(.badPublicIP, "BackendData.SourceIP \(address) cannot be a node address")
                }
                sourceIP = address
            }
            if let m = data.member(caseInsensitive: "VtepMAC"), !m.isNull {
                guard let text = m.stringValue else { return reject(.badVtepMAC, "VtepMAC is a \(m.typeName)") }
                guard text.utf8.count == 17, let parsed = MACAddress(text) else {
                    return reject(.badVtepMAC, "VtepMAC \"\(text.prefix(40))\" is not a MAC address")
                }
                mac = parsed
            }
        }
        return .success(LeaseAttributes(publicIP: ip, backendType: backendType, vni: vni, vtepMAC: mac, sourceIP: sourceIP))
    }

    /// Whether `address` can be a node's: not 0.0.0.0, loopback, multicast, reserved or broadcast.
    static func isNodeAddress(_ address: IPv4Address) -> Bool {
        let first = address.value >> 24
        return address.value != 0 && first != 127 && first < 224
    }
}

/// A lease key exactly as flannel writes it (`MakeSubnetKey`): "10.5.52.0-24" for an IPv4 lease,
/// "10.12.13.0-24&fd00:12:13::-56" for a dual-stack one. Parsed by hand (it runs for every key of a
/// listing), and only in that canonical form: no leading zeros, host bits clear, the IPv6 half in
/// Go's text form, IPv4 prefixes up to /31 and IPv6 up to /127 (flannel's ParseUint bit sizes).
public struct LeaseKey: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var ipv6Subnet: IPv6Subnet?

    public init?(_ name: String) {
        let halves = name.split(separator: "&", maxSplits: 2, omittingEmptySubsequences: false)
        guard halves.count <= 2, let v4 = IPv4Subnet(leaseKey: halves[0]), v4.prefixLength <= 31,
              v4.leaseKey == halves[0] else { return nil }
        subnet = v4
        ipv6Subnet = nil
        if halves.count == 2 {
            let v6Text = halves[1]
            guard let dash = v6Text.lastIndex(of: "-"), let address = IPv6Address(v6Text[..<dash]),
                  let prefix = Int(v6Text[v6Text.index(after: dash)...]), prefix <= 127,
                  let v6 = IPv6Subnet(address: address, prefixLength: prefix), v6.leaseKey == v6Text else { return nil }
            ipv6Subnet = v6
        }
    }

    public var description: String { subnet.leaseKey + (ipv6Subnet.map { "&" + $0.leaseKey } ?? "") }
}
