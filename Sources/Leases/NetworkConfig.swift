// The network configuration flannel stores at `<prefix>/config`, parsed with flannel's rules
// (pkg/subnet/config.go): keys match case-insensitively as Go's decoder does, SubnetLen defaults to
// 24 for networks of /22 or larger and to prefix+2 otherwise and, when given, must be at least
// prefix+2 (four subnets, the first never handed out) and at most 30, SubnetMin skips the first
// subnet, SubnetMax is the last one, both must be inside the network and on a SubnetLen boundary,
// and no Backend at all means "udp". A bad config names the field and the reason; the daemon waits
// and re-reads (as flannel does) rather than crashing.
//
// The address families (pkg/subnet/config.go, CheckNetworkConfig at flannel's main branch):
// - EnableIPv4 defaults to true, EnableIPv6 to false; both false is refused (flanneld exits with
//   "none defined stack").
// - IPv6 (EnableIPv6): IPv6Network is required; IPv6SubnetLen defaults to 64 for networks of /62 or
//   larger and to prefix+2 otherwise and, when given, must be at least prefix+2 and at most 126;
//   IPv6SubnetMin skips the first subnet, IPv6SubnetMax is the last one, both inside the network and
//   on an IPv6SubnetLen boundary. IPv6 fields are parsed even when EnableIPv6 is false (Go's decoder
//   fails the whole document on a malformed one) but only checked when it is true.
// - IPv6-only (EnableIPv4 false): flannel leaves the IPv4 fields at Go's zero values, Network
//   0.0.0.0/0 and SubnetLen 0, and so writes lease keys whose IPv4 half is "0.0.0.0-0"
//   (`0.0.0.0-0&fd00:0:0:1::-64`). The config here holds the same values, so that keys and
//   `allows` agree with flannel; `enableIPv4` says that they mean nothing.
//
// The vxlan fields as flannel's vxlan backend decodes them (pkg/backend/vxlan/vxlan.go):
// - VNI: preset to 1, then overwritten by the JSON, so an explicit `"VNI": 0` means VNI 0. Capped
//   at 65535 here: flannel up to 0.23 (v0.17.0 included) decodes a lease's VNI as a 16-bit number
//   and cannot read a lease carrying a larger one, which would split a mixed cluster.
// - MTU: the *underlay* MTU (preset to the interface's); the vxlan device and FLANNEL_MTU get
//   MTU − 50.
// - GBP: refused. flanneld-xdp does not carry VXLAN group policy: a GBP device would mark and
//   expect marked packets that our data path neither writes nor accepts.

import NetTypes
import RuntimeSupport

/// Backend options from the config's `Backend` object.
public struct BackendConfig: Sendable, Equatable {
    /// "vxlan", "udp", "host-gw", or any other string a config names (the daemon decides what it runs).
    public var type: String
    /// vxlan VNI (default 1; an explicit 0 is 0, as in flannel).
    public var vni: UInt32
    /// UDP port: vxlan default 8472 (the Linux kernel's), udp default 8285; 0 for host-gw.
    public var port: UInt16
    public var directRouting: Bool
    /// vxlan `MTU`: the underlay MTU, as flannel reads it (the overlay gets it − 50); 0 when the
    /// config does not say, and the interface's MTU is used.
    public var mtu: Int
    /// Always false in a parsed config: `"GBP": true` is refused (see the file's note).
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

/// The IPv6 pod network of a dual-stack or IPv6-only config, with flannel's defaults filled in.
public struct IPv6NetworkConfig: Sendable, Equatable {
    public var network: IPv6Subnet
    public var subnetLen: Int
    /// First and last subnet addresses that may be handed out.
    public var subnetMin: IPv6Address
    public var subnetMax: IPv6Address

    public init(network: IPv6Subnet, subnetLen: Int, subnetMin: IPv6Address, subnetMax: IPv6Address) {
        self.network = network
        self.subnetLen = subnetLen
        self.subnetMin = subnetMin
        self.subnetMax = subnetMax
    }

    /// True if `subnet` is one flannel could hand out: inside the network, of IPv6SubnetLen, between
    /// IPv6SubnetMin and IPv6SubnetMax (flannel's isIPv6SubnetConfigCompat).
    public func allows(_ subnet: IPv6Subnet) -> Bool {
        subnet.prefixLength == subnetLen && network.contains(subnet)
            && subnet.address >= subnetMin && subnet.address <= subnetMax
    }

    /// Every subnet between IPv6SubnetMin and IPv6SubnetMax, in order (lazy: a /48 has 65536 /64s).
    public var candidateSubnets: some Sequence<IPv6Subnet> {
        let step = UInt128(1) << UInt128(128 - subnetLen)
        let last = subnetMax.value, len = subnetLen
        return sequence(first: subnetMin.value) { v in
            let (next, overflow) = v.addingReportingOverflow(step)
            return overflow || next > last ? nil : next
        }.lazy.map { IPv6Subnet(containing: IPv6Address($0), prefixLength: len) }
    }
}

/// A validated network configuration with flannel's defaults filled in.
public struct NetworkConfig: Sendable, Equatable {
    /// The IPv4 pod network; 0.0.0.0/0 with SubnetLen 0 when `enableIPv4` is false (see the file's note).
    public var network: IPv4Subnet
    public var subnetLen: Int
    /// First and last subnet addresses that may be handed out.
    public var subnetMin: IPv4Address
    public var subnetMax: IPv4Address
    public var backend: BackendConfig
    /// `EnableIPv4` (default true): false for an IPv6-only network.
    public var enableIPv4: Bool
    /// The IPv6 network when `EnableIPv6` is set; nil otherwise.
    public var ipv6: IPv6NetworkConfig?
    /// The document as read from etcd, for logs.
    public var rawJSON: String

    /// `EnableIPv6` was set (and `ipv6` holds the network).
    public var enableIPv6: Bool { ipv6 != nil }

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

        var enableIPv4 = true
        if let v4 = doc.member(caseInsensitive: "EnableIPv4"), !v4.isNull {
            guard let on = v4.boolValue else { throw ConfigError.wrongType("EnableIPv4", "a boolean", v4) }
            enableIPv4 = on
        }
        var enableIPv6 = false
        if let v6 = doc.member(caseInsensitive: "EnableIPv6"), !v6.isNull {
            guard let on = v6.boolValue else { throw ConfigError.wrongType("EnableIPv6", "a boolean", v6) }
            enableIPv6 = on
        }
        guard enableIPv4 || enableIPv6 else {
            throw ConfigError(field: "EnableIPv4", reason: "false while EnableIPv6 is false too: no address family is left "
                + "(flanneld stops with \"none defined stack\"); enable at least one")
        }
        let ipv6Fields = try IPv6Fields(doc)
        let ipv6 = enableIPv6 ? try ipv6Fields.validated() : nil
        let backend = try parseBackend(doc.member(caseInsensitive: "Backend"))
        guard enableIPv4 else {
            return NetworkConfig(network: IPv4Subnet(containing: IPv4Address(0), prefixLength: 0), subnetLen: 0,
                                 subnetMin: IPv4Address(0), subnetMax: IPv4Address(0), backend: backend,
                                 enableIPv4: false, ipv6: ipv6, rawJSON: json)
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
        subnetLen = try subnetLength(subnetLen, network: network, networkField: "Network", lengthField: "SubnetLen",
                                     defaultLength: 24, defaultUpTo: 22)
        let subnetSize = UInt32(1) << UInt32(32 - subnetLen)
        let (subnetMin, subnetMax) = try bounds(
            min: try optionalAddress(doc, "SubnetMin"), max: try optionalAddress(doc, "SubnetMax"), network: network, subnetLen: subnetLen,
            defaultMin: IPv4Address(network.address.value &+ subnetSize), defaultMax: IPv4Address(network.last.value &- subnetSize &+ 1),
            fields: ("Network", "SubnetMin", "SubnetMax"), what: "subnet")

        return NetworkConfig(network: network, subnetLen: subnetLen, subnetMin: subnetMin, subnetMax: subnetMax,
                             backend: backend, enableIPv4: true, ipv6: ipv6, rawJSON: json)
    }

    public init(network: IPv4Subnet, subnetLen: Int, subnetMin: IPv4Address, subnetMax: IPv4Address,
                backend: BackendConfig, enableIPv4: Bool = true, ipv6: IPv6NetworkConfig? = nil, rawJSON: String = "") {
        self.network = network
        self.subnetLen = subnetLen
        self.subnetMin = subnetMin
        self.subnetMax = subnetMax
        self.backend = backend
        self.enableIPv4 = enableIPv4
        self.ipv6 = ipv6
        self.rawJSON = rawJSON
    }

    /// "10.5.0.0/16", "10.5.0.0/16 and fd00:10::/48", "fd00:10::/48 (IPv6 only)", for logs.
    public var networksDescription: String {
        switch (enableIPv4, ipv6) {
        case (true, nil): "\(network) (/\(subnetLen) subnets)"
        case (true, let v6?): "\(network) (/\(subnetLen) subnets) and \(v6.network) (/\(v6.subnetLen) subnets)"
        case (false, let v6?): "\(v6.network) (/\(v6.subnetLen) subnets, IPv6 only)"
        case (false, nil): "no network"
        }
    }

    /// What this build does not do with the config as written, for the log and `status`.
    public var warnings: [String] { [] }

    /// True if `subnet` is one flannel could hand out under this config: inside the network, of
    /// SubnetLen, between SubnetMin and SubnetMax (flannel's isSubnetConfigCompat). For an IPv6-only
    /// config that is exactly 0.0.0.0/0, the IPv4 half flannel writes in its keys.
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

    /// The smallest Backend.MTU: IPv4's minimum MTU (68) plus the 50 bytes of VXLAN.
    static let minimumUnderlayMTU: Int64 = 68 + 50

    /// The IPv6 fields as written; Go's decoder reads them whatever EnableIPv6 says.
    private struct IPv6Fields {
        var network: IPv6Subnet?
        var subnetLen: Int?
        var subnetMin: IPv6Address?
        var subnetMax: IPv6Address?

        init(_ doc: JSONValue) throws(ConfigError) {
            if let v = doc.member(caseInsensitive: "IPv6Network"), !v.isNull {
                guard let text = v.stringValue else { throw ConfigError.wrongType("IPv6Network", "a CIDR string", v) }
                guard let n = NetworkConfig.parseLenientIPv6CIDR(text) else {
                    throw ConfigError(field: "IPv6Network", reason: "\"\(text.prefix(60))\" is not an IPv6 CIDR like \"fd00:10::/48\"")
                }
                network = n
            }
            if let v = doc.member(caseInsensitive: "IPv6SubnetLen"), !v.isNull {
                guard let n = v.int64Value else { throw ConfigError.wrongType("IPv6SubnetLen", "a non-negative integer", v) }
                guard n >= 0, n <= 128 else { throw ConfigError(field: "IPv6SubnetLen", reason: "\(n) is not an IPv6 prefix length") }
                subnetLen = Int(n)
            }
            subnetMin = try Self.address(doc, "IPv6SubnetMin")
            subnetMax = try Self.address(doc, "IPv6SubnetMax")
        }

        private static func address(_ doc: JSONValue, _ field: String) throws(ConfigError) -> IPv6Address? {
            guard let v = doc.member(caseInsensitive: field), !v.isNull else { return nil }
            guard let s = v.stringValue else { throw ConfigError.wrongType(field, "an IPv6 address string", v) }
            guard let a = IPv6Address(s), !a.isIPv4Mapped else {
                throw ConfigError(field: field, reason: "\"\(s.prefix(60))\" is not an IPv6 address")
            }
            // flannel treats the zero address as unset (ip.IsEmpty).
            return a == .unspecified ? nil : a
        }

        /// flannel's CheckNetworkConfig for EnableIPv6.
        func validated() throws(ConfigError) -> IPv6NetworkConfig {
            guard let network else {
                throw ConfigError(field: "IPv6Network", reason: "missing while EnableIPv6 is true: name the IPv6 pod network, "
                    + "e.g. \"IPv6Network\": \"fd00:10::/48\"")
            }
            let length = try NetworkConfig.subnetLength(subnetLen ?? 0, network: network, networkField: "IPv6Network",
                                                        lengthField: "IPv6SubnetLen", defaultLength: 64, defaultUpTo: 62)
            let size = UInt128(1) << UInt128(128 - length)
            let (first, last) = try NetworkConfig.bounds(
                min: subnetMin, max: subnetMax, network: network, subnetLen: length,
                defaultMin: IPv6Address(network.address.value &+ size), defaultMax: IPv6Address(network.last.value &- size &+ 1),
                fields: ("IPv6Network", "IPv6SubnetMin", "IPv6SubnetMax"), what: "IPv6 subnet")
            return IPv6NetworkConfig(network: network, subnetLen: length, subnetMin: first, subnetMax: last)
        }
    }

    /// flannel's SubnetLen rule for either family: given (> 0), at most the address width − 2 (room
    /// for a gateway and a bridge) and at least prefix + 2 (four subnets, the first never handed
    /// out); else `defaultLength` for networks up to /`defaultUpTo`, prefix + 2 for smaller ones, and
    /// a network needs at least four subnets of four addresses.
    static func subnetLength<S: IPSubnetType>(_ given: Int, network: S, networkField: String, lengthField: String,
                                              defaultLength: Int, defaultUpTo: Int) throws(ConfigError) -> Int {
        let bits = S.Address.family.addressLength * 8
        if given > 0 {
            guard given <= bits - 2 else {
                throw ConfigError(field: lengthField, reason: "\(given) is longer than /\(bits - 2): each host needs room for a gateway and a bridge")
            }
            guard given >= network.prefixLength + 2 else {
                throw ConfigError(field: lengthField, reason: "/\(given) leaves \(networkField) \(network) fewer than four subnets "
                    + "(the first is never handed out): give at least /\(network.prefixLength + 2), as flannel requires")
            }
            return given
        }
        guard network.prefixLength <= bits - 4 else {
            throw ConfigError(field: networkField, reason: "/\(network.prefixLength) is too small: the smallest useful "
                + (S.Address.family == .ipv4 ? "" : "IPv6 ") + "network is /\(bits - 4)")
        }
        return network.prefixLength <= defaultUpTo ? defaultLength : network.prefixLength + 2
    }

    /// SubnetMin/SubnetMax (or the IPv6 ones) for either family: the defaults when not given, else
    /// inside the network and on a subnet boundary; the first not above the last.
    static func bounds<S: IPSubnetType>(min: S.Address?, max: S.Address?, network: S, subnetLen: Int,
                                        defaultMin: S.Address, defaultMax: S.Address, fields: (network: String, min: String, max: String),
                                        what: String) throws(ConfigError) -> (S.Address, S.Address) {
        func checked(_ value: S.Address?, _ field: String, _ fallback: S.Address) throws(ConfigError) -> S.Address {
            guard let v = value else { return fallback }
            guard network.contains(v) else { throw ConfigError(field: field, reason: "\(v) is not inside \(fields.network) \(network)") }
            guard S(address: v, prefixLength: subnetLen) != nil else {
                throw ConfigError(field: field, reason: "\(v) is not on a /\(subnetLen) boundary")
            }
            return v
        }
        let first = try checked(min, fields.min, defaultMin), last = try checked(max, fields.max, defaultMax)
        guard first <= last else {
            throw ConfigError(field: fields.min, reason: "\(first) is above \(fields.max) \(last): no \(what) can be handed out")
        }
        return (first, last)
    }

    /// Go's net.ParseCIDR for IPv6 text: host bits are masked off, as flannel keeps the network.
    static func parseLenientIPv6CIDR(_ text: String) -> IPv6Subnet? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv6Address(parts[0]), !a.isIPv4Mapped, (1...3).contains(parts[1].count),
              parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(parts[1]), p <= 128 else { return nil }
        return IPv6Subnet(containing: a, prefixLength: p)
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
            // flannel presets VNI 1 and lets the JSON overwrite it: an explicit 0 stays 0.
            if let vni = value.member(caseInsensitive: "VNI"), !vni.isNull {
                guard let n = vni.int64Value else { throw ConfigError.wrongType("Backend.VNI", "an integer", vni) }
                guard (0...0xFF_FFFF).contains(n) else {
                    throw ConfigError(field: "Backend.VNI", reason: "\(n) is outside 0...16777215 (VXLAN's 24 bits)")
                }
                guard n <= Int64(UInt16.max) else {
                    throw ConfigError(field: "Backend.VNI", reason: "\(n) is above 65535: flannel up to 0.23 (v0.17.0 included) "
                        + "reads a lease's VNI as a 16-bit number and cannot decode leases that carry it; choose a VNI from 0 to 65535")
                }
                backend.vni = UInt32(n)
            }
            if let port = try int("Port", 0...65535), port != 0 { backend.port = UInt16(port) }
            if let mtu = value.member(caseInsensitive: "MTU"), !mtu.isNull {
                guard let n = mtu.int64Value else { throw ConfigError.wrongType("Backend.MTU", "an integer", mtu) }
                guard (Self.minimumUnderlayMTU...65535).contains(n) else {
                    throw ConfigError(field: "Backend.MTU", reason: "\(n) is not a usable underlay MTU: flannel's MTU is the "
                        + "interface's, the overlay gets MTU - 50, so give \(Self.minimumUnderlayMTU) to 65535, or leave it out to use "
                        + "the interface's MTU")
                }
                backend.mtu = Int(n)
            }
            backend.directRouting = try bool("DirectRouting")
            if try bool("GBP") {
                throw ConfigError(field: "Backend.GBP", reason: "true is not supported: flanneld-xdp does not carry VXLAN group "
                    + "policy (GBP), so a GBP network's packets would be dropped; remove GBP or set it to false")
            }
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
