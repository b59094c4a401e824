// TCP ports for test servers on 127.0.0.1 (etcd client and peer ports, anything a test listens on).
//
// Why not "bind port 0, read it, close, hand it out": the port is free only at that instant. In one
// `swift test` process dozens of tests start servers at once, and some stop a server and restart it
// on the same port (an etcd outage); while it is down, a plain "is it free?" check hands its port to
// the next test, the restart fails or — worse — the first test's client talks to someone else's
// server (an etcd peer port answers 404 to every client path). Ports from bind(0) also come from the
// ephemeral range, where every outgoing connection takes its source port.
//
// So a port is *reserved*: picked outside Linux's ephemeral range (32768-60999), held by an
// exclusive flock on /tmp/fxdp-test-ports/<port> for the rest of the test process (the kernel
// drops the lock when the process dies, also on a crash, so there is nothing stale to sweep), and
// never handed out twice. Other test processes on the machine that use this file (other worktrees,
// the isolated child processes some tests start) respect the same locks. A final bind check skips
// ports something else holds right now.

import CBPF
import Glibc
import Synchronization

public enum TestPorts {
    /// Where the lock files live (one empty file per port ever reserved, never removed: removing a
    /// locked file would let two processes lock two different files of the same name).
    public static let lockDirectory = "/tmp/fxdp-test-ports"
    static let range = 20000...32000

    private struct State: ~Copyable {
        var reserved: Set<Int> = []
        /// Lock fds, kept open (and locked) until the process exits.
        var lockFDs: [Int32] = []
    }

    private static let state = Mutex(State())

    /// A port on 127.0.0.1 that nothing listens on now and that no other test (in this process or
    /// another process using `TestPorts`) will be given until this process exits.
    public static func reserve() throws -> Int {
        try reserve(count: 1)[0]
    }

    /// `count` distinct reserved ports.
    public static func reserve(count: Int) throws -> [Int] {
        mkdir(lockDirectory, 0o777)
        var ports: [Int] = []
        var attempts = 0
        while ports.count < count {
            attempts += 1
            guard attempts <= 2000 else {
                throw EtcdServerError("no free test port in \(range) after 2000 tries: \(ports.count) of \(count) reserved; "
                                      + "are many test processes running? (locks in \(lockDirectory))")
            }
            let port = Int.random(in: range)
            if tryReserve(port) { ports.append(port) }
        }
        return ports
    }

    /// True if `port` is reserved by this process.
    public static func isReserved(_ port: Int) -> Bool {
        state.withLock { $0.reserved.contains(port) }
    }

    private static func tryReserve(_ port: Int) -> Bool {
        state.withLock { s -> Bool in
            guard !s.reserved.contains(port) else { return false }
            let fd = open("\(lockDirectory)/\(port)", O_CREAT | O_RDWR | O_CLOEXEC, 0o666)
            guard fd >= 0 else { return false }
            // flock locks belong to the open file description: a second open in this process
            // conflicts too, and the lock goes away with the process.
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
                close(fd)
                return false
            }
            // Something outside our scheme (another program, an old test binary) may hold it.
            guard canBindLoopback(port) else {
                flock(fd, LOCK_UN)
                close(fd)
                return false
            }
            s.reserved.insert(port)
            s.lockFDs.append(fd)
            return true
        }
    }
}

/// True if a TCP socket can bind 127.0.0.1:`port` right now.
func canBindLoopback(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var one: Int32 = 1
    // As etcd (Go) binds: with SO_REUSEADDR, so a port left in TIME_WAIT by a closed server counts as free.
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    addr.sin_port = UInt16(port).bigEndian
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return rc == 0
}
