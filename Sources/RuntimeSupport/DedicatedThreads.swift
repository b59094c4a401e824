// Threads of our own, for work that must not run on Swift's shared cooperative pool.
//
// Why: the shared pool has one thread per core — two on a 2-core node. A call that blocks in the
// kernel (a map dump of 5000 peers, a netlink dump, a bpf syscall, a BPF object load) holds one of
// them for as long as it takes, and every timer, lease renewal, etcd watch and HTTP answer of the
// process waits behind it. Work queued here blocks only these threads.
//
// `DedicatedThreads` is a queue and the threads that drain it. `DedicatedThreadExecutor` is one such
// thread as a serial executor: an actor that calls into the kernel names it as its executor (the
// reconciler), and a task prefers it for a loop that does (the data path's upkeep services).

import Glibc

public final class DedicatedThreads: @unchecked Sendable {
    // @unchecked: `queue`, `head`, `stopping` and `threads` are only touched with `mutex` held; the
    // pthread objects are allocated once and freed in deinit, after every thread has returned.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [@Sendable () -> Void] = []
    private var head = 0
    private var stopping = false
    private var threads: [pthread_t] = []
    public let name: String

    /// Starts `count` threads named `name` (the kernel keeps 15 characters: `top -H` shows them).
    public init(name: String, threads count: Int) {
        self.name = name
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        for _ in 0..<max(1, count) {
            // Each thread holds a reference until it returns, so `shutdown` may come from one of them.
            var thread = pthread_t()
            guard PlainThread.create(&thread, { self.work() }) == 0 else { continue }
            pthread_detach(thread)
            threads.append(thread)
        }
    }

    /// Queues `work`; false (nothing queued) once `shutdown` was called or no thread could start.
    @discardableResult
    public func submit(_ work: @escaping @Sendable () -> Void) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        guard !stopping, !threads.isEmpty else { return false }
        queue.append(work)
        pthread_cond_signal(condition)
        return true
    }

    /// True when called on one of these threads.
    public var isCurrentThreadOwn: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return threads.contains { pthread_equal($0, pthread_self()) != 0 }
    }

    /// The threads finish what is queued, then return. Call once nothing more will be submitted.
    public func shutdown() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    private func work() {
        // The thread's name, as pthread_setname_np (not in Swift's Glibc module) sets it.
        let fd = SystemCall.retrying { open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC) }
        if fd >= 0 {
            _ = SystemCall.writeAll(fd, Array(name.utf8.prefix(15)))
            close(fd)
        }
        while true {
            pthread_mutex_lock(mutex)
            while head == queue.count && !stopping { pthread_cond_wait(condition, mutex) }
            if head == queue.count {
                pthread_mutex_unlock(mutex)
                return
            }
            let next = queue[head]
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            pthread_mutex_unlock(mutex)
            next()
        }
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }
}

/// One dedicated thread as an executor: serial (an actor may run on it) and a task executor (a
/// task may prefer it, and then its nonisolated code and default actors run there too).
public final class DedicatedThreadExecutor: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // @unchecked: the only state is the thread, itself thread-safe.
    private let thread: DedicatedThreads

    public init(name: String) {
        thread = DedicatedThreads(name: name, threads: 1)
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let queued = thread.submit { [self] in
            job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor())
        }
        // Nothing is enqueued after `shutdown` by its owner; should it be, it must still run (a
        // task waits for it), on a thread of its own.
        if !queued {
            let late = DedicatedThreads(name: thread.name, threads: 1)
            late.submit { [self] in job.runSynchronously(isolatedTo: asUnownedSerialExecutor(), taskExecutor: asUnownedTaskExecutor()) }
            late.shutdown()
        }
    }

    public func checkIsolated() {
        precondition(thread.isCurrentThreadOwn, "expected to run on the dedicated thread \(thread.name)")
    }

    /// Runs `body` on this thread and returns its result: how an async caller makes a blocking call
    /// without holding a thread of the shared pool.
    public func run<T>(_ body: () throws -> T) async throws -> T {
        try await withTaskExecutorPreference(self, isolation: nil) { try body() }
    }

    /// `run` for a body that cannot fail.
    public func run<T>(_ body: () -> T) async -> T {
        await withTaskExecutorPreference(self, isolation: nil) { body() }
    }

    /// The thread returns once what is queued has run. Call when its owner is done with it.
    public func shutdown() {
        thread.shutdown()
    }
}

/// pthread_create for a Swift closure: the one place that passes a closure through the C start
/// routine's `void *`.
public enum PlainThread {
    /// Starts a thread running `body` once. `body`, and all it captures, stays alive until it
    /// returns. Returns pthread_create's result: 0, or the error number (then `body` never runs).
    public static func create(_ thread: inout pthread_t, _ body: @escaping () -> Void) -> Int32 {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, context)
        if rc != 0 { Unmanaged<Body>.fromOpaque(context).release() }
        return rc
    }

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}
