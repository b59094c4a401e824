// Running the `ip`/`sysctl`/`ping`/`iperf3` CLIs for the netns lab, without Foundation.
//
// posix_spawn with stdout/stderr sent to temp files (not pipes: a chatty child can never block on a
// full pipe while we wait for it), then waitpid. Background processes are `LabProcess` objects the
// lab kills by pid at cleanup. `ip netns exec` execs the command in place (no fork), so the pid we
// hold is the command's own pid.

import CSystemShims
import Glibc
import RuntimeSupport
import Synchronization

/// A failed lab command: the full command line, its exit status and what it printed on stderr.
public struct LabError: Error, CustomStringConvertible, Sendable {
    public var command: [String]
    public var status: Int32
    public var stderr: String
    public var message: String

    public init(command: [String], status: Int32 = -1, stderr: String = "", message: String = "") {
        self.command = command
        self.status = status
        self.stderr = stderr
        self.message = message
    }

    public var description: String {
        var s = "lab command failed: \(command.joined(separator: " "))"
        if status >= 0 { s += " (exit \(status))" }
        if !message.isEmpty { s += ": \(message)" }
        let err = stderr.trimmingTrailingNewlines()
        if !err.isEmpty { s += "\n  stderr: \(err)" }
        return s
    }
}


/// Absolute paths of the tools the lab drives (`ip netns exec` refuses relative paths).
public enum LabTools {
    public static let ip = "/usr/sbin/ip"
    public static let sysctl = "/usr/sbin/sysctl"
    public static let bridge = "/usr/sbin/bridge"
    public static let iperf3 = "/usr/bin/iperf3"
    public static var ping: String {
        access("/usr/bin/ping", X_OK) == 0 ? "/usr/bin/ping" : "/bin/ping"
    }
}

/// Result of a command run to completion.
public struct LabCommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

enum CommandRunner {
    /// Runs `argv` (argv[0] an absolute path) to completion and returns what it printed.
    static func run(_ argv: [String], env: [String: String] = [:]) throws -> LabCommandResult {
        let outPath = try makeTempFile("out")
        let errPath = try makeTempFile("err")
        defer { unlink(outPath); unlink(errPath) }
        let pid = try spawn(argv, env: env, stdoutPath: outPath, stderrPath: errPath)
        var status: Int32 = 0
        if SystemCall.retrying({ waitpid(pid, &status, 0) }) < 0 {
            throw LabError(command: argv, message: "waitpid: errno \(errno)")
        }
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return LabCommandResult(status: code, stdout: readFile(outPath), stderr: readFile(errPath))
    }

    /// Starts `argv` in the background; stdout/stderr go to the given files or /dev/null.
    static func spawn(_ argv: [String], env: [String: String], stdoutPath: String?, stderrPath: String?) throws -> pid_t {
        guard let exe = argv.first, exe.hasPrefix("/") else {
            throw LabError(command: argv, message: "the command needs an absolute path")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdoutPath ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        closeInheritedDescriptors(&actions)

        var environment: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let kv = String(cString: p)
            if let eq = kv.firstIndex(of: "=") { environment[String(kv[..<eq])] = String(kv[kv.index(after: eq)...]) }
            e += 1
        }
        for (k, v) in env { environment[k] = v }

        let cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        let cEnv: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { cArgs.forEach { free($0) }; cEnv.forEach { free($0) } }

        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, nil, cArgs, cEnv)
        guard rc == 0 else {
            throw LabError(command: argv, message: "posix_spawn: \(String(cString: strerror(rc))) (errno \(rc))")
        }
        return pid
    }

    static func makeTempFile(_ what: String) throws -> String {
        var template = Array("/tmp/fxdp-lab-\(what)-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw LabError(command: [], message: "mkstemp: errno \(errno)") }
        close(fd)
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    static func readFile(_ path: String) -> String { TestSupport.readFile(path) }
}

/// A background process started by the lab. The lab kills it (by pid) at cleanup if it still runs.
public final class LabProcess: Sendable {
    public let pid: pid_t
    public let command: [String]
    /// Where its stdout goes, if the caller asked for a file.
    public let stdoutPath: String?
    private let exitStatus = Mutex<Int32?>(nil)

    init(pid: pid_t, command: [String], stdoutPath: String?) {
        self.pid = pid
        self.command = command
        self.stdoutPath = stdoutPath
    }

    /// The exit status once the process has been reaped (128+signal if killed), else nil.
    public var status: Int32? {
        exitStatus.withLock { cached in
            if let cached { return cached }
            var st: Int32 = 0
            let r = waitpid(pid, &st, WNOHANG)
            guard r == pid else { return nil }
            let code: Int32 = (st & 0x7f) == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
            cached = code
            return code
        }
    }

    public var isRunning: Bool { status == nil }

    /// Sends `signal` to the process (not to a group: only what we started).
    public func kill(_ signal: Int32) {
        if isRunning { _ = Glibc.kill(pid, signal) }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace` seconds; reaps it.
    public func terminate(grace: Double = 2) {
        guard isRunning else { return }
        kill(SIGTERM)
        if waitExit(timeout: grace) == nil {
            kill(SIGKILL)
            _ = waitExit(timeout: 5)
        }
    }

    /// Waits up to `timeout` seconds for the process to exit; returns its status, or nil on timeout.
    @discardableResult
    public func waitExit(timeout: Double) -> Int32? {
        let deadline = monotonicSeconds() + timeout
        while true {
            if let s = status { return s }
            if monotonicSeconds() >= deadline { return nil }
            usleep(10_000)
        }
    }

    /// What the process wrote to its stdout file so far ("" without one).
    public func output() -> String {
        stdoutPath.map(CommandRunner.readFile) ?? ""
    }
}

/// Seconds on the monotonic clock (for timeouts and durations in tests and the lab tool).
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Waits until `condition` holds, polling every 20 ms (a test waits for an event it can observe: a
/// map entry, a file, a counter); returns the seconds it took, or nil after `timeout` seconds.
public func waitUntil(_ timeout: Double, _ condition: () throws -> Bool) rethrows -> Double? {
    let start = monotonicSeconds()
    while monotonicSeconds() - start < timeout {
        if try condition() { return monotonicSeconds() - start }
        usleep(20_000)
    }
    return nil
}

/// Only stdin, stdout and stderr reach a spawned child. A long-lived child (a daemon, etcd) must not
/// keep another test's descriptors: exec of a script some process still holds open for writing
/// fails with ETXTBSY, and a held pipe end never reports EOF.
public func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    _ = shim_spawn_close_from(&actions, 3)
}
