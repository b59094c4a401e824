// subnet.env: the file flannel's CNI plugin and mk-docker-opts.sh read. Written atomically (temp file
// in the same directory, fsync, rename) with mode 0644 and flannel's variable names and order, so a
// reader never sees half a file.
//
// Dual-stack (flannel's WriteSubnetFile): FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET (the "::1"
// address of the node's IPv6 subnet, "fd00:0:0:1::1/64") follow the IPv4 lines; an IPv6-only node
// writes no FLANNEL_NETWORK/FLANNEL_SUBNET at all. FLANNEL_MTU stays the IPv4 overlay's (underlay
// − 50) in every case, as flannel writes it.

import Glibc
import NetTypes

public struct SubnetEnv: Sendable, Equatable {
    /// The IPv4 network and the node's subnet (written as its .1 address, "10.5.72.1/24", as flannel
    /// does); 0.0.0.0/0 and unwritten when `enableIPv4` is false (an IPv6-only node).
    public var network: IPv4Subnet
    public var subnet: IPv4Subnet
    public var enableIPv4: Bool
    /// FLANNEL_IPV6_NETWORK and the node's IPv6 subnet (FLANNEL_IPV6_SUBNET, its ::1 address).
    public var ipv6Network: IPv6Subnet?
    public var ipv6Subnet: IPv6Subnet?
    public var mtu: Int
    public var ipMasq: Bool

    public init(network: IPv4Subnet, subnet: IPv4Subnet, mtu: Int, ipMasq: Bool,
                ipv6Network: IPv6Subnet? = nil, ipv6Subnet: IPv6Subnet? = nil, enableIPv4: Bool = true) {
        self.network = network
        self.subnet = subnet
        self.mtu = mtu
        self.ipMasq = ipMasq
        self.ipv6Network = ipv6Network
        self.ipv6Subnet = ipv6Subnet
        self.enableIPv4 = enableIPv4
    }

    /// The file for `lease` under `config`: the families the config runs.
    public init(config: NetworkConfig, lease: Lease, mtu: Int, ipMasq: Bool) {
        self.init(network: config.network, subnet: lease.subnet, mtu: mtu, ipMasq: ipMasq,
                  ipv6Network: config.ipv6?.network, ipv6Subnet: config.ipv6 == nil ? nil : lease.ipv6Subnet,
                  enableIPv4: config.enableIPv4)
    }

    /// The file's text, in flannel's order.
    public var contents: String {
        var text = ""
        if enableIPv4 { text += "FLANNEL_NETWORK=\(network)\nFLANNEL_SUBNET=\(subnet.host(1))/\(subnet.prefixLength)\n" }
        if let ipv6Network, let ipv6Subnet {
            text += "FLANNEL_IPV6_NETWORK=\(ipv6Network)\nFLANNEL_IPV6_SUBNET=\(ipv6Subnet.host(1))/\(ipv6Subnet.prefixLength)\n"
        }
        return text + "FLANNEL_MTU=\(mtu)\nFLANNEL_IPMASQ=\(ipMasq)\n"
    }

    /// Writes `path` atomically with mode 0644 (readers: CNI, docker), creating the parent directory
    /// (0755) if missing.
    public func write(to path: String) throws(SubnetEnvError) {
        do {
            try AtomicFile.write(Array(contents.utf8), to: path, mode: 0o644)
        } catch {
            throw SubnetEnvError(operation: error.operation, path: error.path, errno: error.errno)
        }
    }

    /// Reads a previous subnet.env. Returns nil if the file does not exist; throws if it exists but
    /// cannot be read or its FLANNEL_SUBNET/FLANNEL_NETWORK is malformed.
    public static func read(from path: String) throws(SubnetEnvError) -> SubnetEnv? {
        let file: (bytes: [UInt8], truncated: Bool)?
        do {
            file = try AtomicFile.read(from: path, limit: 64 * 1024)
        } catch {
            throw SubnetEnvError(operation: error.operation, path: error.path, errno: error.errno)
        }
        guard let data = file?.bytes else { return nil }
        return try parse(String(decoding: data, as: UTF8.self), path: path)
    }

    /// Parses subnet.env text (unknown variables are ignored, as shell readers do).
    public static func parse(_ text: String, path: String = "subnet.env") throws(SubnetEnvError) -> SubnetEnv {
        var vars: [String: String] = [:]
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let trimmed = line.drop(while: { $0 == " " || $0 == "\t" })
            guard !trimmed.hasPrefix("#"), let eq = trimmed.firstIndex(of: "=") else { continue }
            var value = String(trimmed[trimmed.index(after: eq)...])
            if value.count >= 2, value.first == "\"", value.last == "\"" { value = String(value.dropFirst().dropLast()) }
            vars[String(trimmed[..<eq])] = value
        }
        func bad(_ name: String, _ why: String) -> SubnetEnvError {
            SubnetEnvError(operation: "parse", path: path, errno: 0, detail: "\(name): \(why)")
        }
        // flannel reads both with net.ParseCIDR and keeps the network.
        func v6(_ name: String) throws(SubnetEnvError) -> IPv6Subnet? {
            guard let text = vars[name] else { return nil }
            let p = text.split(separator: "/")
            guard p.count == 2, let a = IPv6Address(p[0]), !a.isIPv4Mapped, let l = Int(p[1]), (0...128).contains(l) else {
                throw bad(name, "\"\(text.prefix(60))\" is not <IPv6 address>/<prefix>")
            }
            return IPv6Subnet(containing: a, prefixLength: l)
        }
        let ipv6Subnet = try v6("FLANNEL_IPV6_SUBNET")
        let ipv6Network = try v6("FLANNEL_IPV6_NETWORK") ?? ipv6Subnet
        let mtu = vars["FLANNEL_MTU"].flatMap { Int($0) } ?? 0
        let masq = vars["FLANNEL_IPMASQ"] == "true"
        guard let subnetText = vars["FLANNEL_SUBNET"] else {
            // An IPv6-only node's file.
            guard let ipv6Subnet else { throw bad("FLANNEL_SUBNET", "missing (and no FLANNEL_IPV6_SUBNET either)") }
            let none = IPv4Subnet(containing: IPv4Address(0), prefixLength: 0)
            return SubnetEnv(network: none, subnet: none, mtu: mtu, ipMasq: masq, ipv6Network: ipv6Network, ipv6Subnet: ipv6Subnet,
                             enableIPv4: false)
        }
        let parts = subnetText.split(separator: "/")
        guard parts.count == 2, let addr = IPv4Address(parts[0]), let len = Int(parts[1]), (0...32).contains(len) else {
            throw bad("FLANNEL_SUBNET", "\"\(subnetText)\" is not <address>/<prefix>")
        }
        let subnet = IPv4Subnet(containing: addr, prefixLength: len)
        var network = subnet
        if let n = vars["FLANNEL_NETWORK"] {
            let p = n.split(separator: "/")
            guard p.count == 2, let a = IPv4Address(p[0]), let l = Int(p[1]), (0...32).contains(l) else {
                throw bad("FLANNEL_NETWORK", "\"\(n)\" is not a CIDR")
            }
            network = IPv4Subnet(containing: a, prefixLength: l)
        }
        return SubnetEnv(network: network, subnet: subnet, mtu: mtu, ipMasq: masq, ipv6Network: ipv6Network, ipv6Subnet: ipv6Subnet)
    }
}

public struct SubnetEnvError: Error, Sendable, Equatable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var errno: Int32
    public var detail: String = ""

    public var description: String {
        var s = "subnet file \(path): \(operation) failed"
        if errno != 0 { s += ": \(String(cString: strerror(errno))) (errno \(errno))" }
        if !detail.isEmpty { s += ": \(detail)" }
        if operation != "parse" { s += "; check that the directory exists and is writable (--subnet-file)" }
        return s
    }
}
