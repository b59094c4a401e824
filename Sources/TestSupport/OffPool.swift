// Blocking test work (process waits, sleeps, polling loops) must not sit on Swift concurrency's
// cooperative threads: on a 2-core machine there are two of them, and a test that blocks one for
// seconds starves every other test in the process. `offPool` runs such work on a fresh pthread and
// suspends the calling task until it is done.

import Glibc

public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let box = OffPoolJob { continuation.resume(with: Result { try body() }) }
        let context = Unmanaged.passRetained(box).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<OffPoolJob>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<OffPoolJob>.fromOpaque(context).release()
            continuation.resume(throwing: LabError(command: [], message: "pthread_create failed: \(rc)"))
        } else {
            pthread_detach(thread)
        }
    }
}

private final class OffPoolJob: @unchecked Sendable {
    // @unchecked: handed to exactly one thread, which runs it once.
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
