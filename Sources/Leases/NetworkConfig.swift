// The network configuration flannel stores at `<prefix>/config`, parsed with flannel's rules
// (pkg/subnet/config.go): keys match case-insensitively as Go's decoder does, SubnetLen defaults to
// 24 for networks of /22 or larger and to prefix+2 otherwise, SubnetMin skips the first subnet,
// SubnetMax is the last one, both must be inside the network and on a SubnetLen boundary, and no
// Backend at all means "udp". A bad config names the field and the reason; the daemon waits and
// re-reads (as flannel does) rather than crashing.

import NetTypes

/// Backend options from the config's `Backend` object.
public struct BackendConfig: Sendable, Equatable {
    /// "vxlan", "udp", "host-gw", or any other string a config names (the daemon decides what it runs).
    public var type: String
    /// vxlan VNI (default 1).
    public var vni: UInt32
    /// UDP port: vxlan default 8472 (the Linux kernel's), udp default 8285; 0 for host-gw.
    public var port: UInt16
    public var directRouting: Bool
    /// 0 means "derive from the interface" (interface MTU − overhead).
    public var mtu: Int
    public var gbp: Bool
    public var learning: Bool

    public init(type: String, vni: UInt32 = 1, port: UInt16? = nil, directRouting: Bool = false,
                mtu: Int = 0, gbp: Bool = false, learning: Bool = false) {
        self.type = type
        self.vni = vni
        self.port = port ?? BackendConfig.defaultPort(for: type)
        self.directRouting = directRouting
        self.mtu = mtu
        self.gbp = gbp
        self.learning = learning
    }

    public static func defaultPort(for type: String) -> UInt16 {
        switch type {
        case "vxlan": 8472
        case "udp": 8285
        default: 0
        }
    }
}

/// A validated network configuration with flannel's defaults filled in.
public struct NetworkConfig: Sendable, Equatable {
    public var network: IPv4Subnet
    public var subnetLen: Int
    /// First and last subnet addresses that may be handed out.
    public var subnetMin: IPv4Address
    public var subnetMax: IPv4Address
    public var backend: BackendConfig
    /// `EnableIPv6` was set; flanneld-xdp serves IPv4 only and the daemon should say so.
    public var enableIPv6: Bool
    /// The document as read from etcd, for logs.
    public var rawJSON: String

    /// Parses and validates `<prefix>/config`.
    public static func parse(_ json: String) throws(ConfigError) -> NetworkConfig {
        guard json.utf8.count <= 1 << 20 else { throw ConfigError(field: "config", reason: "document larger than 1 MiB") }
        let doc: JSONValue
        do { doc = try JSONValue.parse(json) } catch {
            throw ConfigError(field: "config", reason: "\(error)")
        }
        guard doc.objectMembers != nil else {
            throw ConfigError(field: "config", reason: "must be a JSON object, got \(doc.typeName)")
        }

        if let v4 = doc.member(caseInsensitive: "EnableIPv4"), !v4.isNull {
            guard let on = v4.boolValue else { throw ConfigError.wrongType("EnableIPv4", "a boolean", v4) }
            guard on else { throw ConfigError(field: "EnableIPv4", reason: "false is not supported: flanneld-xdp serves IPv4 networks") }
        }
        var enableIPv6 = false
        if let v6 = doc.member(caseInsensitive: "EnableIPv6"), !v6.isNull {
            guard let on = v6.boolValue else { throw ConfigError.wrongType("EnableIPv6", "a boolean", v6) }
            enableIPv6 = on
        }

        guard let networkValue = doc.member(caseInsensitive: "Network"), !networkValue.isNull else {
            throw ConfigError(field: "Network", reason: "missing: the config must name an IPv4 network, e.g. \"10.5.0.0/16\"")
        }
        guard let networkText = networkValue.stringValue else { throw ConfigError.wrongType("Network", "a CIDR string", networkValue) }
        guard let network = parseLenientCIDR(networkText) else {
            throw ConfigError(field: "Network", reason: "\"\(networkText)\" is not an IPv4 CIDR like 10.5.0.0/16")
        }

        var subnetLen = 0
        if let v = doc.member(caseInsensitive: "SubnetLen"), !v.isNull {
            guard let n = v.int64Value else { throw ConfigError.wrongType("SubnetLen", "a non-negative integer", v) }
            guard n >= 0, n <= 32 else { throw ConfigError(field: "SubnetLen", reason: "\(n) is not a prefix length") }
            subnetLen = Int(n)
        }
        if subnetLen > 0 {
            guard subnetLen <= 30 else {
                throw ConfigError(field: "SubnetLen", reason: "\(subnetLen) is longer than /30: each host needs room for a gateway and a bridge")
            }
            guard subnetLen >= network.prefixLength + 1 else {
                throw ConfigError(field: "SubnetLen", reason: "/\(subnetLen) must be longer than the network's /\(network.prefixLength)")
            }
        } else {
            guard network.prefixLength <= 28 else {
                throw ConfigError(field: "Network", reason: "/\(network.prefixLength) is too small: the smallest useful network is /28")
            }
            subnetLen = network.prefixLength <= 22 ? 24 : network.prefixLength + 2
        }
        let subnetSize = UInt32(1) << UInt32(32 - subnetLen)
        let mask = IPv4Subnet.mask(subnetLen)

        var subnetMin = IPv4Address(network.address.value &+ subnetSize)
        if let v = try optionalAddress(doc, "SubnetMin") {
            guard network.contains(v) else { throw ConfigError(field: "SubnetMin", reason: "\(v) is not inside Network \(network)") }
            guard v.value & mask == v.value else { throw ConfigError(field: "SubnetMin", reason: "\(v) is not on a /\(subnetLen) boundary") }
            subnetMin = v
        }
        var subnetMax = IPv4Address(network.last.value &- subnetSize &+ 1)
        if let v = try optionalAddress(doc, "SubnetMax") {
            guard network.contains(v) else { throw ConfigError(field: "SubnetMax", reason: "\(v) is not inside Network \(network)") }
            guard v.value & mask == v.value else { throw ConfigError(field: "SubnetMax", reason: "\(v) is not on a /\(subnetLen) boundary") }
            subnetMax = v
        }
        guard subnetMin <= subnetMax else {
            throw ConfigError(field: "SubnetMin", reason: "\(subnetMin) is above SubnetMax \(subnetMax): no subnet can be handed out")
        }

        let backend = try parseBackend(doc.member(caseInsensitive: "Backend"))
        return NetworkConfig(network: network, subnetLen: subnetLen, subnetMin: subnetMin, subnetMax: subnetMax,
                             backend: backend, enableIPv6: enableIPv6, rawJSON: json)
    }

    public init(network: IPv4Subnet, subnetLen: Int, subnetMin: IPv4Address, subnetMax: IPv4Address,
                backend: BackendConfig, enableIPv6: Bool = false, rawJSON: String = "") {
        self.network = network
        self.subnetLen = subnetLen
        self.subnetMin = subnetMin
        self.subnetMax = subnetMax
        self.backend = backend
        self.enableIPv6 = enableIPv6
        self.rawJSON = rawJSON
    }

    /// True if `subnet` is one flannel could hand out under this config: inside the network, of
    /// SubnetLen, between SubnetMin and SubnetMax.
    public func allows(_ subnet: IPv4Subnet) -> Bool {
        subnet.prefixLength == subnetLen && network.contains(subnet)
            && subnet.address >= subnetMin && subnet.address <= subnetMax
    }

    /// Every subnet between SubnetMin and SubnetMax, in order (lazy: a /8 with /30s is 4 M entries).
    public var candidateSubnets: some Sequence<IPv4Subnet> {
        let step = UInt64(1) << UInt64(32 - subnetLen)
        let first = UInt64(subnetMin.value), last = UInt64(subnetMax.value), len = subnetLen
        return stride(from: first, through: last, by: Int(step)).lazy.map {
            IPv4Subnet(containing: IPv4Address(UInt32($0)), prefixLength: len)
        }
    }

    private static func parseLenientCIDR(_ text: String) -> IPv4Subnet? {
        // Go's net.ParseCIDR accepts host bits and flannel keeps the masked network.
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(parts[0]), !parts[1].isEmpty, parts[1].count <= 2,
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(parts[1]), p <= 32 else { return nil }
        return IPv4Subnet(containing: a, prefixLength: p)
    }

    private static func optionalAddress(_ doc: JSONValue, _ field: String) throws(ConfigError) -> IPv4Address? {
        guard let v = doc.member(caseInsensitive: field), !v.isNull else { return nil }
        guard let s = v.stringValue else { throw ConfigError.wrongType(field, "an IPv4 address string", v) }
        // flannel treats "0.0.0.0" (Go's zero value) as unset.
        if s.isEmpty || s == "0.0.0.0" { return nil }
        guard let a = IPv4Address(s) else { throw ConfigError(field: field, reason: "\"\(s)\" is not an IPv4 address") }
        return a
    }

    private static func parseBackend(_ value: JSONValue?) throws(ConfigError) -> BackendConfig {
        guard let value, !value.isNull else { return BackendConfig(type: "udp") }
        guard value.objectMembers != nil else { throw ConfigError.wrongType("Backend", "an object", value) }
        guard let typeValue = value.member(caseInsensitive: "Type"), !typeValue.isNull else {
            throw ConfigError(field: "Backend.Type", reason: "missing: name a backend such as \"vxlan\"")
        }
        guard let type = typeValue.stringValue else { throw ConfigError.wrongType("Backend.Type", "a string", typeValue) }
        guard !type.isEmpty else { throw ConfigError(field: "Backend.Type", reason: "empty: name a backend such as \"vxlan\"") }

        func int(_ name: String, _ range: ClosedRange<Int64>) throws(ConfigError) -> Int64? {
            guard let v = value.member(caseInsensitive: name), !v.isNull else { return nil }
            guard let n = v.int64Value else { throw ConfigError.wrongType("Backend.\(name)", "an integer", v) }
            guard range.contains(n) else {
                throw ConfigError(field: "Backend.\(name)", reason: "\(n) is outside \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        func bool(_ name: String) throws(ConfigError) -> Bool {
            guard let v = value.member(caseInsensitive: name), !v.isNull else { return false }
            guard let b = v.boolValue else { throw ConfigError.wrongType("Backend.\(name)", "a boolean", v) }
            return b
        }

        var backend = BackendConfig(type: type)
        switch type {
        case "vxlan":
            // VNI 0 is Go's zero value: flannel replaces it with the default 1.
            if let vni = try int("VNI", 0...0xFF_FFFF), vni != 0 { backend.vni = UInt32(vni) }
            if let port = try int("Port", 0...65535), port != 0 { backend.port = UInt16(port) }
            if let mtu = try int("MTU", 0...65535) { backend.mtu = Int(mtu) }
            backend.directRouting = try bool("DirectRouting")
            backend.gbp = try bool("GBP")
            backend.learning = try bool("Learning")
        case "udp":
            if let port = try int("Port", 0...65535), port != 0 { backend.port = UInt16(port) }
        default:
            backend.directRouting = try bool("DirectRouting")
        }
        return backend
    }
}

/// Why a config was refused: the field (as flannel names it) and the reason.
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var field: String
    public var reason: String

    public init(field: String, reason: String) {
        self.field = field
        self.reason = reason
    }

    static func wrongType(_ field: String, _ expected: String, _ got: JSONValue) -> ConfigError {
        ConfigError(field: field, reason: "must be \(expected), got \(got.typeName)")
    }

    public var description: String { "network config: \(field): \(reason)" }
}
