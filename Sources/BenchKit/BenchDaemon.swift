// BenchDaemon — the real flanneld-xdp binary at N peers: cold start to a full peer map, lease
// change to map entry, and the daemon's memory.
//
// Design: a TestSupport.FlannelCluster with one node (etcd listens on the lab's wire, the daemon
// runs in the node's namespace with flanneld's flags, pins under the lab's bpffs). Before the daemon
// starts, N leases in flannel's JSON are written with TTL (one etcd lease for all of them) through
// etcd's v3 JSON gateway, 128 puts per transaction, over TCP sockets the bench opens inside the wire
// namespace (the bench itself lives in the root namespace, which cannot reach the lab's etcd).
// The clock starts when the leases exist and the daemon is spawned; it stops when the daemon's
// pinned peer map — read from this process through the bpffs, as bpftool would — holds all N.
// Then one lease's VtepMAC is rewritten at a time and the pinned entry is polled until it follows.
// RSS/HWM are read from /proc/<daemon pid>/status (`ip netns exec` execs the daemon in place).

import BPFDataplane
import BPFLoader
import CBPF
import Foundation
import Glibc
import NetTypes
import RuntimeSupport
import TestSupport

struct DaemonResult: Codable, Sendable {
    var peers: Int
    /// Daemon spawned (leases already in etcd) → its pinned peer map holds all N.
    var startToFullMapSeconds: Double?
    /// Daemon spawned → /readyz 200 (after the kernel routes too).
    var startToReadySeconds: Double?
    /// Daemon spawned → subnet.env written (what CNI waits for).
    var startToSubnetEnvSeconds: Double?
    var watchP50Milliseconds: Double?
    var watchP99Milliseconds: Double?
    var watchSamples: Int
    var rssKiB: Int?
    var hwmKiB: Int?
    var rssAnonKiB: Int?
    var rssFileKiB: Int?
    /// VmRSS the moment the map held all N.
    var rssAtFullMapKiB: Int?
    /// Open file descriptors of the daemon at the end.
    var openFDs: Int?
    var failures: [String]
}

/// A minimal HTTP/1.0 client for etcd's v3 JSON gateway: one connection per request (HTTP/1.0 gets a
/// plain body that ends with the connection, never chunks), each socket made inside the namespace.
final class GatewayConnection {
    let namespace: String
    let host: IPv4Address
    let port: UInt16

    init(namespace: String, host: IPv4Address, port: UInt16) {
        self.namespace = namespace
        self.host = host
        self.port = port
    }

    private func connectSocket() throws -> Int32 {
        let (host, port) = (self.host, self.port)
        return try NetnsThread.run(namespace: namespace) { () throws -> Int32 in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RRError("socket") }
            var tv = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            var sa = sockaddr_in(host, port)
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { let e = errno; close(fd); throw RRError("connect etcd \(host):\(port)", errno: e) }
            return fd
        }
    }

    /// POSTs `body` to `path`; returns the response body (throws on a non-200 status).
    func post(_ path: String, _ body: String) throws -> String {
        let fd = try connectSocket()
        defer { close(fd) }
        let bytes = Array(body.utf8)
        let head = "POST \(path) HTTP/1.0\r\nHost: \(host):\(port)\r\nContent-Type: application/json\r\nContent-Length: \(bytes.count)\r\n\r\n"
        let request = Array(head.utf8) + bytes
        guard RRSocket.sendAll(fd, request, count: request.count) else { throw RRError("send to etcd") }
        let (buffer, failure) = SystemCall.readAll(fd, limit: 1 << 30)
        guard failure == nil else { throw RRError("recv from etcd") }
        guard let end = Self.headerEnd(buffer) else { throw RRError("etcd: no HTTP header in the answer", errno: EPROTO) }
        let header = String(decoding: buffer[..<end], as: UTF8.self)
        let status = header.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        let text = String(decoding: buffer[(end + 4)...], as: UTF8.self)
        guard status == 200 else { throw RRError("etcd \(path) HTTP \(status): \(text.prefix(300))", errno: EPROTO) }
        return text
    }

    static func headerEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
        return nil
    }

    static func b64(_ s: String) -> String { Data(s.utf8).base64EncodedString() }

    /// A TTL lease; returns its ID (decimal string, as the gateway prints int64).
    func grant(ttl: Int) throws -> String {
        let text = try post("/v3/lease/grant", #"{"TTL":"\#(ttl)"}"#)
        guard let r = text.range(of: #""ID":""#), let end = text[r.upperBound...].firstIndex(of: "\"") else {
            throw RRError("lease grant: no ID in \(text.prefix(200))", errno: EPROTO)
        }
        return String(text[r.upperBound..<end])
    }

    /// Puts every (key, value) in transactions of at most 128 operations (etcd's default limit).
    func putAll(_ pairs: [(String, String)], lease: String) throws {
        var i = 0
        while i < pairs.count {
            let batch = pairs[i..<min(i + 128, pairs.count)]
            let ops = batch.map { k, v in #"{"request_put":{"key":"\#(Self.b64(k))","value":"\#(Self.b64(v))","lease":"\#(lease)"}}"# }
            _ = try post("/v3/kv/txn", #"{"success":["# + ops.joined(separator: ",") + "]}")
            i += batch.count
        }
    }
}

enum DaemonBench {
    /// flanneld-xdp next to this executable (both are built by `swift build -c release`).
    static func defaultDaemonPath() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "flanneld-xdp" }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (exe as NSString).deletingLastPathComponent + "/flanneld-xdp"
    }

    static func run(daemonPath: String, wrapper: [String] = [], keepLogs: String? = nil, sizes: [Int], watchChanges: Int,
                    cleanup: BenchCleanup, log: (String) -> Void) -> [DaemonResult] {
        sizes.sorted().map { n in
            if cleanup.interrupted { return DaemonResult(peers: n, watchSamples: 0, failures: ["interrupted"]) }
            do {
                return try measure(daemonPath: daemonPath, wrapper: wrapper, keepLogs: keepLogs, peers: n, watchChanges: watchChanges,
                                   cleanup: cleanup, log: log)
            } catch {
                log("daemon at \(n) peers failed: \(error)")
                return DaemonResult(peers: n, watchSamples: 0, failures: ["\(error)".prefix(500).description])
            }
        }
    }

    static func measure(daemonPath: String, wrapper: [String] = [], keepLogs: String? = nil, peers n: Int, watchChanges: Int,
                        cleanup: BenchCleanup, log: (String) -> Void) throws -> DaemonResult {
        let cluster = try FlannelCluster(tag: "bench", api: .v3, daemonPath: daemonPath, nodes: 1,
                                         network: ControlPlaneBench.network)
        cleanup.add(folder: cluster.workDir)
        cleanup.add(lab: cluster.lab)
        cleanup.add(bpffs: cluster.bpffsRoot)
        let node = cluster.nodes[0]
        defer {
            if let keepLogs {
                try? FileManager.default.createDirectory(atPath: keepLogs, withIntermediateDirectories: true)
                try? cluster.daemonLog(node).write(toFile: "\(keepLogs)/daemon-\(n).log", atomically: true, encoding: .utf8)
            }
            cluster.cleanup()
        }
        var result = DaemonResult(peers: n, watchSamples: 0, failures: [])

        let etcd = GatewayConnection(namespace: cluster.lab.wireNamespace, host: cluster.etcdIP, port: 2379)
        let lease = try etcd.grant(ttl: 86400)
        try etcd.putAll((0..<n).map { i in
            let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
            return (cluster.leaseKey(subnet), attributes.json)
        }, lease: lease)

        let pin = cluster.pinFolder(node) + "/" + FXDP_MAP_PEERS
        var previous = stat()
        let previousSubnetFile = stat(cluster.subnetFile(node), &previous) == 0 ? previous.st_ino : 0
        let t0 = ControlPlaneBench.now()
        let process = try cluster.lab.spawn(node.name, wrapper + cluster.daemonArguments(node), stdout: cluster.logFile(node))
        var map: BPFMap<fxdp_peer_key, fxdp_peer_value>?
        let deadline = t0 + max(120, Double(n) / 200)
        let subnetFile = cluster.subnetFile(node)
        // The lab leaves a previous subnet.env (how the node learns its subnet); the daemon's write
        // replaces it (a rename: a new inode).
        func subnetFileWritten() -> Bool {
            var st = stat()
            return stat(subnetFile, &st) == 0 && st.st_ino != previousSubnetFile
        }
        while ControlPlaneBench.now() < deadline, process.isRunning {
            if result.startToSubnetEnvSeconds == nil, subnetFileWritten() {
                result.startToSubnetEnvSeconds = ControlPlaneBench.now() - t0
            }
            if map == nil { map = try? BPFMap.openPinned(path: pin, key: fxdp_peer_key.self, value: fxdp_peer_value.self) }
            if let map, let count = try? map.keys().count, count >= n {
                result.startToFullMapSeconds = ControlPlaneBench.now() - t0
                break
            }
            usleep(2000)
        }
        guard let map, result.startToFullMapSeconds != nil else {
            throw LabError(command: process.command, message: "the daemon's peer map did not reach \(n) entries; log:\n\(cluster.daemonLog(node).suffix(1500))")
        }
        // Memory once the map is full, and again at the end.
        let atFullMap = ProcessMemory.parse(status: readFile("/proc/\(process.pid)/status"))
        // The kernel's tables come after the map; at tens of thousands of peers that takes minutes.
        let readyTimeout = max(120, Double(n) / 100)
        do {
            try cluster.waitReady(node, process: process, timeout: readyTimeout)
            result.startToReadySeconds = ControlPlaneBench.now() - t0
        } catch {
            result.failures.append("not ready within \(Int(readyTimeout)) s (the kernel's tables): "
                + String(cluster.daemonLog(node).split(separator: "\n").suffix(3).joined(separator: " | ").suffix(600)))
        }
        if result.startToSubnetEnvSeconds == nil, subnetFileWritten() {
            result.startToSubnetEnvSeconds = ControlPlaneBench.now() - t0
        }

        var latencies: [Double] = []
        for c in 0..<watchChanges {
            let i = (c * 7919) % n
            let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
            var changed = attributes
            let mac = MACAddress(bytes: [0x0e, 0xfd, UInt8(c & 0xff), UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])
            changed.vtepMAC = mac
            var key = fxdp_peer_key()
            key.prefixlen = UInt32(subnet.prefixLength)
            key.subnet = subnet.address.tuple
            let s0 = ControlPlaneBench.now()
            try etcd.putAll([(cluster.leaseKey(subnet), changed.json)], lease: lease)
            var seen = false
            while ControlPlaneBench.now() - s0 < 10 {
                if let v = try map.lookup(key), MACAddress(tuple: v.vtep_mac) == mac { seen = true; break }
                usleep(100)
            }
            guard seen else { result.failures.append("lease change \(c) not in the map after 10 s"); break }
            latencies.append((ControlPlaneBench.now() - s0) * 1000)
        }
        if !latencies.isEmpty {
            result.watchP50Milliseconds = BenchMath.percentile(latencies, 50)
            result.watchP99Milliseconds = BenchMath.percentile(latencies, 99)
        }
        result.watchSamples = latencies.count
        if let m = ProcessMemory.parse(status: readFile("/proc/\(process.pid)/status")) {
            result.rssKiB = m.rssKiB
            result.hwmKiB = m.hwmKiB
            result.rssAnonKiB = m.anonKiB
            result.rssFileKiB = m.fileKiB
        }
        result.openFDs = ProcessFDs.count(pid: process.pid)
        result.rssAtFullMapKiB = atFullMap?.rssKiB
        log("daemon at \(n) peers: start → full map \(BenchFormat.number(result.startToFullMapSeconds.map { $0 * 1000 }, 0)) ms, "
            + "ready \(BenchFormat.number(result.startToReadySeconds.map { $0 * 1000 }, 0)) ms, watch p50 \(BenchFormat.number(result.watchP50Milliseconds)) ms, "
            + "RSS \(BenchFormat.number(result.rssKiB.map { Double($0) / 1024 }, 1)) MiB "
            + "(anon \(BenchFormat.number(result.rssAnonKiB.map { Double($0) / 1024 }, 1)), file \(BenchFormat.number(result.rssFileKiB.map { Double($0) / 1024 }, 1))), "
            + "HWM \(BenchFormat.number(result.hwmKiB.map { Double($0) / 1024 }, 1)) MiB")
        return result
    }
}
