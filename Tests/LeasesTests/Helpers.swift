import Glibc
import Logging
@testable import Leases
import NetTypes
import Synchronization
import TestSupport
import TestTraits
import Testing

/// The API variants every etcd test runs against.
let bothAPIs: [EtcdAPIVersion] = [.v2, .v3]

/// Starts a dedicated etcd for one test and removes it afterwards, also when the test fails.
/// `exclusive`: no other etcd test of this process runs meanwhile (CPU-time measurements).
func withEtcd<T>(tls: EtcdServerTLS? = nil, etcdctlTLS: (ca: String, cert: String, key: String)? = nil,
                 exclusive: Bool = false, extraArguments: [String] = [],
                 _ body: (EtcdServer) async throws -> T) async throws -> T {
    await TestGate.shared.enter(exclusive: exclusive)
    defer { Task { await TestGate.shared.leave(exclusive: exclusive) } }
    let server = try await EtcdServer.start(tag: "lease", tls: tls, etcdctlTLS: etcdctlTLS, extraArguments: extraArguments)
    defer { server.cleanup() }
    return try await body(server)
}

/// Runs `body` while `manager`'s renew loop runs as a child task (so it shares the test's
/// executor, see `.ownThreads`), then cancels the loop.
func withRenewLoop(_ manager: SubnetManager, _ body: () async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await manager.runRenewLoop() }
        defer { group.cancelAll() }
        try await body()
    }
}

/// A readers/writer gate: ordinary tests share it, an exclusive test waits for them to finish and
/// holds new ones back (writer first, so it cannot starve).
actor TestGate {
    static let shared = TestGate()
    private var shared = 0
    private var exclusiveActive = false
    private var exclusiveWaiting = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func enter(exclusive: Bool) async {
        if exclusive { exclusiveWaiting += 1 }
        while exclusive ? (shared > 0 || exclusiveActive) : (exclusiveActive || exclusiveWaiting > 0) {
            await withCheckedContinuation { waiters.append($0) }
        }
        if exclusive {
            exclusiveWaiting -= 1
            exclusiveActive = true
        } else {
            shared += 1
        }
    }

    func leave(exclusive: Bool) {
        if exclusive { exclusiveActive = false } else { shared -= 1 }
        let w = waiters
        waiters = []
        w.forEach { $0.resume() }
    }
}

func uniquePrefix(_ name: String) -> String { "/fxtest-\(name)-\(getpid())" }

/// One test's flannel network: its own etcd, a fresh prefix holding the network config (written
/// with etcdctl, the way flannel's documentation does), and the ways the test reaches them.
struct TestNetwork {
    let server: EtcdServer
    let api: EtcdAPIVersion
    let prefix: String
    let configJSON: String

    /// The config as the daemon parses it.
    var config: NetworkConfig { get throws { try NetworkConfig.parse(configJSON) } }

    func registry(counters: LeaseCounters = LeaseCounters(),
                  configure: (inout EtcdClientOptions) -> Void = { _ in }) throws -> any SubnetRegistry {
        try makeRegistry(server, api, prefix: prefix, counters: counters, configure: configure)
    }

    /// A node's subnet manager on `registry`, with the tests' short timers unless `options` says otherwise.
    func manager(_ registry: any SubnetRegistry, counters: LeaseCounters = LeaseCounters(),
                 options: SubnetManagerOptions = fastOptions()) -> SubnetManager {
        SubnetManager(registry: registry, counters: counters, options: options, logger: quietLogger)
    }

    /// The node under test (192.0.2.1) holding its lease at `ownTestSubnet`, for the tests that
    /// watch the other nodes' leases from it: the config it took the lease under, its registry and
    /// manager (both counting into the manager's `counters`), and the lease.
    func joinAsOwnNode() async throws -> (config: NetworkConfig, registry: any SubnetRegistry, manager: SubnetManager, lease: Lease) {
        let config = try config
        let counters = LeaseCounters()
        let registry = try registry(counters: counters)
        let manager = manager(registry, counters: counters)
        let lease = try await manager.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
        return (config, registry, manager, lease)
    }
}

/// Runs `body` with a dedicated etcd holding `configJSON` under a fresh prefix named after `name`.
func withNetwork<T>(_ api: EtcdAPIVersion, _ name: String, config configJSON: String = vxlanConfigJSON,
                    _ body: (TestNetwork) async throws -> T) async throws -> T {
    try await withEtcd { server in
        let prefix = uniquePrefix(name)
        try await writeConfig(server, api, prefix: prefix, configJSON)
        return try await body(TestNetwork(server: server, api: api, prefix: prefix, configJSON: configJSON))
    }
}

func makeRegistry(_ server: EtcdServer, _ api: EtcdAPIVersion, prefix: String,
                  counters: LeaseCounters = LeaseCounters(), configure: (inout EtcdClientOptions) -> Void = { _ in }) throws -> any SubnetRegistry {
    var options = EtcdClientOptions(endpoints: [server.clientURL], prefix: prefix, apiVersion: api)
    options.requestTimeout = .seconds(5)
    options.connectTimeout = .seconds(2)
    configure(&options)
    return try EtcdRegistryFactory.make(api: api, options: options, counters: counters)
}

/// Writes `<prefix>/config` with etcdctl, the way flannel's documentation does.
func writeConfig(_ server: EtcdServer, _ api: EtcdAPIVersion, prefix: String, _ json: String) async throws {
    if api == .v2 {
        try await server.etcdctlCheckedAsync(api: 2, ["set", prefix + "/config", json])
    } else {
        try await server.etcdctlCheckedAsync(api: 3, ["put", prefix + "/config", json])
    }
}

/// Writes a lease key as flannel does: v2 `set --ttl`, v3 `lease grant` + `put --lease`. ttl nil: reservation.
func etcdctlWriteLease(_ server: EtcdServer, _ api: EtcdAPIVersion, prefix: String, name: String, value: String, ttl: Int?) async throws {
    let key = prefix + "/subnets/" + name
    if api == .v2 {
        try await server.etcdctlCheckedAsync(api: 2, ["set"] + (ttl.map { ["--ttl", String($0)] } ?? []) + [key, value])
    } else if let ttl {
        let out = try await server.etcdctlCheckedAsync(api: 3, ["lease", "grant", String(ttl)])
        // "lease 694d7b2b2b2b2b2b granted with TTL(60s)"
        let id = out.split(separator: " ")[1]
        try await server.etcdctlCheckedAsync(api: 3, ["put", "--lease=\(id)", key, value])
    } else {
        try await server.etcdctlCheckedAsync(api: 3, ["put", key, value])
    }
}

/// Writes any value (hostile tests) through the registry's raw hook.
func putRaw(_ registry: any SubnetRegistry, name: String, value: String, ttl: Duration? = nil) async throws {
    if let r = registry as? EtcdV2Registry {
        _ = try await r.putRaw(name: name, value: value, ttl: ttl)
    } else if let r = registry as? EtcdV3Registry {
        _ = try await r.putRaw(name: name, value: value, ttl: ttl)
    }
}

func fastOptions(ttl: Duration = .seconds(30)) -> SubnetManagerOptions {
    var o = SubnetManagerOptions()
    o.leaseTTL = ttl
    o.renewMargin = ttl / 3
    o.renewRetryInterval = .milliseconds(500)
    o.relistInterval = .seconds(60)
    o.backoffInitial = .milliseconds(100)
    o.backoffMax = .seconds(1)
    o.errorLogInterval = .seconds(5)
    return o
}

let vxlanConfigJSON = #"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#

func vxlanAttributes(_ ip: String, mac: String = "c6:d2:32:6f:8f:44") -> LeaseAttributes {
    .vxlan(publicIP: IPv4Address(ip)!, vni: 1, vtepMAC: MACAddress(mac)!)
}

func subnet(_ cidr: String) -> IPv4Subnet { IPv4Subnet(cidr: cidr)! }

/// Collects a peer stream and keeps the resulting peer set.
final class PeerCollector: Sendable {
    final class Box: Sendable {
        let mutex = Mutex<(events: [PeerEvent], peers: [IPv4Subnet: Lease], bySlot: [String: Lease])>(([], [:], [:]))
    }
    private let box = Box()
    private let task: Task<Void, Never>

    init(_ stream: AsyncStream<PeerEvent>) {
        let box = self.box
        task = Task {
            for await event in stream {
                box.mutex.withLock { s in
                    s.events.append(event)
                    switch event {
                    case .snapshot(let leases):
                        s.peers = Dictionary(leases.map { ($0.subnet, $0) }, uniquingKeysWith: { a, _ in a })
                        s.bySlot = Dictionary(uniqueKeysWithValues: leases.map { (PeerCollector.slot($0), $0) })
                    case .added(let l), .changed(let l):
                        s.peers[l.subnet] = l
                        s.bySlot[PeerCollector.slot(l)] = l
                    case .removed(let l):
                        s.peers[l.subnet] = nil
                        s.bySlot[PeerCollector.slot(l)] = nil
                    }
                }
            }
        }
    }

    /// What a peer stands for: its IPv4 subnet, or its IPv6 subnet in an IPv6-only network (where
    /// every IPv4 half is 0.0.0.0/0).
    static func slot(_ lease: Lease) -> String {
        lease.subnet.prefixLength == 0 ? lease.ipv6Subnet?.description ?? "" : lease.subnet.description
    }

    var events: [PeerEvent] { box.mutex.withLock { $0.events } }
    var peers: [IPv4Subnet: Lease] { box.mutex.withLock { $0.peers } }
    var bySlot: [String: Lease] { box.mutex.withLock { $0.bySlot } }
    var gotSnapshot: Bool { events.contains { if case .snapshot = $0 { true } else { false } } }

    func stop() { task.cancel() }
    deinit { task.cancel() }
}

/// Polls `condition` until it holds or `timeout` passes. The timeout is a hang net, not a deadline:
/// at load 40 a watch took more than 10 s to deliver its first snapshot.
func eventually(timeout: Duration = .seconds(60), _ what: String = "", _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("timed out after \(timeout) waiting for \(what)")
    throw EtcdServerError("timed out waiting for \(what)")
}

/// CPU time (user + system) this process has used.
func processCPUTime() -> Duration {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let micros = Int64(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1_000_000 + Int64(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
    return .microseconds(micros)
}

/// A swift-log handler that keeps the lines, to check log rate limits.
final class CollectedLines: Sendable {
    let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }

    func logger(level: Logger.Level = .info) -> Logger {
        var l = Logger(label: "leases-test-collect") { _ in CollectingHandler(sink: self) }
        l.logLevel = level
        return l
    }
}

struct CollectingHandler: LogHandler {
    let sink: CollectedLines
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        sink.lines.withLock { $0.append("\(event.level) \(event.message)") }
    }
}

/// Where tests that write peers at 10.5.1-199 put their own node (a random pick could collide).
let ownTestSubnet = IPv4Subnet(cidr: "10.5.200.0/24")!
