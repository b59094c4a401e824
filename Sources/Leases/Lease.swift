// Lease values: what a node publishes at `<prefix>/subnets/<net>-<len>`.
//
// Writing is byte-compatible with flannel (field order PublicIP, PublicIPv6 (null unless dual-stack),
// BackendType, BackendData {VNI, VtepMAC}, BackendV6Data {VNI, VtepMAC} of the flannel-v6 device,
// MAC lowercase). Reading treats every value as untrusted: anything that could hurt the data path
// (a subnet outside the network or overlapping ours at another size, an unusable PublicIP, a
// multicast or zero VtepMAC, a 1 MiB value, a backend we do not run) is refused with a
// `LeaseRejection` reason that the watcher logs once and counts; it never stops the watch.
//
// Dual-stack, as flannel's vxlan backend reads leases (pkg/backend/vxlan/vxlan_network.go): the key
// names the IPv4 subnet and, after '&', the IPv6 one; each half is used only when this network runs
// that family (an IPv4-only node takes the IPv4 half of a dual-stack lease and ignores the rest); a
// lease that names no IPv6 subnet is an IPv4-only peer in a dual-stack network. An IPv6-only network
// has no IPv4 half: flannel writes "0.0.0.0-0" there and PublicIP "0.0.0.0", and both are ignored.

import NetTypes
import RuntimeSupport

/// The attributes flannel stores in a lease value.
public struct LeaseAttributes: Sendable, Equatable, CustomStringConvertible {
    /// 0.0.0.0 in an IPv6-only lease (flannel writes Go's zero value).
    public var publicIP: IPv4Address
    /// `PublicIPv6`: the address of the IPv6 underlay, in dual-stack and IPv6-only leases.
    public var publicIPv6: IPv6Address?
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
    /// vxlan `BackendV6Data.VNI` (the same VNI; flannel writes it for the flannel-v6 device).
    public var ipv6VNI: UInt32?
    /// vxlan `BackendV6Data.VtepMAC`: the MAC of the node's `flannel-v6.<VNI>` device.
    public var ipv6VtepMAC: MACAddress?

    public init(publicIP: IPv4Address, backendType: String?, vni: UInt32? = nil, vtepMAC: MACAddress? = nil,
                sourceIP: IPv4Address? = nil, publicIPv6: IPv6Address? = nil, ipv6VNI: UInt32? = nil,
                ipv6VtepMAC: MACAddress? = nil) {
        self.publicIP = publicIP
        self.backendType = backendType
        self.vni = vni
        self.vtepMAC = vtepMAC
        self.sourceIP = sourceIP == publicIP ? nil : sourceIP
        self.publicIPv6 = publicIPv6
        self.ipv6VNI = ipv6VNI
        self.ipv6VtepMAC = ipv6VtepMAC
    }

    /// The attributes a vxlan node publishes. An IPv6-only node passes `publicIP` 0.0.0.0 and no
    /// `vtepMAC` (it has no IPv4 device), as flannel does.
    public static func vxlan(publicIP: IPv4Address, vni: UInt32, vtepMAC: MACAddress?, sourceIP: IPv4Address? = nil,
                             publicIPv6: IPv6Address? = nil, ipv6VtepMAC: MACAddress? = nil) -> LeaseAttributes {
        LeaseAttributes(publicIP: publicIP, backendType: "vxlan", vni: vtepMAC == nil ? nil : vni, vtepMAC: vtepMAC, sourceIP: sourceIP,
                        publicIPv6: publicIPv6, ipv6VNI: ipv6VtepMAC == nil ? nil : vni, ipv6VtepMAC: ipv6VtepMAC)
    }

    /// The attributes for a config's backend: vxlan carries VNI and VtepMAC (and SourceIP when the
    /// node's VXLAN leaves from another address than its PublicIP) and, for IPv6, BackendV6Data;
    /// udp writes no BackendType (as flannel's udp backend), others write only their type (and
    /// PublicIPv6).
    public static func forBackend(_ backend: BackendConfig, publicIP: IPv4Address, vtepMAC: MACAddress?,
                                  sourceIP: IPv4Address? = nil, publicIPv6: IPv6Address? = nil,
                                  ipv6VtepMAC: MACAddress? = nil) -> LeaseAttributes {
        switch backend.type {
        case "vxlan":
            .vxlan(publicIP: publicIP, vni: backend.vni, vtepMAC: vtepMAC, sourceIP: sourceIP, publicIPv6: publicIPv6,
                   ipv6VtepMAC: ipv6VtepMAC)
        case "udp": LeaseAttributes(publicIP: publicIP, backendType: nil)
        default: LeaseAttributes(publicIP: publicIP, backendType: backend.type, publicIPv6: publicIPv6)
        }
    }

    /// flannel's JSON, e.g.
    /// `{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
    /// dual-stack `{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{…},"BackendV6Data":{"VNI":1,"VtepMAC":"…"}}`.
    public var json: String {
        var members = [JSONMember("PublicIP", .string(publicIP.description)),
                       JSONMember("PublicIPv6", publicIPv6.map { .string($0.description) } ?? .null)]
        if let backendType, !backendType.isEmpty { members.append(JSONMember("BackendType", .string(backendType))) }
        if vni != nil || vtepMAC != nil {
            var data: [JSONMember] = []
            if let vni { data.append(JSONMember("VNI", .int(vni))) }
            if let vtepMAC { data.append(JSONMember("VtepMAC", .string(vtepMAC.description))) }
            if let sourceIP { data.append(JSONMember("SourceIP", .string(sourceIP.description))) }
            members.append(JSONMember("BackendData", .object(data)))
        }
        if ipv6VNI != nil || ipv6VtepMAC != nil {
            var data: [JSONMember] = []
            if let ipv6VNI { data.append(JSONMember("VNI", .int(ipv6VNI))) }
            if let ipv6VtepMAC { data.append(JSONMember("VtepMAC", .string(ipv6VtepMAC.description))) }
            members.append(JSONMember("BackendV6Data", .object(data)))
        }
        return JSONValue.object(members).serialized
    }

    /// Whether `other` names the same node: the same PublicIP or, for IPv6-only leases (PublicIP
    /// 0.0.0.0), the same PublicIPv6.
    public func sameNode(as other: LeaseAttributes) -> Bool {
        publicIP == other.publicIP && (publicIP.value != 0 || publicIPv6 == other.publicIPv6)
    }

    public var description: String {
        "\(publicIP)" + (publicIPv6.map { " \($0)" } ?? "") + (backendType.map { " \($0)" } ?? "") + (vni.map { " vni \($0)" } ?? "")
            + (vtepMAC.map { " vtep \($0)" } ?? "") + (sourceIP.map { " sends from \($0)" } ?? "")
            + (ipv6VtepMAC.map { " vtep6 \($0)" } ?? "")
    }
}

/// One subnet lease as read from etcd.
public struct Lease: Sendable, Equatable, CustomStringConvertible {
    /// The IPv4 subnet; 0.0.0.0/0 in an IPv6-only network (the key's "0.0.0.0-0").
    public var subnet: IPv4Subnet
    /// The IPv6 subnet of a dual-stack or IPv6-only lease (the key's part after '&').
    public var ipv6Subnet: IPv6Subnet?
    public var attributes: LeaseAttributes
    /// A key without TTL: an administrator's permanent reservation. Kept TTL-less when reused.
    public var isReservation: Bool
    /// Remaining time to live when read, when the API reports it (v2 does; v3 only for our own).
    public var ttl: Duration?
    /// etcd v3 mod_revision or v2 modifiedIndex of the key.
    public var revision: Int64

    public init(subnet: IPv4Subnet, ipv6Subnet: IPv6Subnet? = nil, attributes: LeaseAttributes, isReservation: Bool = false,
                ttl: Duration? = nil, revision: Int64 = 0) {
        self.subnet = subnet
        self.ipv6Subnet = ipv6Subnet
        self.attributes = attributes
        self.isReservation = isReservation
        self.ttl = ttl
        self.revision = revision
    }

    /// The key flannel writes for this lease: "10.5.52.0-24", "10.5.52.0-24&fd00:0:0:34::-64".
    public var key: String { LeaseKey(subnet: subnet, ipv6Subnet: ipv6Subnet).description }

    /// The data-path view of the IPv4 half.
    public var peer: Peer {
        Peer(subnet: subnet, publicIP: attributes.publicIP, vtepMAC: attributes.vtepMAC, sourceIP: attributes.sourceIP)
    }

    /// The data-path view of the IPv6 half; nil when the lease names no IPv6 subnet or PublicIPv6.
    public var ipv6Peer: IPv6Peer? {
        guard let ipv6Subnet, let publicIPv6 = attributes.publicIPv6 else { return nil }
        return IPv6Peer(subnet: ipv6Subnet, publicIP: publicIPv6, vtepMAC: attributes.ipv6VtepMAC)
    }

    /// Same subnets and attributes (ignores revision and TTL, which change on every renewal).
    public func sameContent(as other: Lease) -> Bool {
        subnet == other.subnet && ipv6Subnet == other.ipv6Subnet && attributes == other.attributes
    }

    /// The subnets, e.g. "10.5.52.0/24", "10.5.52.0/24 + fd00:0:0:34::/64", "fd00:0:0:34::/64".
    public var subnetsDescription: String { LeaseKey(subnet: subnet, ipv6Subnet: ipv6Subnet).subnetsDescription }

    public var description: String { "\(subnetsDescription) → \(attributes)" + (isReservation ? " (reservation)" : "") }
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
    /// An IPv4-only lease in an IPv6-only network: nothing to route.
    case ipv6SubnetMissing = "ipv6_subnet_missing"
    case ipv6SubnetOutsideNetwork = "ipv6_subnet_outside_network"
    case ipv6SubnetWrongLength = "ipv6_subnet_wrong_length"
    case missingPublicIPv6 = "missing_public_ipv6"
    case badPublicIPv6 = "bad_public_ipv6"
    /// The IPv6 half names a subnet an earlier lease holds (two nodes raced for it); the IPv4 half
    /// still counts.
    case ipv6SubnetTaken = "ipv6_subnet_taken"

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
        flannelSubnets(fromKey: key)?.ipv4
    }

    /// Both halves as flannel's ParseSubnetKey reads them (the IPv6 half's host bits cleared: only
    /// its overlap with other subnets matters here). nil when flannel reads no subnet at all,
    /// including an IPv6 half it cannot parse (it then drops the whole key).
    public static func flannelSubnets(fromKey key: String) -> (ipv4: IPv4Subnet, ipv6: IPv6Subnet?)? {
        if let canonical = LeaseKey(key) { return (canonical.subnet, canonical.ipv6Subnet) }
        guard key.utf8.count <= 256, let match = key.firstMatch(of: flannelKeyPattern) else { return nil }
        // net.ParseIP(...).To4() and strconv.ParseUint(prefix, 10, 5): at most /31.
        guard let address = IPv4Address(match.output.1), let prefix = Int(match.output.2), prefix <= 31 else { return nil }
        let ipv4 = IPv4Subnet(containing: address, prefixLength: prefix)
        guard let v6Text = match.output.3, let v6PrefixText = match.output.4 else { return (ipv4, nil) }
        // net.ParseIP(...).To16() and strconv.ParseUint(prefix, 10, 7): at most /127.
        guard let v6 = IPv6Address(v6Text), let v6Prefix = Int(v6PrefixText), v6Prefix <= 127 else { return nil }
        return (ipv4, IPv6Subnet(containing: v6, prefixLength: v6Prefix))
    }

    /// flannel's subnetRegex, with \d spelled [0-9] (Go's \d is ASCII only).
    nonisolated(unsafe) static let flannelKeyPattern = #/([0-9]+\.[0-9]+.[0-9]+.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?$/#

    /// Full validation for a peer lease under `config`.
    public static func decode(key: String, value: [UInt8], isReservation: Bool, ttl: Duration?, revision: Int64,
                              config: NetworkConfig) -> Result<Lease, LeaseRejected> {
        func reject(_ r: LeaseRejection, _ detail: String) -> Result<Lease, LeaseRejected> {
            .failure(LeaseRejected(key: key, reason: r, detail: detail))
        }
        guard let parsedKey = LeaseKey(key) else {
            if let alias = flannelSubnet(fromKey: key) {
                return reject(.keyNotCanonical, "flannel nodes read this key as \(alias), but no node writes it so (\(alias.leaseKey)): "
                              + "an alias, ignored so that it can neither shadow nor remove the lease of \(alias)")
            }
            return reject(.keyNotASubnet, "key is not <address>-<prefix>[&<ipv6 address>-<prefix>]")
        }
        let subnet = parsedKey.subnet
        if config.enableIPv4 {
            guard config.network.contains(subnet.address) else {
                return reject(.subnetOutsideNetwork, "\(subnet) is outside Network \(config.network)")
            }
            guard subnet.prefixLength == config.subnetLen else {
                return reject(.subnetWrongLength, "/\(subnet.prefixLength) but the config's SubnetLen is \(config.subnetLen)")
            }
        }
        // The IPv6 half counts only where this network runs IPv6, as in flannel's vxlan backend.
        let ipv6 = config.ipv6.flatMap { _ in parsedKey.ipv6Subnet }
        if let v6Config = config.ipv6 {
            if let v6 = ipv6 {
                guard v6Config.network.contains(v6.address) else {
                    return reject(.ipv6SubnetOutsideNetwork, "\(v6) is outside IPv6Network \(v6Config.network)")
                }
                guard v6.prefixLength == v6Config.subnetLen else {
                    return reject(.ipv6SubnetWrongLength, "/\(v6.prefixLength) but the config's IPv6SubnetLen is \(v6Config.subnetLen)")
                }
            } else if !config.enableIPv4 {
                return reject(.ipv6SubnetMissing, "an IPv4-only lease in an IPv6-only network: it names no IPv6 subnet to route")
            }
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
        if config.enableIPv4 {
            guard isNodeAddress(attributes.publicIP) else {
                return reject(.badPublicIP, "PublicIP \(attributes.publicIP) cannot be a node address")
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
        }
        if let v6Config = config.ipv6, ipv6 != nil {
            guard let address = attributes.publicIPv6 else {
                return reject(.missingPublicIPv6, "the lease names an IPv6 subnet but no PublicIPv6")
            }
            guard isNodeAddress(address) else { return reject(.badPublicIPv6, "PublicIPv6 \(address) cannot be a node address") }
            guard !v6Config.network.contains(address) else {
                return reject(.publicIPInNetwork, "PublicIPv6 \(address) lies inside the pod IPv6Network \(v6Config.network): pods are never peers")
            }
            if config.backend.type == "vxlan" {
                guard let mac = attributes.ipv6VtepMAC else {
                    return reject(.badBackendData, "vxlan lease with an IPv6 subnet but without BackendV6Data.VtepMAC")
                }
                guard !mac.isZero, !mac.isMulticast else { return reject(.badVtepMAC, "BackendV6Data.VtepMAC \(mac) is not a unicast address") }
            }
        }
        return .success(Lease(subnet: subnet, ipv6Subnet: parsedKey.ipv6Subnet, attributes: attributes, isReservation: isReservation,
                              ttl: ttl, revision: revision))
    }

    /// Parses a lease value's JSON (Go's case-insensitive keys) without looking at the network config.
    /// PublicIP may be 0.0.0.0 here (IPv6-only leases); `decode` checks it where IPv4 is used.
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
        guard ip.value == 0 || isNodeAddress(ip) else { return reject(.badPublicIP, "PublicIP \(ip) cannot be a node address") }

        // flannel's *ip.IP6: null (or absent) is none; anything else must parse, or Go's decoder
        // refuses the whole value.
        var ipv6: IPv6Address?
        if let v = doc.member(caseInsensitive: "PublicIPv6"), !v.isNull {
            guard let text = v.stringValue else { return reject(.badPublicIPv6, "PublicIPv6 is a \(v.typeName)") }
            guard let address = IPv6Address(text), !address.isIPv4Mapped else {
                return reject(.badPublicIPv6, "PublicIPv6 \"\(text.prefix(50))\" is not an IPv6 address")
            }
            ipv6 = address
        }

        var backendType: String?
        if let t = doc.member(caseInsensitive: "BackendType"), !t.isNull {
            guard let s = t.stringValue else { return reject(.badBackendType, "BackendType is a \(t.typeName)") }
            backendType = s.isEmpty ? nil : s
        }
        var sourceIP: IPv4Address?
        let v4Data: (vni: UInt32?, mac: MACAddress?)
        switch parseBackendData(doc.member(caseInsensitive: "BackendData"), field: "BackendData") {
        case .success(let d): v4Data = d
        case .failure(let e): return .failure(e)
        }
        if let data = doc.member(caseInsensitive: "BackendData"), let source = data.member(caseInsensitive: "SourceIP"), !source.isNull {
            guard let text = source.stringValue, let address = IPv4Address(text) else {
                return reject(.badPublicIP, "BackendData.SourceIP \(source.serialized.prefix(40)) is not an IPv4 address")
            }
            guard isNodeAddress(address) else {
                return reject(.badPublicIP, "BackendData.SourceIP \(address) cannot be a node address")
            }
            sourceIP = address
        }
        let v6Data: (vni: UInt32?, mac: MACAddress?)
        switch parseBackendData(doc.member(caseInsensitive: "BackendV6Data"), field: "BackendV6Data") {
        case .success(let d): v6Data = d
        case .failure(let e): return .failure(e)
        }
        return .success(LeaseAttributes(publicIP: ip, backendType: backendType, vni: v4Data.vni, vtepMAC: v4Data.mac, sourceIP: sourceIP,
                                        publicIPv6: ipv6, ipv6VNI: v6Data.vni, ipv6VtepMAC: v6Data.mac))
    }

    /// `BackendData` / `BackendV6Data`: VNI and VtepMAC, both optional.
    private static func parseBackendData(_ value: JSONValue?, field: String)
        -> Result<(vni: UInt32?, mac: MACAddress?), LeaseRejected> {
        func reject(_ r: LeaseRejection, _ detail: String) -> Result<(vni: UInt32?, mac: MACAddress?), LeaseRejected> {
            .failure(LeaseRejected(key: "", reason: r, detail: detail))
        }
        guard let data = value, !data.isNull else { return .success((nil, nil)) }
        guard data.objectMembers != nil else { return reject(.badBackendData, "\(field) is a \(data.typeName)") }
        var vni: UInt32?
        var mac: MACAddress?
        if let v = data.member(caseInsensitive: "VNI"), !v.isNull {
            guard let n = v.int64Value, (0...0xFF_FFFF).contains(n) else {
                return reject(.badBackendData, "\(field).VNI \(v.serialized.prefix(40)) is not an integer in 0...16777215")
            }
            vni = UInt32(n)
        }
        if let m = data.member(caseInsensitive: "VtepMAC"), !m.isNull {
            guard let text = m.stringValue else { return reject(.badVtepMAC, "\(field).VtepMAC is a \(m.typeName)") }
            guard text.utf8.count == 17, let parsed = MACAddress(text) else {
                return reject(.badVtepMAC, "\(field).VtepMAC \"\(text.prefix(40))\" is not a MAC address")
            }
            mac = parsed
        }
        return .success((vni, mac))
    }

    /// Whether `address` can be a node's: not 0.0.0.0, loopback, multicast, reserved or broadcast.
    static func isNodeAddress(_ address: IPv4Address) -> Bool {
        let first = address.value >> 24
        return address.value != 0 && first != 127 && first < 224
    }

    /// Whether `address` can be a node's IPv6 underlay address: not ::, ::1, multicast or IPv4-mapped.
    static func isNodeAddress(_ address: IPv6Address) -> Bool {
        address != .unspecified && !address.isLoopback && !address.isMulticast && !address.isIPv4Mapped
    }
}

/// A lease key exactly as flannel writes it (`MakeSubnetKey`): "10.5.52.0-24" for an IPv4 lease,
/// "10.12.13.0-24&fd00:12:13::-56" for a dual-stack one, "0.0.0.0-0&fd00:12:13::-56" for an
/// IPv6-only one. Parsed by hand (it runs for every key of a listing), and only in that canonical
/// form: no leading zeros, host bits clear, the IPv6 half in Go's text form, IPv4 prefixes up to /31
/// and IPv6 up to /127 (flannel's ParseUint bit sizes).
public struct LeaseKey: Hashable, Sendable, CustomStringConvertible {
    public var subnet: IPv4Subnet
    public var ipv6Subnet: IPv6Subnet?

    public init(subnet: IPv4Subnet, ipv6Subnet: IPv6Subnet?) {
        self.subnet = subnet
        self.ipv6Subnet = ipv6Subnet
    }

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

    /// The subnets for people: "10.5.52.0/24", "10.5.52.0/24 + fd00:0:0:34::/64", and in an
    /// IPv6-only network (IPv4 half 0.0.0.0/0) "fd00:0:0:34::/64".
    public var subnetsDescription: String {
        guard let ipv6Subnet else { return subnet.description }
        return subnet.prefixLength == 0 ? ipv6Subnet.description : "\(subnet) + \(ipv6Subnet)"
    }
}
