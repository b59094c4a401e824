import Glibc
import RuntimeSupport
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

    /// A blocking call made through a DedicatedThreadExecutor runs on that thread, named as given;
    /// an actor that names it as its executor runs there too.
    @Test func dedicatedThreadRunsTheBlockingCall() async throws {
        let executor = DedicatedThreadExecutor(name: "fxdp-probe")
        defer { executor.shutdown() }
        let name = await executor.run { SystemCall.readSmallFile("/proc/thread-self/comm")?.trimmingTrailingNewlines() }
        #expect(name == "fxdp-probe")
        #expect(try await executor.run { () throws -> Int in 42 } == 42)
        let probe = ThreadProbe(executor)
        #expect(await probe.threadName() == "fxdp-probe")
    }

    /// The body and its child tasks run on the executor's own threads, so a blocking call there
    /// holds none of the shared pool's threads (whatever else the process is doing meanwhile).
    @Test func bodyAndChildTasksRunOnOwnThreads() async throws {
        let executor = OwnThreadsExecutor(name: "probe")
        defer { executor.shutdown() }
        let seen = try await withTaskExecutorPreference(executor) {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<2 { group.addTask { usleep(100_000); return executor.isCurrentThreadOwn } }
                var seen = [executor.isCurrentThreadOwn]
                for try await own in group { seen.append(own) }
                try await Task.sleep(for: .milliseconds(10))
                seen.append(executor.isCurrentThreadOwn)  // after a suspension, still ours
                return seen
            }
        }
        #expect(seen == [true, true, true, true], "\(seen)")
    }
}

/// An actor on a dedicated thread (as the reconciler is).
private actor ThreadProbe {
    let executor: DedicatedThreadExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
    init(_ executor: DedicatedThreadExecutor) { self.executor = executor }
    func threadName() -> String? { SystemCall.readSmallFile("/proc/thread-self/comm")?.trimmingTrailingNewlines() }
}
