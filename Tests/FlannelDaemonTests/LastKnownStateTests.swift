@testable import FlannelDaemon
import Foundation
import Glibc
import Leases
import Logging
import NetTypes
import TestSupport
import Synchronization
import TestTraits
import Testing

@Suite("FlannelDaemonTests: which last known state may stand in for etcd at boot", .ownThreads)
struct LastKnownForBootTests {
    func write(_ state: LastKnownLeases, _ name: String) throws -> String {
        let path = "/tmp/fxdp-lkb-\(getpid())-\(name).json"
        try state.write(to: path)
        return path
    }

    func sample(expiresAt: Int64? = 2_000, reservation: Bool = false) throws -> LastKnownLeases {
        let config = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
        let own = Lease(subnet: IPv4Subnet(cidr: "10.5.3.0/24")!, attributes: .vxlan(publicIP: IPv4Address(192, 168, 1, 3), vni: 1,
                                                                                     vtepMAC: MACAddress("02:00:00:00:03:01")!),
                        isReservation: reservation)
        return LastKnownLeases(savedAt: 1_000, etcdAPI: .v2, config: config, own: own, ownExpiresAt: expiresAt, peers: [])
    }

    @Test("usable: our PublicIP, lease not expired (or a reservation); not: another IP, expired, missing, damaged, disabled")
    func choice() throws {
        let logger = Logger(label: "test")
        let me = IPv4Address(192, 168, 1, 3)
        let good = try write(try sample(), "good")
        defer { unlink(good) }
        #expect(Startup.lastKnownForBoot(path: good, publicIP: me, logger: logger, now: 1_999)?.own.subnet == IPv4Subnet(cidr: "10.5.3.0/24"))
        #expect(Startup.lastKnownForBoot(path: good, publicIP: me, logger: logger, now: 2_000) == nil, "expired")
        #expect(Startup.lastKnownForBoot(path: good, publicIP: IPv4Address(192, 168, 1, 4), logger: logger, now: 1_500) == nil, "another node's")
        let reserved = try write(try sample(expiresAt: nil, reservation: true), "reserved")
        defer { unlink(reserved) }
        #expect(Startup.lastKnownForBoot(path: reserved, publicIP: me, logger: logger, now: .max / 2) != nil)
        #expect(Startup.lastKnownForBoot(path: "", publicIP: me, logger: logger) == nil, "disabled")
        #expect(Startup.lastKnownForBoot(path: "/tmp/fxdp-lkb-none.json", publicIP: me, logger: logger) == nil)
        let damaged = "/tmp/fxdp-lkb-\(getpid())-damaged.json"
        try writeFile(damaged, "{\"format\":1")
        defer { unlink(damaged) }
        #expect(Startup.lastKnownForBoot(path: damaged, publicIP: me, logger: logger) == nil)
    }

    @Test("firstWithin: the body's value when it is quick, nil at the deadline without waiting for a slow body")
    func firstWithin() async throws {
        #expect(try await Startup.firstWithin(.seconds(5)) { 7 } == 7)
        // A body that ignores cancellation, like a connect in progress (on its own thread: a
        // blocked pool thread would only measure the pool). Judged by order, not by the wall clock:
        // the body runs until the test has seen firstWithin's answer (or, should firstWithin wait
        // for the body, for two minutes), so the deadline's nil must come back while it still runs.
        let bodyFinished = Atomic<Bool>(false)
        let answered = Atomic<Bool>(false)
        let late: Int? = try await Startup.firstWithin(.milliseconds(200)) {
            await withCheckedContinuation { (done: CheckedContinuation<Int, Never>) in
                Thread.detachNewThread {
                    for _ in 0..<12_000 where !answered.load(ordering: .sequentiallyConsistent) { usleep(10_000) }
                    bodyFinished.store(true, ordering: .sequentiallyConsistent)
                    done.resume(returning: 1)
                }
            }
        }
        let finished = bodyFinished.load(ordering: .sequentiallyConsistent)
        answered.store(true, ordering: .sequentiallyConsistent)
        #expect(late == nil)
        #expect(!finished, "firstWithin waited for the body")
        await #expect(throws: DegradedBootError.self) {
            _ = try await Startup.firstWithin(.seconds(5)) { () async throws -> Int in
                throw DegradedBootError.configChanged(saved: "a", current: "b")
            }
        }
    }
}
