// BenchEtcdLoad — what one node asks of etcd, and what that makes at 5000 nodes, beside flannel.
//
// Measured with the project's own client against a real etcd (3.4, v3 and v2 API in turn): K nodes
// run in this process what the daemon runs (Leases' registry, Startup.previousVTEPMAC,
// SubnetManager.acquireLease / renewLease / watchPeers), each through a TCP proxy of its own
// (CountingProxy) that counts its requests and bytes by kind and its open watch connections. The
// client opens one connection per request (EtcdHTTPClient), so a connection is a request; a watch
// is one long connection on v3, one long poll per event on v2.
//
//   restart     the K nodes start at once with N leases in etcd, their own among them (a node that
//               reboots reuses its lease): config, the listings, the lease update, the watch, up to
//               the first snapshot; then every node's watch delivers the other nodes' updates.
//   per event   E lease changes written beside the nodes: what one delivered change costs a node.
//   renewal     one renewLease per node; listing: one full listing (the periodic re-list).
//   idle        nothing changes for a while: a node's cost with its watch open.
//
// The steady state per node then follows from the daemon's schedule (renewal 1 h before a 24 h TTL
// ends, a re-list every 5 minutes, every other node's renewal delivered as an event), and the
// cluster totals at 5000 nodes from that. flannel 0.17 (its v2 client, subnet/etcdv2 and
// subnet/watch.go) does per node: at start one GET of the config, one recursive listing to
// acquire, one PUT, one more listing to start its watch; then one GET ?wait=true per event, a PUT
// per renewal, and one more listing each time etcd answers a watch with 401 (EcodeEventIndexCleared:
// the watch index fell out of v2's 1000-event window). Its byte costs are this client's v2 costs
// for the same requests.

import CBPF
import FlannelDaemon
import Foundation
import Glibc
import Leases
import Logging
import NetTypes
import Synchronization
import TestSupport

struct EtcdLoadCost: Codable, Sendable, Equatable {
    var requests: Double = 0
    var bytesToEtcd: Double = 0
    var bytesFromEtcd: Double = 0
    var bytes: Double { bytesToEtcd + bytesFromEtcd }

    static func + (a: EtcdLoadCost, b: EtcdLoadCost) -> EtcdLoadCost {
        EtcdLoadCost(requests: a.requests + b.requests, bytesToEtcd: a.bytesToEtcd + b.bytesToEtcd, bytesFromEtcd: a.bytesFromEtcd + b.bytesFromEtcd)
    }

    static func * (a: EtcdLoadCost, k: Double) -> EtcdLoadCost {
        EtcdLoadCost(requests: a.requests * k, bytesToEtcd: a.bytesToEtcd * k, bytesFromEtcd: a.bytesFromEtcd * k)
    }
}

/// One API's figures: measured per node, then the model at `clusterNodes`.
struct EtcdLoadAPI: Codable, Sendable {
    var api: String
    var leases: Int
    var nodes: Int
    /// Per node, from start to its first snapshot (mean over the nodes).
    var start: EtcdLoadCost
    /// Per node, by kind of request, during start (mean).
    var startByKind: [String: EtcdLoadCost]
    /// Slowest node's start to snapshot, seconds.
    var startSeconds: Double
    var perEvent: EtcdLoadCost
    var perRenewal: EtcdLoadCost
    var perListing: EtcdLoadCost
    /// Per node and second with nothing changing.
    var idlePerSecond: EtcdLoadCost
    /// Watch connections a node holds open in steady state (largest seen over the nodes).
    var watchesPerNode: Int
    /// Re-lists the watches made during the restart (history lost: compaction, v2's window).
    var historyRelists: Int
    var failures: [String]
}

struct EtcdLoadReport: Codable, Sendable {
    var apis: [EtcdLoadAPI]
    var clusterNodes: Int
    /// The daemon's schedule the steady state is computed with.
    var renewIntervalSeconds: Double
    var relistIntervalSeconds: Double
}

/// Counts what passes through, per node (one listener each) and per kind of request.
final class CountingProxy: @unchecked Sendable {
    // @unchecked: the counters are behind a Mutex; `listeners` is written once in init.
    enum Kind: String, CaseIterable, Codable, Sendable {
        case list, get, write, lease, watch, auth, other
    }

    struct Counts: Sendable {
        var byKind: [Kind: EtcdLoadCost] = [:]
        var openWatches = 0
        var maxOpenWatches = 0
        var total: EtcdLoadCost { byKind.values.reduce(EtcdLoadCost(), +) }

        static func - (a: Counts, b: Counts) -> Counts {
            var out = Counts()
            for kind in Kind.allCases {
                let x = a.byKind[kind] ?? EtcdLoadCost(), y = b.byKind[kind] ?? EtcdLoadCost()
                out.byKind[kind] = EtcdLoadCost(requests: x.requests - y.requests, bytesToEtcd: x.bytesToEtcd - y.bytesToEtcd,
                                                bytesFromEtcd: x.bytesFromEtcd - y.bytesFromEtcd)
            }
            out.openWatches = a.openWatches
            out.maxOpenWatches = a.maxOpenWatches
            return out
        }
    }

    private let counts: Mutex<[Counts]>
    private let sockets = Mutex<Set<Int32>>([])
    private var listeners: [Int32] = []
    let ports: [Int]
    let upstreamPort: UInt16

    init(nodes: Int, upstreamPort: Int) throws {
        counts = Mutex(Array(repeating: Counts(), count: nodes))
        self.upstreamPort = UInt16(upstreamPort)
        var ports: [Int] = []
        for _ in 0..<nodes {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw RRError("proxy socket") }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var sa = sockaddr_in(IPv4Address(127, 0, 0, 1), 0)
            let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard rc == 0, listen(fd, 128) == 0 else { let e = errno; close(fd); throw RRError("proxy bind/listen", errno: e) }
            var bound = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            ports.append(Int(UInt16(bigEndian: bound.sin_port)))
            listeners.append(fd)
        }
        self.ports = ports
        for (node, fd) in listeners.enumerated() {
            Thread.detachNewThread { [self] in acceptLoop(fd, node: node) }
        }
    }

    func snapshot(_ node: Int) -> Counts { counts.withLock { $0[node] } }

    /// Closes the listeners and every proxied connection (their threads end).
    func stop() {
        for fd in listeners { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
        listeners = []
        for fd in sockets.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop(_ listener: Int32, node: Int) {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            Thread.detachNewThread { [self] in serve(client, node: node) }
        }
    }

    private func serve(_ client: Int32, node: Int) {
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var sa = sockaddr_in(IPv4Address(127, 0, 0, 1), upstreamPort)
        let rc = upstream < 0 ? -1 : withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            if upstream >= 0 { close(upstream) }
            close(client)
            return
        }
        sockets.withLock { $0.formUnion([client, upstream]) }
        let kind = ConnectionKind()
        let done = DispatchGroup()
        done.enter()
        Thread.detachNewThread { [self] in
            pump(from: upstream, to: client) { bytes in
                let k = kind.value.withLock { $0 } ?? .other
                counts.withLock { $0[node].byKind[k, default: EtcdLoadCost()].bytesFromEtcd += Double(bytes.count) }
            }
            done.leave()
        }
        pump(from: client, to: upstream) { bytes in
            let first = kind.value.withLock { k -> Kind? in
                if k != nil { return nil }
                k = Self.classify(bytes)
                return k
            }
            counts.withLock { all in
                if let first {
                    all[node].byKind[first, default: EtcdLoadCost()].requests += 1
                    if first == .watch {
                        all[node].openWatches += 1
                        all[node].maxOpenWatches = max(all[node].maxOpenWatches, all[node].openWatches)
                    }
                }
                let k = first ?? kind.value.withLock { $0 } ?? .other
                all[node].byKind[k, default: EtcdLoadCost()].bytesToEtcd += Double(bytes.count)
            }
        }
        done.wait()
        if kind.value.withLock({ $0 }) == .watch { counts.withLock { $0[node].openWatches -= 1 } }
        sockets.withLock { $0.subtract([client, upstream]) }
        close(client)
        close(upstream)
    }

    /// A connection's kind, set by its first request bytes, read when its answer is counted.
    private final class ConnectionKind: Sendable {
        let value = Mutex<Kind?>(nil)
    }

    /// Copies until `from` ends, then ends the sending side of `to`.
    private func pump(from: Int32, to: Int32, _ count: ([UInt8]) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            let chunk = Array(buffer[0..<n])
            count(chunk)
            guard RRSocket.sendAll(to, chunk, count: n) else { break }
        }
        shutdown(to, Int32(SHUT_WR))
    }

    /// The kind of request from the first bytes of a connection (request line, and the body when
    /// it came along: a v3 range with a range_end is a listing).
    static func classify(_ bytes: [UInt8]) -> Kind {
        let text = String(decoding: bytes.prefix(4096), as: UTF8.self)
        let line = text.prefix { $0 != "\r" && $0 != "\n" }
        let parts = line.split(separator: " ")
        guard parts.count >= 2 else { return .other }
        let method = parts[0], path = parts[1]
        if path.hasPrefix("/v3/watch") || (method == "GET" && path.hasPrefix("/v2/keys") && path.contains("wait=true")) { return .watch }
        if path.hasPrefix("/v3/kv/range") { return text.contains("range_end") ? .list : .get }
        if path.hasPrefix("/v2/keys") && method == "GET" { return path.contains("recursive=true") ? .list : .get }
        if path.hasPrefix("/v3/kv/") || path.hasPrefix("/v2/keys") { return .write }
        if path.hasPrefix("/v3/lease") { return .lease }
        if path.hasPrefix("/v3/auth") { return .auth }
        return .other
    }
}

enum EtcdLoadBench {
    static let prefix = "/coreos.com/network"
    /// The daemon's defaults: TTL 24 h renewed 1 h before its end, a full re-list every 5 minutes.
    static let renewInterval = 23.0 * 3600
    static let relistInterval = 300.0
    static let clusterNodes = 5000

    static func run(leases: Int, nodes: Int, cleanup: BenchCleanup, log: (String) -> Void) async throws -> EtcdLoadReport {
        var apis: [EtcdLoadAPI] = []
        for api in [EtcdAPIVersion.v3, .v2] {
            try cleanup.checkInterrupted()
            apis.append(try await measure(api: api, leases: max(leases, nodes), nodes: nodes, cleanup: cleanup, log: log))
        }
        return EtcdLoadReport(apis: apis, clusterNodes: clusterNodes, renewIntervalSeconds: renewInterval, relistIntervalSeconds: relistInterval)
    }

    /// Counts events per node's watch.
    final class EventTally: Sendable {
        let events = Mutex(0)
        let snapshotAt = Mutex<Double?>(nil)
    }

    static func measure(api: EtcdAPIVersion, leases: Int, nodes: Int, cleanup: BenchCleanup, log: (String) -> Void) async throws -> EtcdLoadAPI {
        let logger = {
            var l = Logger(label: "fxbench.etcdload")
            l.logLevel = .error
            return l
        }()
        let etcd = try await EtcdServer.start(tag: "fxload")
        cleanup.add(etcd: etcd)
        defer { etcd.cleanup() }
        let configJSON = #"{"Network":"\#(ControlPlaneBench.network)","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#
        if api == .v3 {
            _ = try etcd.etcdctlChecked(api: 3, ["put", prefix + "/config", configJSON])
        } else {
            _ = try etcd.etcdctlChecked(api: 2, ["set", prefix + "/config", configJSON])
        }
        let direct = try EtcdRegistryFactory.make(api: api, options: EtcdClientOptions(endpoints: [etcd.clientURL], prefix: prefix))
        // The N leases, the nodes' own (0..<nodes) among them, as before a reboot of the cluster.
        try await ControlPlaneBench.writeLeases(direct, from: 0, to: leases)
        guard let port = Int(etcd.clientURL.split(separator: ":").last ?? "") else { throw RRError("etcd URL \(etcd.clientURL)") }
        let proxy = try CountingProxy(nodes: nodes, upstreamPort: port)
        defer { proxy.stop() }
        var failures: [String] = []

        // Restart: every node at once, as the daemon starts.
        let options = {
            var o = SubnetManagerOptions()
            o.relistInterval = .seconds(3600)  // no periodic re-list inside the windows measured
            return o
        }()
        let tallies = (0..<nodes).map { _ in EventTally() }
        var managers: [SubnetManager] = []
        var watchTasks: [Task<Void, Never>] = []
        let t0 = ControlPlaneBench.now()
        let started: [(SubnetManager, Task<Void, Never>)] = try await withThrowingTaskGroup(of: (Int, SubnetManager, Task<Void, Never>).self) { group in
            for i in 0..<nodes {
                group.addTask {
                    let registry = try EtcdRegistryFactory.make(
                        api: api, options: EtcdClientOptions(endpoints: ["http://127.0.0.1:\(proxy.ports[i])"], prefix: prefix))
                    let manager = SubnetManager(registry: registry, options: options, logger: logger)
                    let config = try await manager.getConfig()
                    // As the daemon after a reboot: its previous subnet.env names its lease.
                    let (previous, own) = ControlPlaneBench.syntheticLease(i)
                    let mac = try await Startup.previousVTEPMAC(registry: registry, publicIP: own.publicIP, previousSubnet: previous)
                        ?? own.vtepMAC!
                    _ = try await manager.acquireLease(config: config, attributes: .vxlan(publicIP: own.publicIP, vni: 1, vtepMAC: mac),
                                                       previousSubnet: previous)
                    let tally = tallies[i]
                    let snapshot = AsyncStream<Void>.makeStream()
                    let task = Task {
                        for await event in manager.watchPeers(config: config) {
                            if case .snapshot = event {
                                tally.snapshotAt.withLock { $0 = ControlPlaneBench.now() }
                                snapshot.continuation.yield()
                            } else {
                                tally.events.withLock { $0 += 1 }
                            }
                        }
                    }
                    for await _ in snapshot.stream { break }
                    return (i, manager, task)
                }
            }
            var out: [(Int, SubnetManager, Task<Void, Never>)] = []
            for try await item in group { out.append(item) }
            return out.sorted { $0.0 < $1.0 }.map { ($0.1, $0.2) }
        }
        managers = started.map(\.0)
        watchTasks = started.map(\.1)
        defer { for task in watchTasks { task.cancel() } }
        let startSeconds = (tallies.compactMap { $0.snapshotAt.withLock { $0 } }.max() ?? t0) - t0
        let afterStart = (0..<nodes).map(proxy.snapshot)
        var start = EtcdLoadCost()
        var startByKind: [String: EtcdLoadCost] = [:]
        for c in afterStart {
            start = start + c.total
            for (kind, cost) in c.byKind { startByKind[kind.rawValue, default: EtcdLoadCost()] = startByKind[kind.rawValue, default: EtcdLoadCost()] + cost * (1 / Double(nodes)) }
        }
        start = start * (1 / Double(nodes))
        log("etcd load \(api): \(nodes) nodes started in \(BenchFormat.number(startSeconds, 2)) s, "
            + "\(BenchFormat.number(start.requests, 1)) requests and \(BenchFormat.number(start.bytes / 1e6, 2)) MB per node")

        // The nodes' own updates reach each other; then the per-event cost.
        try await settle(proxy, nodes: nodes)
        let events = 200
        let beforeEvents = (0..<nodes).map(proxy.snapshot)
        let eventsBefore = tallies.map { $0.events.withLock { $0 } }
        for c in 0..<events {
            let i = nodes + (c * 7919) % (leases - nodes)
            let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
            var changed = attributes
            changed.vtepMAC = MACAddress(bytes: [0x0e, 0xfe, UInt8(c & 0xff), UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])
            try await putRaw(direct, name: subnet.leaseKey, value: changed.json)
        }
        let deadline = ControlPlaneBench.now() + 60
        while ControlPlaneBench.now() < deadline,
              zip(tallies, eventsBefore).contains(where: { $0.events.withLock { $0 } - $1 < events }) {
            try await Task.sleep(for: .milliseconds(20))
        }
        let behind = zip(tallies, eventsBefore).filter { $0.events.withLock { $0 } - $1 < events }.count
        if behind > 0 { failures.append("\(behind) node(s) did not see all \(events) changes within 60 s") }
        try await settle(proxy, nodes: nodes)
        let perEvent = mean((0..<nodes).map { (proxy.snapshot($0) - beforeEvents[$0]).total }) * (1 / Double(events))

        // Idle: nothing changes.
        let idleSeconds = 5.0
        let beforeIdle = (0..<nodes).map(proxy.snapshot)
        try await Task.sleep(for: .seconds(idleSeconds))
        let idle = mean((0..<nodes).map { (proxy.snapshot($0) - beforeIdle[$0]).total }) * (1 / idleSeconds)

        // One renewal and one full listing per node.
        let beforeRenew = (0..<nodes).map(proxy.snapshot)
        for manager in managers { _ = try await manager.renewLease() }
        try await settle(proxy, nodes: nodes)
        let perRenewal = mean((0..<nodes).map { (proxy.snapshot($0) - beforeRenew[$0]).byKind.filter { $0.key != .watch }.values.reduce(EtcdLoadCost(), +) })
        let beforeList = (0..<nodes).map(proxy.snapshot)
        for manager in managers { _ = try await manager.registry.reduceLeases(into: 0) { n, _ in n += 1 } }
        let perListing = mean((0..<nodes).map { (proxy.snapshot($0) - beforeList[$0]).byKind[.list] ?? EtcdLoadCost() })

        let watches = (0..<nodes).map { proxy.snapshot($0).openWatches }.max() ?? 0
        let relists = managers.map { $0.counters.snapshot().historyRelists }.reduce(0, +)
        log("etcd load \(api): per event \(BenchFormat.number(perEvent.requests, 2)) requests \(BenchFormat.number(perEvent.bytes, 0)) B, "
            + "renewal \(BenchFormat.number(perRenewal.requests, 1)) requests, listing \(BenchFormat.number(perListing.requests, 1)) requests "
            + "\(BenchFormat.number(perListing.bytes / 1e6, 2)) MB, idle \(BenchFormat.number(idle.bytes, 0)) B/s, \(watches) watch(es) per node")
        return EtcdLoadAPI(api: api.rawValue, leases: leases, nodes: nodes, start: start, startByKind: startByKind, startSeconds: startSeconds,
                           perEvent: perEvent, perRenewal: perRenewal, perListing: perListing, idlePerSecond: idle,
                           watchesPerNode: watches, historyRelists: relists, failures: failures)
    }

    /// Writes a lease value as it is (the registries' test hook), beside the nodes' proxies.
    static func putRaw(_ registry: any SubnetRegistry, name: String, value: String) async throws {
        if let v3 = registry as? EtcdV3Registry {
            _ = try await v3.putRaw(name: name, value: value, ttl: .seconds(86400))
        } else if let v2 = registry as? EtcdV2Registry {
            _ = try await v2.putRaw(name: name, value: value, ttl: .seconds(86400))
        }
    }

    static func mean(_ costs: [EtcdLoadCost]) -> EtcdLoadCost {
        costs.reduce(EtcdLoadCost(), +) * (1 / Double(max(costs.count, 1)))
    }

    /// Waits until no byte has moved through the proxy for 300 ms.
    static func settle(_ proxy: CountingProxy, nodes: Int) async throws {
        var last = (0..<nodes).map { proxy.snapshot($0).total.bytes }.reduce(0, +)
        var quiet = 0
        while quiet < 3 {
            try await Task.sleep(for: .milliseconds(100))
            let now = (0..<nodes).map { proxy.snapshot($0).total.bytes }.reduce(0, +)
            quiet = now == last ? quiet + 1 : 0
            last = now
        }
    }
}

/// The steady state and a full-cluster restart at `nodes` nodes, per node and in total, for
/// flanneld-xdp (measured costs, the daemon's schedule) and flannel 0.17 (its v2 algorithm with
/// the measured v2 costs). Pure: tested without a run.
struct EtcdLoadModel: Sendable {
    struct Row: Sendable {
        var who: String
        /// Per node in steady state, per second.
        var steady: EtcdLoadCost
        var watches: Int
        /// Per node for a full-cluster restart (its own start plus every other node's update).
        var restart: EtcdLoadCost
        var note: String
    }

    static func rows(_ report: EtcdLoadReport) -> [Row] {
        let n = Double(report.clusterNodes)
        // Every node renews once per renewal interval, and every renewal is an event for every watch.
        let eventsPerSecond = n / report.renewIntervalSeconds
        var rows: [Row] = []
        for a in report.apis {
            // A listing costs in proportion to the leases: scaled from the measured N to the cluster's.
            let scale = n / Double(max(a.leases, 1))
            let listing = EtcdLoadCost(requests: a.perListing.requests * scale, bytesToEtcd: a.perListing.bytesToEtcd * scale,
                                       bytesFromEtcd: a.perListing.bytesFromEtcd * scale)
            let steady = a.perRenewal * (1 / report.renewIntervalSeconds) + listing * (1 / report.relistIntervalSeconds)
                + a.perEvent * eventsPerSecond + a.idlePerSecond
            let listings = (a.startByKind["list"]?.requests ?? 0) / max(a.perListing.requests, 1)
            let startRest = a.start + a.perListing * -listings
            let restart = startRest + listing * listings + a.perEvent * (n - 1)
            rows.append(Row(who: "flanneld-xdp, etcd \(a.api)", steady: steady, watches: a.watchesPerNode, restart: restart,
                            note: "\(BenchFormat.number(listings, 0)) listing(s) at start, a re-list every \(Int(report.relistIntervalSeconds)) s"))
        }
        if let v2 = report.apis.first(where: { $0.api == "v2" }) {
            let scale = n / Double(max(v2.leases, 1))
            let listing = v2.perListing * scale
            // Config GET, listing, lease PUT, listing to start the watch.
            let configGet = v2.startByKind["get"] ?? EtcdLoadCost()
            let put = v2.perRenewal
            let start = configGet + listing * 2 + put
            let steady = put * (1 / report.renewIntervalSeconds) + v2.perEvent * eventsPerSecond
            let restart = start + v2.perEvent * (n - 1)
            let windows = ((n - 1) / 1000).rounded(.down)
            rows.append(Row(who: "flannel 0.17 (v2)", steady: steady, watches: 1, restart: restart,
                            note: "2 listings at start, no periodic re-list; each watch 401 adds a listing (up to \(Int(windows)) per node "
                                + "when its watch falls out of the 1000-event window during the restart: +\(BenchFormat.number(listing.bytes * windows / 1e6, 1)) MB)"))
        }
        return rows
    }
}
