// What systemd hears from a running daemon after READY=1: WATCHDOG=1 and a STATUS= line that
// follows the node's state ("ready: …", "degraded: …"), both sent from the reconciler's loop
// (Reconciler.run calls `beat`). That loop is the one whose progress shows the node agent works:
// if it hangs (a netlink call that never returns, a deadlocked actor), the pings stop and systemd's
// watchdog restarts the daemon, which leaves the data path in place while it does.
//
// STATUS= is sent when its text changes, not on every beat; `systemctl status` shows the latest.

import Logging
import Synchronization

public final class ServiceManagerLink: Sendable {
    let notifier: SystemdNotifier
    let readiness: Readiness
    /// "subnet 10.5.1.0/24, data path bpf-tc": what stays the same while the daemon runs.
    let identity: String
    let logger: Logger
    private let lastStatus = Mutex<String?>(nil)
    private let failureLogged = Atomic<Bool>(false)

    public init(notifier: SystemdNotifier, readiness: Readiness, identity: String, logger: Logger) {
        self.notifier = notifier
        self.readiness = readiness
        self.identity = identity
        self.logger = logger
    }

    /// How often the reconciler's loop should call `beat(peers:watchdog:)` with `watchdog: true`:
    /// half the watchdog timeout (sd_watchdog_enabled(3)'s advice), at most 5 s so that STATUS
    /// follows readiness changes that come without a reconcile pass (etcd confirming a degraded boot).
    public var beatInterval: Duration {
        guard let timeout = notifier.watchdogTimeout else { return .seconds(5) }
        return min(timeout / 2, .seconds(5))
    }

    /// The STATUS= text for the node's current state.
    public static func statusText(readiness: Readiness, identity: String, peers: Int) -> String {
        let what = "\(identity), \(peers) peer(s)"
        if let reason = readiness.notReadyReason {
            // Up for pods (subnet.env written), the kernel's fallback state still being programmed.
            if readiness.onlyFillingTables, let progress = readiness.unmet(.tablesFilled) { return "up, programming \(progress); \(what)" }
            return "degraded: \(reason); \(what)"
        }
        return "ready: \(what)"
    }

    public func currentStatus(peers: Int) -> String {
        Self.statusText(readiness: readiness, identity: identity, peers: peers)
    }

    /// Called by the reconciler's loop after every pass and on every heartbeat: WATCHDOG=1 when
    /// `watchdog` (and systemd asked for it), STATUS= when it changed. Failures are logged once.
    public func beat(peers: Int, watchdog: Bool) {
        guard notifier.isEnabled else { return }
        let status = currentStatus(peers: peers)
        let changed = lastStatus.withLock { last in
            defer { last = status }
            return last != status
        }
        var lines: [String] = []
        if watchdog && notifier.watchdogTimeout != nil { lines.append("WATCHDOG=1") }
        if changed { lines.append("STATUS=\(status)") }
        guard !lines.isEmpty else { return }
        do {
            try notifier.send(lines.joined(separator: "\n"))
            failureLogged.store(false, ordering: .relaxed)
        } catch {
            if !failureLogged.exchange(true, ordering: .relaxed) { logger.error("\(error)") }
        }
    }

    /// READY=1 with the first STATUS.
    public func ready(peers: Int) throws(SystemdNotifyError) {
        let status = currentStatus(peers: peers)
        lastStatus.withLock { $0 = status }
        try notifier.ready(status: status)
    }
}
