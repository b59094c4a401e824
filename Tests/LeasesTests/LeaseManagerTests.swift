import Glibc
@testable import Leases
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("LeasesTests: subnet manager against a real etcd", .ownThreads)
struct LeaseManagerTests {
    @Test(arguments: bothAPIs)
    func acquireRenewRelease(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "arr") { net in
            let registry = try net.registry()
            let manager = net.manager(registry)
            let config = try await manager.getConfig()
            #expect(config.network == subnet("10.5.0.0/16"))

            let attrs = vxlanAttributes("192.0.2.10")
            let lease = try await manager.acquireLease(config: config, attributes: attrs)
            #expect(config.allows(lease.subnet))
            #expect(!lease.isReservation)

            // Stored exactly as flannel writes it.
            let key = net.prefix + "/subnets/" + lease.subnet.leaseKey
            let stored = api == .v2
                ? try await net.server.etcdctlCheckedAsync(api: 2, ["get", key])
                : try await net.server.etcdctlCheckedAsync(api: 3, ["get", "--print-value-only", key])
            #expect(stored.trimmingCharacters(in: "\n") == attrs.json)
            if api == .v3 {
                let out = try await net.server.etcdctlCheckedAsync(api: 3, ["get", "-w", "fields", key])
                #expect(out.contains("\"Lease\" : ") && !out.contains("\"Lease\" : 0\n"))
            }

            let renewed = try await manager.renewLease()
            #expect(renewed.subnet == lease.subnet)
            #expect(renewed.revision > lease.revision)
            let rec = try #require(try await registry.getLease(name: lease.subnet.leaseKey))
            #expect(rec.valueText == attrs.json)
            #expect(!rec.isReservation)

            try await manager.releaseLease()
            #expect(try await registry.getLease(name: lease.subnet.leaseKey) == nil)
        }
    }

    @Test(arguments: bothAPIs)
    func renewLoopKeepsShortLeaseAlive(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "loop") { net in
            let registry = try net.registry()
            var options = fastOptions(ttl: .seconds(3))
            options.renewMargin = .seconds(2)
            let manager = net.manager(registry, options: options)
            let config = try await manager.getConfig()
            let lease = try await manager.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.11"))
            try await withRenewLoop(manager) {
                try await Task.sleep(for: .seconds(5))
                // Still there after more than the TTL, renewed at least twice.
                #expect(try await registry.getLease(name: lease.subnet.leaseKey) != nil)
                #expect(manager.counters.snapshot().renewals >= 2)
            }
        }
    }

    /// etcd away when a renewal is due: retried every `renewRetryInterval`, renewed once etcd is back.
    @Test(arguments: bothAPIs)
    func renewLoopRetriesThroughAnOutage(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "renewout") { net in
            // etcd being down is a refused connection, seen at once: no short timeout needed.
            let registry = try net.registry()
            var options = fastOptions(ttl: .seconds(6))
            options.renewMargin = .seconds(3)  // due 3 s after acquiring (the margin is capped at TTL/2)
            options.renewRetryInterval = .milliseconds(300)
            let manager = net.manager(registry, options: options)
            let lease = try await manager.acquireLease(config: try net.config,
                                                       attributes: vxlanAttributes("192.0.2.12"))
            await net.server.stopAsync()
            try await withRenewLoop(manager) {
                try await eventually("failed renewals") { manager.counters.snapshot().renewalFailures >= 2 }
                try await net.server.restart()
                try await eventually(timeout: .seconds(10), "renewal after the outage") { manager.counters.snapshot().renewals >= 1 }
                let rec = try #require(try await registry.getLease(name: lease.subnet.leaseKey))
                #expect(rec.revision > lease.revision)
                #expect(rec.valueText == vxlanAttributes("192.0.2.12").json)
            }
        }
    }

    @Test(arguments: bothAPIs)
    func racingManagersNeverShareASubnet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "race", config: #"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#) { net in
            // /28 with /30 subnets: exactly three can be handed out (.4, .8, .12).
            let counters = LeaseCounters()
            let config = try await net.registry().getConfig()
            for round in 0..<8 {
                let managers = try (1...3).map { _ in
                    net.manager(try net.registry(), counters: counters)
                }
                let leases = try await withThrowingTaskGroup(of: Lease.self) { group in
                    for (i, m) in managers.enumerated() {
                        group.addTask { try await m.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.\(i + 1)")) }
                    }
                    return try await group.reduce(into: [Lease]()) { $0.append($1) }
                }
                #expect(Set(leases.map(\.subnet)).count == 3, "round \(round): \(leases.map(\.subnet))")
                // A fourth node finds nothing free.
                let fourth = net.manager(try net.registry())
                await #expect(throws: AcquireError.self) {
                    _ = try await fourth.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.99"))
                }
                for m in managers { try await m.releaseLease() }
            }
            // The races really happened (some CAS lost) and were retried.
            #expect(counters.snapshot().acquireConflicts > 0)
        }
    }

    @Test(arguments: bothAPIs)
    func reusesOwnLeaseThenPreviousSubnet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "reuse") { net in
            let config = try net.config
            let first = net.manager(try net.registry())
            let lease = try await first.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.20"),
                                                    previousSubnet: subnet("10.5.150.0/24"))
            #expect(lease.subnet == subnet("10.5.150.0/24"))

            // Restart of the same node (same PublicIP, new VtepMAC): same subnet, value updated.
            let again = net.manager(try net.registry())
            let newAttrs = vxlanAttributes("192.0.2.20", mac: "0a:00:00:00:00:01")
            let reused = try await again.acquireLease(config: config, attributes: newAttrs, previousSubnet: subnet("10.5.200.0/24"))
            #expect(reused.subnet == lease.subnet)
            #expect(try await again.registry.getLease(name: lease.subnet.leaseKey)?.valueText == newAttrs.json)

            // Another node with a previous subnet.env gets that subnet back if free...
            let other = net.manager(try net.registry())
            #expect(try await other.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.21"),
                                                  previousSubnet: subnet("10.5.77.0/24")).subnet == subnet("10.5.77.0/24"))
            // ...but never when someone holds it, nor when it does not fit the config.
            let third = net.manager(try net.registry())
            let l3 = try await third.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.22"),
                                                  previousSubnet: subnet("10.5.77.0/24"))
            #expect(l3.subnet != subnet("10.5.77.0/24") && l3.subnet != lease.subnet)
            let fourth = net.manager(try net.registry())
            let l4 = try await fourth.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.23"),
                                                  previousSubnet: subnet("10.6.1.0/24"))
            #expect(config.allows(l4.subnet))
            // After a config change our lease of the old size is deleted and a new one acquired.
            let newConfig = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#)
            let resized = try await again.acquireLease(config: newConfig, attributes: newAttrs)
            #expect(resized.subnet.prefixLength == 25)
            #expect(try await again.registry.getLease(name: lease.subnet.leaseKey) == nil)
            // Random picks stay among the first 100 free subnets.
            #expect(l4.subnet.address.value - config.subnetMin.value < 104 << 8)
        }
    }

    @Test(arguments: bothAPIs)
    func reservationsAreRespectedAndKeptWithoutTTL(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "resv", config: #"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#) { net in
            let config = try net.config
            // An administrator reserves .4 and .8 (no TTL), as flannel's docs describe.
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.9.0.4-30", value: #"{"PublicIP":"192.0.2.40"}"#, ttl: nil)
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.9.0.8-30", value: #"{"PublicIP":"192.0.2.41"}"#, ttl: nil)
            for _ in 0..<5 {
                let m = net.manager(try net.registry())
                let l = try await m.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.50"),
                                                 previousSubnet: subnet("10.9.0.4/30"))
                #expect(l.subnet == subnet("10.9.0.12/30"))
                try await m.releaseLease()
            }
            // The node the reservation names gets it, and it stays TTL-less.
            let owner = net.manager(try net.registry())
            let attrs = vxlanAttributes("192.0.2.41")
            let l = try await owner.acquireLease(config: config, attributes: attrs)
            #expect(l.subnet == subnet("10.9.0.8/30"))
            #expect(l.isReservation)
            let rec = try #require(try await owner.registry.getLease(name: "10.9.0.8-30"))
            #expect(rec.isReservation)
            #expect(rec.valueText == attrs.json)
            try await owner.renewLease()
            #expect(try await owner.registry.getLease(name: "10.9.0.8-30")?.isReservation == true)
            if api == .v2 {
                #expect(!(try await net.server.etcdctlCheckedAsync(api: 2, ["-o", "extended", "get", net.prefix + "/subnets/10.9.0.8-30"])).contains("TTL: 1"))
            } else {
                #expect(try await net.server.etcdctlCheckedAsync(api: 3, ["get", "-w", "fields", net.prefix + "/subnets/10.9.0.8-30"]).contains("\"Lease\" : 0\n"))
            }
        }
    }

    @Test(arguments: bothAPIs)
    func renewalNeverOverwritesAnotherNodesSubnet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "steal") { net in
            let config = try net.config
            let registry = try net.registry()
            let m = net.manager(registry)
            let lease = try await m.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.60"))
            // Our lease expires unnoticed and another node takes the subnet.
            try await registry.deleteLease(name: lease.subnet.leaseKey, expectedRevision: nil)
            let thief = vxlanAttributes("192.0.2.61", mac: "0a:00:00:00:00:61")
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: lease.subnet.leaseKey, value: thief.json, ttl: 60)
            await #expect(throws: LeaseLost.self) { try await m.renewLease() }
            #expect(try await registry.getLease(name: lease.subnet.leaseKey)?.valueText == thief.json)
            var lostEvents = m.ownLeaseLost.makeAsyncIterator()
            let lost = await lostEvents.next()
            #expect(lost?.holder?.publicIP == IPv4Address("192.0.2.61"))
        }
    }

    @Test(arguments: bothAPIs)
    func expiredOwnLeaseIsRecreatedOnRenewal(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "recreate") { net in
            let config = try net.config
            let registry = try net.registry()
            let m = SubnetManager(registry: registry, options: fastOptions(ttl: .seconds(2)), logger: quietLogger)
            let lease = try await m.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.62"))
            try await eventually(timeout: .seconds(8), "lease expiry") {
                try await registry.getLease(name: lease.subnet.leaseKey) == nil
            }
            let renewed = try await m.renewLease()
            #expect(renewed.subnet == lease.subnet)
            #expect(try await registry.getLease(name: lease.subnet.leaseKey) != nil)
        }
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = self
        while s.last == set { s.removeLast() }
        return s
    }
}
