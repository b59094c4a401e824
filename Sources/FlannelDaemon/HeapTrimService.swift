// The periodic half of HeapTrim (Dataplane/HeapTrim.swift, with the design note): every 2 s, a trim
// when the resident heap carries more than HeapTrim.defaultSlack of freed memory.

import Dataplane
import Logging
import ServiceLifecycle

/// Runs `HeapTrim.trimIfWorthIt` every `interval` until shutdown.
struct HeapTrimService: Service {
    var interval: Duration = .seconds(2)
    let logger: Logger

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            if Task.isShuttingDownGracefully { return }
            if let (before, after) = HeapTrim.trimIfWorthIt() {
                logger.debug("heap trimmed: \(before) → resident anonymous \(after.residentAnonymous >> 10) KiB")
            }
        }
    }
}
