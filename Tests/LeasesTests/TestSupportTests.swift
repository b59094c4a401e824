import Glibc
import Synchronization
import TestSupport
import Testing

/// The test infrastructure the etcd tests stand on: port reservation and threads of their own.
@Suite("LeasesTests: test ports and executors")
struct TestSupportTests {
    @Test func reservedPortsAreDistinctLockedAndOutsideTheEphemeralRange() throws {
        let ports = try TestPorts.reserve(count: 20)
        #expect(Set(ports).count == 20)
        for port in ports {
            #expect((20000...32000).contains(port))
            #expect(TestPorts.isReserved(port))
            // Another process (or another open in this one) cannot take the lock.
            let fd = open("\(TestPorts.lockDirectory)/\(port)", O_RDWR | O_CLOEXEC)
            #expect(fd >= 0)
            #expect(flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
            close(fd)
        }
        #expect(Set(try TestPorts.reserve(count: 20)).isDisjoint(with: ports))
    }

    /// A blocking call on an `OwnThreadsExecutor` leaves the shared pool free: a task there keeps
    /// its 20 ms rhythm while both of our threads sleep in usleep.
    @Test func blockingOnOwnThreadsDoesNotStallTheSharedPool() async throws {
        let ticks = Mutex(0)
        let ticker = Task.detached {
            for _ in 0..<25 {
                try? await Task.sleep(for: .milliseconds(20))
                ticks.withLock { $0 += 1 }
            }
        }
        try await OwnThreadsExecutor.run(name: "blocking-probe") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 { group.addTask { usleep(1_000_000) } }
                try await group.waitForAll()
            }
        }
        #expect(ticks.withLock { $0 } >= 10, "the shared pool stalled while our threads blocked")
        await ticker.value
    }
}
