// RateLimitedLog — the one rate limiter for log lines. Repeated failures (etcd down, a table
// refusing writes) must not flood the journal: the first occurrence of a message key (an error
// class) is logged, repeats within `window` are counted and folded into the next line that is let
// through (metadata `suppressed`).

import Logging
import Synchronization

public final class RateLimitedLog: Sendable {
    public let window: Duration
    private let clock = ContinuousClock()
    private let state = Mutex<[String: (last: ContinuousClock.Instant, suppressed: Int)]>([:])

    public init(window: Duration = .seconds(60)) {
        self.window = window
    }

    /// Whether a line for `key` may be logged now, and how many were swallowed since the last one.
    public func admit(_ key: String) -> (log: Bool, suppressed: Int) {
        let now = clock.now
        return state.withLock { entries in
            if let entry = entries[key], now - entry.last < window {
                entries[key] = (entry.last, entry.suppressed + 1)
                return (false, 0)
            }
            let suppressed = entries[key]?.suppressed ?? 0
            entries[key] = (now, 0)
            return (true, suppressed)
        }
    }

    /// True if a line for `key` may be logged now (repeats within the window are counted).
    public func allow(_ key: String) -> Bool { admit(key).log }

    /// Forgets `key`, so that the next failure after a recovery is logged at once.
    public func reset(_ key: String) {
        _ = state.withLock { $0.removeValue(forKey: key) }
    }

    public func log(_ logger: Logger, level: Logger.Level, key: String, _ message: @autoclosure () -> String,
                    metadata: Logger.Metadata = [:]) {
        let (allowed, suppressed) = admit(key)
        guard allowed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed"] = "\(suppressed)" }
        logger.log(level: level, "\(message())", metadata: metadata)
    }
}
