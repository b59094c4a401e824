// subnet.env: the file flannel's CNI plugin and mk-docker-opts.sh read. Written atomically (temp file
// in the same directory, fsync, rename) with mode 0644 and flannel's variable names and order, so a
// reader never sees half a file.

import Glibc
import NetTypes

public struct SubnetEnv: Sendable, Equatable {
    public var network: IPv4Subnet
    /// The node's subnet; written as its .1 address ("10.5.72.1/24"), as flannel does.
    public var subnet: IPv4Subnet
    public var mtu: Int
    public var ipMasq: Bool

    public init(network: IPv4Subnet, subnet: IPv4Subnet, mtu: Int, ipMasq: Bool) {
        self.network = network
        self.subnet = subnet
        self.mtu = mtu
        self.ipMasq = ipMasq
    }

    /// The file's text, in flannel's order.
    public var contents: String {
        "FLANNEL_NETWORK=\(network)\n"
            + "FLANNEL_SUBNET=\(subnet.host(1))/\(subnet.prefixLength)\n"
            + "FLANNEL_MTU=\(mtu)\n"
            + "FLANNEL_IPMASQ=\(ipMasq)\n"
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
        guard let subnetText = vars["FLANNEL_SUBNET"] else { throw bad("FLANNEL_SUBNET", "missing") }
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
        let mtu = vars["FLANNEL_MTU"].flatMap { Int($0) } ?? 0
        let masq = vars["FLANNEL_IPMASQ"] == "true"
        return SubnetEnv(network: network, subnet: subnet, mtu: mtu, ipMasq: masq)
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
