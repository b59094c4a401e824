// sd_notify(3) without libsystemd: one datagram of "KEY=value" lines to the AF_UNIX socket named in
// $NOTIFY_SOCKET. A leading '@' names a socket in the abstract namespace (first byte NUL, and the
// address length counts only the name, no terminating NUL). No socket set means not under systemd:
// notifying is then a no-op, as with libsystemd.
//
// The watchdog (WatchdogSec= in the unit): systemd passes WATCHDOG_USEC (and WATCHDOG_PID, the pid
// it expects the pings from) and restarts the service when no WATCHDOG=1 arrives within that time.
// The pings come from the reconciler's loop (ServiceManagerLink), the loop whose progress proves
// the node agent is alive; STATUS= follows the node's state from there too.

import Glibc

public struct SystemdNotifyError: Error, CustomStringConvertible {
    public var operation: String
    public var socketPath: String
    public var errno: Int32

    public var description: String {
        "sd_notify \(operation) on \(socketPath) failed: \(String(cString: strerror(errno))) (errno \(errno)); "
            + "check NOTIFY_SOCKET or run the unit with Type=simple"
    }
}

public struct SystemdNotifier: Sendable {
    /// The socket path as given in NOTIFY_SOCKET; nil when not running under systemd.
    public var socketPath: String?
    /// WATCHDOG_USEC: systemd restarts the service when no WATCHDOG=1 comes within this time; nil: no watchdog.
    public var watchdogTimeout: Duration?

    public init(socketPath: String?, watchdogTimeout: Duration? = nil) {
        self.socketPath = (socketPath?.isEmpty ?? true) ? nil : socketPath
        self.watchdogTimeout = self.socketPath == nil ? nil : watchdogTimeout
    }

    /// From the process environment's NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.
    public static func fromEnvironment() -> SystemdNotifier {
        func variable(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        return SystemdNotifier(socketPath: variable("NOTIFY_SOCKET"),
                               watchdogTimeout: watchdogTimeout(usec: variable("WATCHDOG_USEC"), pid: variable("WATCHDOG_PID"), ownPID: getpid()))
    }

    /// sd_watchdog_enabled(3)'s rule: WATCHDOG_USEC a positive number, and WATCHDOG_PID (when set)
    /// our own pid — a child that inherited the variables must not ping for its parent.
    public static func watchdogTimeout(usec: String?, pid: String?, ownPID: Int32) -> Duration? {
        guard let usec, let micros = Int64(usec), micros > 0 else { return nil }
        if let pid, !pid.isEmpty, Int32(pid) != ownPID { return nil }
        return .microseconds(micros)
    }

    public var isEnabled: Bool { socketPath != nil }

    /// WATCHDOG=1: the service is alive (systemd's watchdog timer restarts).
    public func watchdog() throws(SystemdNotifyError) {
        try send("WATCHDOG=1")
    }

    /// EXTEND_TIMEOUT_USEC: start-up is still making progress (waiting for etcd); systemd waits
    /// `duration` more for the next message instead of failing the start at TimeoutStartSec.
    public func extendTimeout(_ duration: Duration, status: String) throws(SystemdNotifyError) {
        let micros = duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000
        try send("EXTEND_TIMEOUT_USEC=\(micros)\nSTATUS=\(status)")
    }

    /// Sends READY=1 with a STATUS line.
    public func ready(status: String) throws(SystemdNotifyError) {
        try send("READY=1\nSTATUS=\(status)")
    }

    public func status(_ text: String) throws(SystemdNotifyError) {
        try send("STATUS=\(text)")
    }

    public func stopping() throws(SystemdNotifyError) {
        try send("STOPPING=1")
    }

    /// Sends `message` as one datagram. Does nothing when no socket is configured.
    public func send(_ message: String) throws(SystemdNotifyError) {
        guard let socketPath else { return }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        let abstract = pathBytes.first == UInt8(ascii: "@")
        if abstract { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path socket needs room for its NUL; an abstract name may use every byte.
        guard pathBytes.count <= (abstract ? capacity : capacity - 1), pathBytes.count > 1 || !abstract else {
            throw SystemdNotifyError(operation: "address", socketPath: socketPath, errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)! + pathBytes.count + (abstract ? 0 : 1))

        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemdNotifyError(operation: "socket", socketPath: socketPath, errno: errno) }
        defer { close(fd) }
        let payload = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                payload.withUnsafeBytes { bytes in
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), sa, length)
                }
            }
        }
        guard sent == payload.count else {
            throw SystemdNotifyError(operation: "sendto", socketPath: socketPath, errno: sent < 0 ? errno : EMSGSIZE)
        }
    }
}
