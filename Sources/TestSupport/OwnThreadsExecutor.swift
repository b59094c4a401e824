// A task executor with threads of its own, for tests.
//
// Why: `swift test` runs every target's tests in one process, and Swift's cooperative pool has one
// thread per core — two on CI. A test that blocks its thread (a synchronous test driving `ip`,
// iperf3 or waitpid, a blocking recv) takes half the pool for as long as it runs; measured in the
// full suite, a 50 ms `Task.sleep` woke up to 29 s late, and time-sensitive tests elsewhere (a
// 3-second lease renewed every second, a request timeout) failed for it. Running a test under
// `withTaskExecutorPreference(OwnThreadsExecutor(...))` puts its body, its child tasks and the
// default actors it calls on these threads instead: what it blocks is its own, and the shared
// pool's starvation does not delay it. (Unstructured `Task {}`s it creates still use the shared
// pool unless created with `Task(executorPreference:)`.) The code under test keeps its own
// blocking kernel calls off the shared pool too (RuntimeSupport's DedicatedThreadExecutor).

import RuntimeSupport

public final class OwnThreadsExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: the only state is the threads, themselves thread-safe.
    private let threads: DedicatedThreads
    public var name: String { threads.name }

    /// Starts `threads` threads (two is what the shared pool has on a 2-core machine, so tests that
    /// run concurrent child tasks keep working).
    public init(name: String, threads count: Int = 2) {
        threads = DedicatedThreads(name: name, threads: count)
    }

    /// True when called on one of this executor's threads.
    public var isCurrentThreadOwn: Bool { threads.isCurrentThreadOwn }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let queued = threads.submit { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }
        // Late work (nothing should arrive after `shutdown`) still runs, on the shared pool.
        if !queued {
            Task.detached { job.runSynchronously(on: globalConcurrentExecutor.asUnownedTaskExecutor()) }
        }
    }

    /// The threads finish what is queued, then exit (each holds a reference until then, so this
    /// may be called from one of them). Call once the work that preferred this executor returned.
    public func shutdown() {
        threads.shutdown()
    }

    /// Runs `body` with this kind of executor preferred, then shuts it down.
    public static func run<T>(name: String, threads: Int = 2, _ body: () async throws -> T) async throws -> T {
        let executor = OwnThreadsExecutor(name: name, threads: threads)
        defer { executor.shutdown() }
        return try await withTaskExecutorPreference(executor) { try await body() }
    }
}
