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

import Dataplane
import Glibc
import Leases
import RuntimeSupport

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
    /// The IPv6 half in a dual-stack or IPv6-only network (empty/0 without IPv6).
    public var ipv6Network: String = ""
    public var ipv6Subnet: String = ""
    public var publicIPv6: String = ""
    public var ipv6PeerCount: Int = 0
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
            ("ipv6Network", .string(ipv6Network)), ("ipv6Subnet", .string(ipv6Subnet)), ("publicIPv6", .string(publicIPv6)),
            ("ipv6PeerCount", .int(Int64(ipv6PeerCount))),
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
        ipv6Network = string("ipv6Network")
        ipv6Subnet = string("ipv6Subnet")
        publicIPv6 = string("publicIPv6")
        ipv6PeerCount = Int(int("ipv6PeerCount"))
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

/// A flat JSON object: string, integer and boolean values only (what the state file and the JSON
/// log lines hold), read and written through RuntimeSupport's JSON.
enum FlatJSON {
    enum Value: Equatable, Sendable {
        case string(String)
        case int(Int64)
        case bool(Bool)
        case null

        var json: JSONValue {
            switch self {
            case .string(let s): .string(s)
            case .int(let i): .int(i)
            case .bool(let b): .bool(b)
            case .null: .null
            }
        }
    }

    static func write(_ fields: [(String, Value)], indent: Bool = true) -> String {
        guard indent else { return JSONValue.members(fields.map { ($0.0, $0.1.json) }).text }
        let lines = fields.map { key, value in "  " + JSONValue.string(key).text + ": " + value.json.text }
        return "{\n" + lines.joined(separator: ",\n") + "\n}"
    }

    static func parse(_ text: String) throws(OperationsError) -> [String: Value] {
        func fail(_ what: String) -> OperationsError {
            OperationsError(operation: "parse state file", detail: what, hint: "the file is damaged: restart flanneld-xdp to rewrite it")
        }
        let document: JSONValue
        do { document = try JSONValue.parse(text) } catch { throw fail("\(error)") }
        guard let members = document.objectMembers else { throw fail("not a JSON object") }
        var result: [String: Value] = [:]
        for member in members {
            switch member.value {
            case .string(let s): result[member.key] = .string(s)
            case .bool(let b): result[member.key] = .bool(b)
            case .null: result[member.key] = .null
            case .number:
                guard let i = member.value.int64Value else { throw fail("\(member.key): not an integer") }
                result[member.key] = .int(i)
            default: throw fail("\(member.key): a \(member.value.typeName), not a string, integer, boolean or null")
            }
        }
        return result
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
