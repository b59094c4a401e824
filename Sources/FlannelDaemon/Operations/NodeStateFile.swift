// The daemon's state file: what `flanneld-xdp status` shows that the kernel cannot tell — which
// data path start-up chose and why, the lease and its expiry, the etcd connection. The pinned maps
// and the attached programs are read live from the kernel by `status` itself; this file only holds
// what exists in the daemon's memory.
//
// Where: next to the subnet file, `<dir of --subnet-file>/flanneld-xdp.state.json` (by default
// /run/flannel/flanneld-xdp.state.json), so that every node of a test lab, and every daemon given
// its own --subnet-file, has its own, and `status --subnet-file X` finds it the way CNI finds
// subnet.env. Written atomically (temp + rename, 0644) at start-up and every 5 s; left in
// place on exit (its pid then names a process that is gone, which `status` reports).
//
// Format: one flat JSON object of strings, integers and booleans, written and read here without
// Foundation (the daemon does not link it). Unknown keys are ignored when reading, so a newer
// daemon's file still reads with an older `status`.

import Glibc
import Leases

/// What the daemon knows about itself, as written to the state file.
public struct NodeState: Sendable, Equatable {
    public var version: String = FlannelDaemonVersion.string
    public var pid: Int32 = getpid()
    /// Unix seconds.
    public var startedAt: Int64 = 0
    public var updatedAt: Int64 = 0
    /// "bpf-xdp", "bpf-tc", "userspace", "host-gw".
    public var dataplane: String = ""
    /// Start-up's one-line summary, with the reason when it fell back ("BPF unavailable: …").
    public var dataplaneDetail: String = ""
    public var interface: String = ""
    public var interfaceIndex: Int = 0
    public var publicIP: String = ""
    public var network: String = ""
    public var subnet: String = ""
    public var backend: String = ""
    public var vni: Int = 0
    public var port: Int = 0
    public var mtu: Int = 0
    public var bpffs: String = ""
    public var ipMasq: Bool = false
    public var etcdEndpoints: String = ""
    public var etcdAPI: String = ""
    /// Why that API: "given by --etcd-api", or what --etcd-api auto found.
    public var etcdAPIDetail: String = ""
    /// --iptables-forward-rules.
    public var forwardRules: Bool = false
    /// --ip-masq without --ip-masq-fully-random-disable.
    public var ipMasqFullyRandom: Bool = true
    /// --ip-blackhole-route.
    public var blackholeRoute: Bool = false
    /// What the network config asks for that this build does not do (dual-stack), one per line.
    public var warnings: String = ""
    /// "connected" or "unreachable: <error>".
    public var etcdState: String = ""
    /// Unix seconds of the last successful request to etcd made for this file (0: none yet).
    public var etcdLastContact: Int64 = 0
    /// Unix seconds when the lease expires unless renewed; 0 for a reservation (no TTL).
    public var leaseExpiry: Int64 = 0
    public var peerCount: Int = 0
    /// The underlay network of --iface ("192.168.77.0/24"): strangers on it are worth a warning.
    public var underlaySubnet: String = ""
    /// /readyz's answer at the last write; nil in a file from a daemon that did not record it.
    public var ready: Bool? = nil
    /// Why not ready (/readyz's reasons), empty when ready.
    public var notReadyReason: String = ""

    public init() {}

    /// The state file's path for a given --subnet-file.
    public static func path(forSubnetFile subnetFile: String) -> String {
        guard let slash = subnetFile.lastIndex(of: "/") else { return "flanneld-xdp.state.json" }
        let dir = subnetFile[..<slash]
        return (dir.isEmpty ? "" : String(dir)) + "/flanneld-xdp.state.json"
    }

    /// Ordered fields: the JSON text and the reader share this list, so they cannot drift apart.
    var fields: [(String, FlatJSON.Value)] {
        [
            ("version", .string(version)), ("pid", .int(Int64(pid))),
            ("startedAt", .int(startedAt)), ("updatedAt", .int(updatedAt)),
            ("dataplane", .string(dataplane)), ("dataplaneDetail", .string(dataplaneDetail)),
            ("interface", .string(interface)), ("interfaceIndex", .int(Int64(interfaceIndex))),
            ("publicIP", .string(publicIP)), ("network", .string(network)), ("subnet", .string(subnet)),
            ("backend", .string(backend)), ("vni", .int(Int64(vni))), ("port", .int(Int64(port))),
            ("mtu", .int(Int64(mtu))), ("bpffs", .string(bpffs)), ("ipMasq", .bool(ipMasq)),
            ("etcdEndpoints", .string(etcdEndpoints)), ("etcdAPI", .string(etcdAPI)), ("etcdAPIDetail", .string(etcdAPIDetail)),
            ("forwardRules", .bool(forwardRules)), ("ipMasqFullyRandom", .bool(ipMasqFullyRandom)),
            ("blackholeRoute", .bool(blackholeRoute)), ("warnings", .string(warnings)),
            ("etcdState", .string(etcdState)), ("etcdLastContact", .int(etcdLastContact)),
            ("leaseExpiry", .int(leaseExpiry)), ("peerCount", .int(Int64(peerCount))),
            ("underlaySubnet", .string(underlaySubnet)),
            ("ready", ready.map(FlatJSON.Value.bool) ?? .null), ("notReadyReason", .string(notReadyReason)),
        ]
    }

    public var json: String { FlatJSON.write(fields) }

    public init(json text: String) throws(OperationsError) {
        let object = try FlatJSON.parse(text)
        func string(_ key: String) -> String { if case .string(let s)? = object[key] { s } else { "" } }
        func int(_ key: String) -> Int64 { if case .int(let i)? = object[key] { i } else { 0 } }
        version = string("version")
        pid = Int32(clamping: int("pid"))
        startedAt = int("startedAt")
        updatedAt = int("updatedAt")
        dataplane = string("dataplane")
        dataplaneDetail = string("dataplaneDetail")
        interface = string("interface")
        interfaceIndex = Int(int("interfaceIndex"))
        publicIP = string("publicIP")
        network = string("network")
        subnet = string("subnet")
        backend = string("backend")
        vni = Int(int("vni"))
        port = Int(int("port"))
        mtu = Int(int("mtu"))
        bpffs = string("bpffs")
        if case .bool(let b)? = object["ipMasq"] { ipMasq = b }
        etcdEndpoints = string("etcdEndpoints")
        etcdAPI = string("etcdAPI")
        etcdAPIDetail = string("etcdAPIDetail")
        if case .bool(let b)? = object["forwardRules"] { forwardRules = b }
        if case .bool(let b)? = object["ipMasqFullyRandom"] { ipMasqFullyRandom = b }
        if case .bool(let b)? = object["blackholeRoute"] { blackholeRoute = b }
        warnings = string("warnings")
        etcdState = string("etcdState")
        etcdLastContact = int("etcdLastContact")
        leaseExpiry = int("leaseExpiry")
        peerCount = Int(int("peerCount"))
        underlaySubnet = string("underlaySubnet")
        if case .bool(let b)? = object["ready"] { ready = b }
        notReadyReason = string("notReadyReason")
    }

    /// True while the process that wrote the file still runs (signal 0 probes without touching it).
    public var writerIsRunning: Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }

    public func write(to path: String) throws(OperationsError) {
        try FileIO.writeAtomically(path: path, contents: json + "\n", mode: 0o644)
    }

    /// nil when the file does not exist.
    public static func read(from path: String) throws(OperationsError) -> NodeState? {
        guard let text = try FileIO.read(path: path, limit: 64 * 1024) else { return nil }
        return try NodeState(json: text)
    }
}

/// Typed errors of the operations code: the operation, the input, errno where one applies, and what to do.
public struct OperationsError: Error, CustomStringConvertible, Sendable, Equatable {
    public var operation: String
    public var detail: String
    public var errno: Int32?
    public var hint: String

    public init(operation: String, detail: String, errno: Int32? = nil, hint: String) {
        self.operation = operation
        self.detail = detail
        self.errno = errno
        self.hint = hint
    }

    public var description: String {
        var text = "\(operation): \(detail)"
        if let errno { text += " (\(String(cString: strerror(errno))), errno \(errno))" }
        return text + "; " + hint
    }
}

/// A flat JSON object: string, integer and boolean values only (what the state file needs).
enum FlatJSON {
    enum Value: Equatable, Sendable {
        case string(String)
        case int(Int64)
        case bool(Bool)
        case null
    }

    static func write(_ fields: [(String, Value)], indent: Bool = true) -> String {
        let members = fields.map { key, value -> String in
            let text: String = switch value {
            case .string(let s): quote(s)
            case .int(let i): String(i)
            case .bool(let b): b ? "true" : "false"
            case .null: "null"
            }
            return (indent ? "  " : "") + quote(key) + (indent ? ": " : ":") + text
        }
        return indent ? "{\n" + members.joined(separator: ",\n") + "\n}" : "{" + members.joined(separator: ",") + "}"
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func parse(_ text: String) throws(OperationsError) -> [String: Value] {
        var parser = Parser(scalars: Array(text.unicodeScalars))
        return try parser.object()
    }

    struct Parser {
        var scalars: [Unicode.Scalar]
        var i = 0

        func fail(_ what: String) -> OperationsError {
            OperationsError(operation: "parse state file", detail: "\(what) at character \(i)",
                            hint: "the file is damaged: restart flanneld-xdp to rewrite it")
        }

        mutating func skipSpace() {
            while i < scalars.count, [" ", "\n", "\r", "\t"].contains(scalars[i]) { i += 1 }
        }

        mutating func expect(_ c: Unicode.Scalar) throws(OperationsError) {
            skipSpace()
            guard i < scalars.count, scalars[i] == c else { throw fail("expected '\(c)'") }
            i += 1
        }

        mutating func object() throws(OperationsError) -> [String: Value] {
            try expect("{")
            var result: [String: Value] = [:]
            skipSpace()
            if i < scalars.count, scalars[i] == "}" { i += 1; return result }
            while true {
                skipSpace()
                let key = try string()
                try expect(":")
                skipSpace()
                result[key] = try value()
                skipSpace()
                guard i < scalars.count else { throw fail("unterminated object") }
                if scalars[i] == "," { i += 1; continue }
                if scalars[i] == "}" { i += 1; return result }
                throw fail("expected ',' or '}'")
            }
        }

        mutating func value() throws(OperationsError) -> Value {
            guard i < scalars.count else { throw fail("missing value") }
            let c = scalars[i]
            if c == "\"" { return .string(try string()) }
            for (word, v) in [("true", Value.bool(true)), ("false", .bool(false)), ("null", .null)] {
                let w = Array(word.unicodeScalars)
                if i + w.count <= scalars.count, Array(scalars[i..<i + w.count]) == w { i += w.count; return v }
            }
            var digits = ""
            while i < scalars.count, scalars[i] == "-" || ("0"..."9").contains(scalars[i]) {
                digits.unicodeScalars.append(scalars[i])
                i += 1
            }
            guard let n = Int64(digits) else { throw fail("expected a string, an integer, true, false or null") }
            return .int(n)
        }

        mutating func string() throws(OperationsError) -> String {
            guard i < scalars.count, scalars[i] == "\"" else { throw fail("expected a string") }
            i += 1
            var out = ""
            while i < scalars.count {
                let c = scalars[i]
                i += 1
                if c == "\"" { return out }
                if c != "\\" { out.unicodeScalars.append(c); continue }
                guard i < scalars.count else { break }
                let e = scalars[i]
                i += 1
                switch e {
                case "n": out += "\n"
                case "r": out += "\r"
                case "t": out += "\t"
                case "u":
                    guard i + 4 <= scalars.count,
                          let v = UInt32(String(String.UnicodeScalarView(scalars[i..<i + 4])), radix: 16),
                          let s = Unicode.Scalar(v) else { throw fail("bad \\u escape") }
                    out.unicodeScalars.append(s)
                    i += 4
                default: out.unicodeScalars.append(e)
                }
            }
            throw fail("unterminated string")
        }
    }
}

/// The state file's reads and writes: Leases.AtomicFile (temp + fsync + rename), errors as OperationsError.
enum FileIO {
    static func writeAtomically(path: String, contents: String, mode: mode_t) throws(OperationsError) {
        do {
            try AtomicFile.write(Array(contents.utf8), to: path, mode: mode)
        } catch {
            throw OperationsError(operation: "\(error.operation) \(error.path)", detail: "cannot write the file", errno: error.errno,
                                  hint: "run as root, or point --subnet-file at a writable folder")
        }
    }

    /// nil when the file does not exist.
    static func read(path: String, limit: Int) throws(OperationsError) -> String? {
        do {
            guard let file = try AtomicFile.read(from: path, limit: limit) else { return nil }
            return String(decoding: file.bytes, as: UTF8.self)
        } catch {
            throw OperationsError(operation: "\(error.operation) \(error.path)", detail: "cannot read the file", errno: error.errno,
                                  hint: "run as root")
        }
    }
}
