import Glibc
@testable import Leases
import Logging
import NetTypes
import TestSupport
import TestTraits
import Testing

/// Set in the child process that runs `outageWorker`.
let isolatedEnv = "FXLEASE_ISOLATED_OUTAGE_TEST"

let quietLogger: Logger = {
    var l = Logger(label: "leases-test")
    l.logLevel = .error
    return l
}()

@Suite("LeasesTests: watching peers against a real etcd", .ownThreads)
struct WatchTests {
    @Test(arguments: bothAPIs)
    func seesAddsChangesDeletesAndExpiry(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "watch") { net in
            let (config, _, me, own) = try await net.joinAsOwnNode()

            // A peer present before the watch starts, with a short TTL (long enough to be in the
            // first list on a loaded machine).
            let p1 = vxlanAttributes("192.0.2.2", mac: "0a:00:00:00:00:02")
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.2.0-24", value: p1.json, ttl: 8)

            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            guard case .snapshot(let initial) = peers.events.first else { Issue.record("first event is not a snapshot"); return }
            #expect(initial.map(\.subnet) == [subnet("10.5.2.0/24")])
            #expect(initial.first?.attributes == p1)
            #expect(peers.peers[own.subnet] == nil)

            // add
            let p2 = vxlanAttributes("192.0.2.3", mac: "0a:00:00:00:00:03")
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.3.0-24", value: p2.json, ttl: 60)
            try await eventually("add") { peers.peers[subnet("10.5.3.0/24")]?.attributes == p2 }
            // change (a restarted node with a new VtepMAC)
            let p2b = vxlanAttributes("192.0.2.3", mac: "0a:00:00:00:00:33")
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.3.0-24", value: p2b.json, ttl: 60)
            try await eventually("change") { peers.peers[subnet("10.5.3.0/24")]?.attributes == p2b }
            #expect(peers.events.contains(.changed(peers.peers[subnet("10.5.3.0/24")]!)))
            // delete
            if api == .v2 {
                try await net.server.etcdctlCheckedAsync(api: 2, ["rm", net.prefix + "/subnets/10.5.3.0-24"])
            } else {
                try await net.server.etcdctlCheckedAsync(api: 3, ["del", net.prefix + "/subnets/10.5.3.0-24"])
            }
            try await eventually("delete") { peers.peers[subnet("10.5.3.0/24")] == nil }
            // TTL expiry of the first peer
            try await eventually(timeout: .seconds(20), "expiry") { peers.peers[subnet("10.5.2.0/24")] == nil }
            #expect(peers.events.contains { if case .removed(let l) = $0 { l.subnet == subnet("10.5.2.0/24") } else { false } })
            // Our own renewals never show up as peer events.
            try await me.renewLease()
            try await Task.sleep(for: .milliseconds(300))
            #expect(!peers.events.contains { e in
                switch e {
                case .added(let l), .changed(let l), .removed(let l): l.subnet == own.subnet
                case .snapshot(let ls): ls.contains { $0.subnet == own.subnet }
                }
            })
        }
    }

    @Test(arguments: bothAPIs)
    func ownLeaseOverwrittenBySomeoneElseIsSignalled(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "taken") { net in
            let config = try net.config
            let me = net.manager(try net.registry())
            let own = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            // Our own rewrite (a renewal) is not a loss...
            try await me.renewLease()
            // ...another node's is.
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: own.subnet.leaseKey,
                                        value: vxlanAttributes("192.0.2.77").json, ttl: 60)
            var lost = me.ownLeaseLost.makeAsyncIterator()
            let event = await lost.next()
            #expect(event?.lease.subnet == own.subnet)
            #expect(event?.holder?.publicIP == IPv4Address("192.0.2.77"))
            // The other node's lease is never reported as our peer under our subnet's old owner.
            #expect(peers.peers[own.subnet] == nil)
        }
    }

    @Test(arguments: bothAPIs)
    func ownLeaseDeletedBySomeoneElseIsSignalled(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "lost") { net in
            let (config, registry, me, own) = try await net.joinAsOwnNode()
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            if api == .v2 {
                try await net.server.etcdctlCheckedAsync(api: 2, ["rm", net.prefix + "/subnets/" + own.subnet.leaseKey])
            } else {
                try await net.server.etcdctlCheckedAsync(api: 3, ["del", net.prefix + "/subnets/" + own.subnet.leaseKey])
            }
            var lost = me.ownLeaseLost.makeAsyncIterator()
            let event = await lost.next()
            #expect(event?.lease.subnet == own.subnet)
            #expect(event?.reason.contains("deleted") == true)
            await #expect(throws: LeaseLost.self) { try await me.runRenewLoop() }
            await #expect(throws: LeaseLost.self) { try await me.renewLease() }
        }
    }

    /// Compaction (v3) / a cleared event index (v2) at the registry level: a distinct error.
    @Test(arguments: bothAPIs)
    func historyUnavailableIsADistinctError(_ api: EtcdAPIVersion) async throws {
        try await withEtcd { server in
            let prefix = uniquePrefix("hist")
            let registry = try makeRegistry(server, api, prefix: prefix)
            let start = try await registry.listLeases().revision
            if api == .v3 {
                for i in 0..<5 { try await putRaw(registry, name: "10.5.\(i).0-24", value: "{}") }
                let rev = try await registry.listLeases().revision
                try await server.etcdctlCheckedAsync(api: 3, ["compact", String(rev)])
            } else {
                // v2 keeps the last 1000 events.
                for i in 0..<1010 { try await putRaw(registry, name: "10.5.\(i % 200).0-24", value: "{}") }
            }
            await #expect {
                for try await _ in registry.watchLeases(fromRevision: start + 1) {}
            } throws: { error in
                if case RegistryError.historyUnavailable = error { return true }
                return false
            }
        }
    }

    /// Runs `outageWorker` in a child process of this test binary, so that the CPU time it measures
    /// is its own: `swift test` runs every target's tests in one process, in parallel.
    @Test func outageRecoveryInAnIsolatedProcess() async throws {
        guard getenv(isolatedEnv) == nil else { return }
        var path = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &path, path.count - 1)
        try #require(n > 0)
        let exe = String(decoding: path[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let r = try await runCommandAsync([exe, "--testing-library", "swift-testing", "--filter", "outageWorker"],
                                          environment: ["\(isolatedEnv)=1"])
        let output = r.stdout + r.stderr
        #expect(r.status == 0, "child test process failed:\n\(output.suffix(4000))")
        #expect(output.contains("outageWorker(_:) with 2 test cases passed"), "\(output.suffix(4000))")
    }

    /// etcd goes away under a watch, comes back after writes and a compaction (v3) or more than 1000
    /// events (v2) happened: the watcher backs off without spinning (reconnect attempts, CPU time, log
    /// lines), then re-lists and diffs, missing no add or remove.
    @Test(.enabled(if: getenv(isolatedEnv) != nil, "runs in the child process outageRecoveryInAnIsolatedProcess starts"),
          arguments: bothAPIs)
    func outageWorker(_ api: EtcdAPIVersion) async throws {
        try await withEtcd(exclusive: true) { server in
            let prefix = uniquePrefix("outage")
            try await writeConfig(server, api, prefix: prefix, vxlanConfigJSON)
            let config = try NetworkConfig.parse(vxlanConfigJSON)
            let counters = LeaseCounters()
            let registry = try makeRegistry(server, api, prefix: prefix, counters: counters)
            var options = fastOptions()
            options.backoffInitial = .milliseconds(100)
            options.backoffMax = .seconds(5)
            let log = CollectedLines()
            let me = SubnetManager(registry: registry, counters: counters, options: options, logger: log.logger(level: .warning))
            _ = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            for i in 2...4 {
                try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.\(i).0-24",
                                      value: vxlanAttributes("192.0.2.\(i)").json, ttl: 600)
            }
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.peers.count == 3 }

            await server.stopAsync()
            let cpuBefore = processCPUTime()
            let wallBefore = ContinuousClock.now
            try await Task.sleep(for: .seconds(3))
            let cpu = processCPUTime() - cpuBefore
            let wall = ContinuousClock.now - wallBefore
            // Backoff 0.1+0.2+0.4+0.8+1.6 s: a handful of attempts in 3 s, not a spin.
            let failedAttempts = counters.snapshot().watchReconnects
            #expect(failedAttempts <= 8)
            // This child process runs nothing else meanwhile (exclusive): a busy loop would burn ~1 s per second.
            #expect(cpu < wall * 0.1, "CPU \(cpu) during \(wall) of etcd outage")
            // One log line per error class per interval (5 s here), not one per attempt.
            let watchLines = log.all.filter { $0.contains("lease watch") }
            #expect(failedAttempts >= 3)
            #expect(watchLines.count <= 2, "\(watchLines)")

            // While the watcher keeps knocking on the old port, etcd runs where only this test
            // reaches it: leases change and the history the watcher would resume from disappears.
            let p5 = vxlanAttributes("192.0.2.5")
            try await server.whileOnlyTheTestReaches {
                if api == .v3 {
                    try await server.etcdctlCheckedAsync(api: 3, ["del", prefix + "/subnets/10.5.2.0-24"])
                    try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.5.0-24", value: p5.json, ttl: 600)
                    let rev = try await makeRegistry(server, .v3, prefix: prefix).listLeases().revision
                    try await server.etcdctlCheckedAsync(api: 3, ["compact", String(rev)])
                } else {
                    // Push the index the watcher resumes from out of v2's 1000-event window (other
                    // keys, outside our prefix), then remove and add.
                    let noise = try makeRegistry(server, .v2, prefix: uniquePrefix("noise"))
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for w in 0..<8 {
                            group.addTask { for i in 0..<130 { try await putRaw(noise, name: "n\(w)-\(i)", value: "x") } }
                        }
                        try await group.waitForAll()
                    }
                    try await server.etcdctlCheckedAsync(api: 2, ["rm", prefix + "/subnets/10.5.2.0-24"])
                    try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.5.0-24", value: p5.json, ttl: 600)
                }
            }
            try await eventually(timeout: .seconds(15), "re-list after the outage") {
                Set(peers.peers.keys) == [subnet("10.5.3.0/24"), subnet("10.5.4.0/24"), subnet("10.5.5.0/24")]
            }
            let s = counters.snapshot()
            #expect(s.historyRelists >= 1, "\(s)")
            #expect(s.watchReconnects >= 1)
            #expect(peers.events.contains(.added(peers.peers[subnet("10.5.5.0/24")]!)))
            #expect(peers.events.contains { if case .removed(let l) = $0 { l.subnet == subnet("10.5.2.0/24") } else { false } })

            // And the watch is live again.
            let p6 = vxlanAttributes("192.0.2.6")
            try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.6.0-24", value: p6.json, ttl: 600)
            try await eventually("live again") { peers.peers[subnet("10.5.6.0/24")] != nil }
        }
    }

    /// v3 progress notifications move the resume point: a quiet prefix on a busy, compacting etcd
    /// reconnects after an outage without a re-list. (etcd's interval is 10 min; 500 ms here.)
    @Test func progressNotificationsMoveTheResumePoint() async throws {
        try await withEtcd(extraArguments: ["--experimental-watch-progress-notify-interval=300ms"]) { server in
            let prefix = uniquePrefix("progress")
            try await writeConfig(server, .v3, prefix: prefix, vxlanConfigJSON)
            let config = try NetworkConfig.parse(vxlanConfigJSON)
            let counters = LeaseCounters()
            let registry = try makeRegistry(server, .v3, prefix: prefix, counters: counters)
            let me = SubnetManager(registry: registry, counters: counters, options: fastOptions(), logger: quietLogger)
            _ = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }

            // Busy elsewhere in etcd, then compacted, while our prefix stays quiet.
            let noise = try makeRegistry(server, .v3, prefix: uniquePrefix("busy"))
            for i in 0..<30 { try await putRaw(noise, name: "n\(i)", value: "x") }
            try await server.etcdctlCheckedAsync(api: 3, ["compact", String(try await noise.listLeases().revision)])
            try await Task.sleep(for: .seconds(1))  // progress notifications past the compaction
            try await server.restart()
            try await etcdctlWriteLease(server, .v3, prefix: prefix, name: "10.5.9.0-24", value: vxlanAttributes("192.0.2.9").json, ttl: 60)
            try await eventually("event after the reconnect") { peers.peers[subnet("10.5.9.0/24")] != nil }
            let snap = counters.snapshot()
            #expect(snap.watchReconnects >= 1, "\(snap)")
            #expect(snap.historyRelists == 0, "\(snap)")
        }
    }

    /// A watch that loses events (here: a real registry whose watch drops one key's changes) is
    /// repaired by the periodic re-list.
    @Test(arguments: bothAPIs)
    func periodicRelistRepairsWhatTheWatchMissed(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "repair") { net in
            let config = try net.config
            let counters = LeaseCounters()
            let lossy = WatchDroppingRegistry(try net.registry(counters: counters), dropping: "10.5.11.0-24")
            var options = fastOptions()
            options.relistInterval = .seconds(3)
            let me = net.manager(lossy, counters: counters, options: options)
            _ = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.11.0-24", value: vxlanAttributes("192.0.2.11").json, ttl: 60)
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.12.0-24", value: vxlanAttributes("192.0.2.12").json, ttl: 60)
            try await eventually("watched add") { peers.peers[subnet("10.5.12.0/24")] != nil }
            // The watch lost it. (On a slow machine the 3 s re-list may already have brought it
            // back by now: then the re-list, not the watch, must be the one that did.)
            if peers.peers[subnet("10.5.11.0/24")] != nil {
                try await eventually(timeout: .seconds(2), "the early repair counted as a re-list repair") {
                    counters.snapshot().repairedByRelist >= 1
                }
            }
            try await eventually(timeout: .seconds(8), "repair by re-list") { peers.peers[subnet("10.5.11.0/24")] != nil }
            #expect(counters.snapshot().repairedByRelist == 1)
            #expect(peers.events.contains(.added(peers.peers[subnet("10.5.11.0/24")]!)))
        }
    }

    @Test(arguments: bothAPIs)
    func periodicRelistRepairsAndStaysQuiet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "relist") { net in
            let config = try net.config
            let counters = LeaseCounters()
            var options = fastOptions()
            options.relistInterval = .milliseconds(500)
            let me = SubnetManager(registry: try net.registry(counters: counters),
                                   counters: counters, options: options, logger: quietLogger)
            _ = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.7.0-24", value: vxlanAttributes("192.0.2.7").json, ttl: 600)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.peers.count == 1 }
            try await eventually("two re-lists") { counters.snapshot().periodicRelists >= 2 }
            // Nothing was missed, so re-lists report nothing.
            #expect(peers.events.count == 1)
            #expect(counters.snapshot().repairedByRelist == 0)
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.8.0-24", value: vxlanAttributes("192.0.2.8").json, ttl: 600)
            try await eventually("add after re-lists") { peers.peers.count == 2 }
        }
    }
}

/// A real registry whose watch stream drops every change of one key (a lossy watch, for the repair test).
struct WatchDroppingRegistry: SubnetRegistry {
    let inner: any SubnetRegistry
    let dropped: String
    init(_ inner: any SubnetRegistry, dropping name: String) {
        self.inner = inner
        dropped = name
    }

    var apiVersion: EtcdAPIVersion { inner.apiVersion }
    var prefix: String { inner.prefix }
    func getConfigText() async throws -> String { try await inner.getConfigText() }
    func listLeases(_ body: (LeaseRecord) throws -> Void) async throws -> Int64 { try await inner.listLeases(body) }
    func createLease(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        try await inner.createLease(name: name, value: value, ttl: ttl)
    }
    func updateLease(name: String, value: String, ttl: Duration?, expectedRevision: Int64) async throws -> Int64 {
        try await inner.updateLease(name: name, value: value, ttl: ttl, expectedRevision: expectedRevision)
    }
    func getLease(name: String) async throws -> LeaseRecord? { try await inner.getLease(name: name) }
    func deleteLease(name: String, expectedRevision: Int64?) async throws {
        try await inner.deleteLease(name: name, expectedRevision: expectedRevision)
    }
    func watchLeases(fromRevision: Int64) -> AsyncThrowingStream<[LeaseWatchEvent], any Error> {
        let upstream = inner.watchLeases(fromRevision: fromRevision)
        let dropped = self.dropped
        let (stream, continuation) = AsyncThrowingStream<[LeaseWatchEvent], any Error>.makeStream()
        let task = Task {
            do {
                for try await batch in upstream {
                    continuation.yield(batch.filter { event in
                        switch event {
                        case .put(let r): r.name != dropped
                        case .delete(let name, _, _): name != dropped
                        case .progress: true
                        }
                    })
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }
}
