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
// pool unless created with `Task(executorPreference:)`.)

import Glibc

public final class OwnThreadsExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: `queue` and `stopping` are only touched with `mutex` held; the pthread objects
    // are allocated once and freed in deinit, after every thread has been joined.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Jobs, and whether each came from the shared pool (`widenSharedPool`): those run on the
    /// generic executor, as the shared pool would run them.
    private var queue: [(job: UnownedJob, global: Bool)] = []
    private var head = 0
    private var stopping = false
    private var threads: [pthread_t] = []
    public let name: String

    /// Starts `threads` threads (two is what the shared pool has on a 2-core machine, so tests that
    /// run concurrent child tasks keep working).
    public init(name: String, threads count: Int = 2) {
        self.name = name
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        for _ in 0..<max(1, count) {
            let context = Unmanaged.passRetained(self).toOpaque()
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { raw in
                let executor = Unmanaged<OwnThreadsExecutor>.fromOpaque(raw!).takeRetainedValue()
                executor.work()
                return nil
            }, context)
            if rc == 0 {
                pthread_detach(thread)
                threads.append(thread)
            } else {
                Unmanaged<OwnThreadsExecutor>.fromOpaque(context).release()
            }
        }
    }

    /// True when called on one of this executor's threads.
    public var isCurrentThreadOwn: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return threads.contains { pthread_equal($0, pthread_self()) != 0 }
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(mutex)
        if stopping || threads.isEmpty {
            pthread_mutex_unlock(mutex)
            // Late work (nothing should arrive after `shutdown`) still runs, on the shared pool.
            Task.detached { job.runSynchronously(on: globalConcurrentExecutor.asUnownedTaskExecutor()) }
            return
        }
        queue.append((job, false))
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    fileprivate func enqueueGlobal(_ job: UnownedJob) {
        pthread_mutex_lock(mutex)
        queue.append((job, true))
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func work() {
        while true {
            pthread_mutex_lock(mutex)
            while head == queue.count && !stopping { pthread_cond_wait(condition, mutex) }
            if head == queue.count {
                pthread_mutex_unlock(mutex)
                return
            }
            let (job, global) = queue[head]
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(mutex)
            if global {
                job.runSynchronously(on: genericExecutor)
            } else {
                job.runSynchronously(on: asUnownedTaskExecutor())
            }
        }
    }

    /// The threads finish what is queued, then exit (each holds a reference until then, so this
    /// may be called from one of them). Call once the work that preferred this executor returned.
    public func shutdown() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with this kind of executor preferred, then shuts it down.
    public static func run<T>(name: String, threads: Int = 2, _ body: () async throws -> T) async throws -> T {
        let executor = OwnThreadsExecutor(name: name, threads: threads)
        defer { executor.shutdown() }
        return try await withTaskExecutorPreference(executor) { try await body() }
    }
}

// MARK: - widening the shared pool for the whole test process

/// The runtime's "no particular executor" (all zero), how its own pool runs global jobs.
private let genericExecutor = unsafeBitCast((Int(0), Int(0)), to: UnownedSerialExecutor.self)

private typealias GlobalEnqueue = @convention(thin) (UnownedJob) -> Void
private typealias GlobalEnqueueHook = @convention(thin) (UnownedJob, GlobalEnqueue) -> Void

private let widePool = OwnThreadsExecutor(name: "fxdp-test-shared-pool", threads: 24)

private let wideningInstalled: Bool = {
    guard MemoryLayout<UnownedSerialExecutor>.size == 2 * MemoryLayout<Int>.size,
          let symbol = dlsym(dlopen(nil, RTLD_NOW), "swift_task_enqueueGlobal_hook") else { return false }
    let hook: GlobalEnqueueHook = { job, _ in widePool.enqueueGlobal(job) }
    symbol.assumingMemoryBound(to: GlobalEnqueueHook?.self).pointee = hook
    return true
}()

extension OwnThreadsExecutor {
    /// Test processes only: from now on, work for Swift's shared (global) pool runs on 24 threads
    /// of our own instead of one per core. On a 2-core machine the shared pool has 2 threads, and
    /// `swift test` runs every target's tests in one process: a few synchronous tests driving
    /// `ip`, iperf3 or waitpid held both for up to 30 s (measured), and every async test's
    /// timers, watches and renew loops waited behind them. Jobs already queued on the old pool
    /// finish there. Uses the runtime's documented enqueue hook (what SwiftNIO's "take over the
    /// global executor" uses). Returns false if the hook is not available.
    @discardableResult
    public static func widenSharedPool() -> Bool { wideningInstalled }
}
