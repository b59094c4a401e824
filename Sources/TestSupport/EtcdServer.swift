// A real etcd for tests: Debian's /usr/bin/etcd on 127.0.0.1 with free client and peer ports, a temp
// data dir, v2 enabled (flannel ≤ 0.17 speaks v2), optional TLS. stop()/restart() keep the data dir
// and ports (so a watch can reconnect to "the same" etcd); kill() is SIGKILL; cleanup() removes
// everything. `etcdctl(api:)` runs Debian's etcdctl against it, the way flannel's docs write keys.
//
// Processes are started with posix_spawn and stopped by their pid only. Every instance gets its own
// directory and its own ports, reserved through `TestPorts` for the whole test process: a server
// stopped for an outage keeps its ports while it is down, so no other test can start on them and
// `restart()` finds them free. `namespace:` runs etcd (and etcdctl) inside a network namespace
// through `ip netns exec` (same pid: it execs), for tests whose daemons reach etcd from there.

import Glibc
import RuntimeSupport
import Synchronization

public struct EtcdServerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Server-side TLS for a test etcd.
public struct EtcdServerTLS: Sendable {
    public var certFile: String
    public var keyFile: String
    /// With `clientCertAuth`, clients must present a certificate signed by this CA.
    public var trustedCAFile: String
    public var clientCertAuth: Bool

    public init(certFile: String, keyFile: String, trustedCAFile: String, clientCertAuth: Bool = true) {
        self.certFile = certFile
        self.keyFile = keyFile
        self.trustedCAFile = trustedCAFile
        self.clientCertAuth = clientCertAuth
    }
}

/// Result of running a command.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

public final class EtcdServer: Sendable {
    public let clientPort: Int
    public let peerPort: Int
    public let dataDir: String
    public let tls: EtcdServerTLS?
    /// Client-side files etcdctl uses against a TLS server (CA, cert, key).
    public let etcdctlTLS: (ca: String, cert: String, key: String)?
    /// The network namespace etcd listens in (nil: the test process's own).
    public let namespace: String?
    private let pid = Mutex<pid_t>(0)
    private let logPath: String
    private let extraArguments: [String]

    /// The port etcd listens on now: `clientPort`, except inside `whileOnlyTheTestReaches`.
    private let listeningPort: Mutex<Int>
    public var clientURL: String { (tls == nil ? "http" : "https") + "://127.0.0.1:\(listeningPort.withLock { $0 })" }
    public var peerURL: String { "http://127.0.0.1:\(peerPort)" }
    /// etcd's member name, unique per server (its data dir's name).
    private var memberName: String { String(dataDir.split(separator: "/").dropLast().last ?? "fx") }
    private var namespacePrefix: [String] { namespace.map { ["/usr/sbin/ip", "netns", "exec", $0] } ?? [] }
    public var isRunning: Bool { pid.withLock { $0 } > 0 }

    private static let counter = Mutex(0)

    /// Starts etcd and waits until it answers. `tag` names the data dir (e.g. the test's area).
    /// `extraArguments` are appended to etcd's command line (e.g. `--auth-token-ttl=1`).
    /// `namespace`: an existing network namespace to run etcd in (the caller deletes it after `cleanup()`).
    public static func start(tag: String = "fx", namespace: String? = nil, tls: EtcdServerTLS? = nil,
                             etcdctlTLS: (ca: String, cert: String, key: String)? = nil,
                             extraArguments: [String] = []) async throws -> EtcdServer {
        let n = counter.withLock { $0 += 1; return $0 }
        if n == 1 { sweepLeftovers() }
        // tmpfs: etcd fsyncs every write, and tens of test servers fsyncing to one disk stall for seconds.
        let base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp"
        var template = Array("\(base)/fxetcd-\(tag)-\(getpid())-\(n)-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw EtcdServerError("mkdtemp failed: errno \(errno)")
        }
        let dir = stringFromCChars(template)
        // Reserved ports cannot go to another test, but a program outside the scheme may still take
        // one between the check and etcd's bind: then try other ports.
        var lastError: any Error = EtcdServerError("no attempt")
        for _ in 0..<5 {
            let ports = try TestPorts.reserve(count: 2)
            let server = EtcdServer(clientPort: ports[0], peerPort: ports[1], dataDir: dir + "/data", logPath: dir + "/etcd.log",
                                    namespace: namespace, tls: tls, etcdctlTLS: etcdctlTLS, extraArguments: extraArguments)
            do {
                try await server.launch()
                return server
            } catch let e as EtcdServerError where e.description.contains("address already in use") {
                lastError = e
                server.kill()
                _ = try? runCommand(["/bin/rm", "-rf", dir + "/data"])
            } catch {
                server.cleanup()
                throw error
            }
        }
        _ = try? runCommand(["/bin/rm", "-rf", dir])
        throw lastError
    }

    /// Removes what a crashed earlier test process left: its etcd (found by the data dir on its
    /// command line, so only our own servers) and its directory. Only for test pids that are gone.
    private static func sweepLeftovers() {
        for base in ["/dev/shm", "/tmp"] {
            guard let names = Directory.entryNames(at: base) else { continue }
            var stale: [String] = []
            for name in names {
                guard name.hasPrefix("fxetcd-") else { continue }
                // fxetcd-<tag>-<pid>-<n>-XXXXXX
                let parts = name.split(separator: "-")
                guard parts.count >= 5, let owner = pid_t(parts[parts.count - 3]), owner != getpid(),
                      Glibc.kill(owner, 0) != 0, errno == ESRCH else { continue }
                stale.append(base + "/" + name)
            }
            for path in stale {
                for etcdPID in processes(withArgument: path + "/data") { Glibc.kill(etcdPID, SIGKILL) }
                _ = try? runCommand(["/bin/rm", "-rf", path])
            }
        }
    }

    /// Pids whose command line contains exactly `argument`.
    private static func processes(withArgument argument: String) -> [pid_t] {
        var found: [pid_t] = []
        for name in Directory.entryNames(at: "/proc") ?? [] {
            guard let pid = pid_t(name) else { continue }
            let args = readFile("/proc/\(name)/cmdline").split(separator: "\0").map(String.init)
            if args.first == "/usr/bin/etcd", args.contains(argument) { found.append(pid) }
        }
        return found
    }

    private init(clientPort: Int, peerPort: Int, dataDir: String, logPath: String, namespace: String?, tls: EtcdServerTLS?,
                 etcdctlTLS: (ca: String, cert: String, key: String)?, extraArguments: [String]) {
        self.extraArguments = extraArguments
        self.namespace = namespace
        self.clientPort = clientPort
        self.listeningPort = Mutex(clientPort)
        self.peerPort = peerPort
        self.dataDir = dataDir
        self.logPath = logPath
        self.tls = tls
        self.etcdctlTLS = etcdctlTLS
    }

    deinit {
        let p = pid.withLock { $0 }
        if p > 0 {
            Glibc.kill(p, SIGKILL)
            var status: Int32 = 0
            waitpid(p, &status, 0)
        }
    }

    private var arguments: [String] {
        var args = namespacePrefix + [
            "/usr/bin/etcd", "--name", memberName, "--data-dir", dataDir,
            "--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
            "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
            "--initial-cluster", "\(memberName)=\(peerURL)", "--initial-cluster-state", "new",
            "--enable-v2=true", "--logger", "zap", "--log-level", "warn",
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if let tls {
            args += ["--cert-file", tls.certFile, "--key-file", tls.keyFile, "--trusted-ca-file", tls.trustedCAFile]
            if tls.clientCertAuth { args += ["--client-cert-auth"] }
        }
        return args + extraArguments
    }

    private func launch() async throws {
        let p = try spawn(arguments, stdoutPath: logPath, appendOutput: true)
        pid.withLock { $0 = p }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            var status: Int32 = 0
            if waitpid(p, &status, WNOHANG) == p {
                pid.withLock { $0 = 0 }
                throw EtcdServerError("etcd exited during startup (status \(status)); log: \(readFile(logPath).suffix(2000))")
            }
            // Only a server that is *ours* counts: something else answering on the port (a server
            // outside the port reservation) would otherwise pass the health check. Our etcd owns
            // the listening socket once it has bound it; etcdctl (a Go process per try) runs after.
            // `endpoint status` rather than `health`: it also answers when auth is enabled.
            if process(p, listensOn: listeningPort.withLock { $0 }) {
                let r = try? await etcdctlAsync(api: 3, ["endpoint", "status", "--command-timeout=5s"])
                if let r, r.status == 0 { return }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        kill()
        throw EtcdServerError("etcd did not become healthy within 30 s; log: \(readFile(logPath).suffix(2000))")
    }

    /// SIGTERM and wait (data dir and ports kept for `restart()`). Blocks the calling thread while
    /// etcd shuts down; async code with many parallel servers should use `stopAsync()`.
    public func stop() {
        signalAndReap(SIGTERM)
    }

    /// SIGTERM and wait without blocking a thread (SIGKILL after 10 s).
    public func stopAsync() async {
        let p = takePID()
        guard p > 0 else { return }
        Glibc.kill(p, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while await !reaped(p) {
            if ContinuousClock.now > deadline { Glibc.kill(p, SIGKILL) }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// SIGKILL and wait.
    public func kill() {
        signalAndReap(SIGKILL)
    }

    /// The running etcd's pid, which from now on is this caller's to reap (0: none runs).
    private func takePID() -> pid_t {
        pid.withLock { v -> pid_t in let p = v; v = 0; return p }
    }

    private func signalAndReap(_ signal: Int32) {
        let p = takePID()
        guard p > 0 else { return }
        Glibc.kill(p, signal)
        var status: Int32 = 0
        _ = SystemCall.retrying { waitpid(p, &status, 0) }
    }

    /// Starts etcd again on the same ports with the same data.
    public func restart() async throws {
        await stopAsync()
        try await launch()
    }

    /// Restarts etcd on a port no existing client knows, runs `body` (whose etcdctl calls and new
    /// registries follow `clientURL` there), then restarts it on `clientPort`. Clients that keep
    /// their endpoint (a watcher under test) see etcd come back only after `body` has written
    /// everything: the order is fixed by events, not by how fast the writes happen to be.
    public func whileOnlyTheTestReaches(_ body: () async throws -> Void) async throws {
        let privatePort = try TestPorts.reserve(count: 1)[0]
        await stopAsync()
        listeningPort.withLock { $0 = privatePort }
        do {
            try await launch()
            try await body()
        } catch {
            await stopAsync()
            listeningPort.withLock { $0 = clientPort }
            throw error
        }
        await stopAsync()
        listeningPort.withLock { $0 = clientPort }
        try await launch()
    }

    /// Stops etcd and removes its directory.
    public func cleanup() {
        kill()
        let dir = String(dataDir.dropLast("/data".count))
        _ = try? runCommand(["/bin/rm", "-rf", dir])
    }

    /// Runs Debian's etcdctl against this server (ETCDCTL_API=2 or 3). Blocks the calling thread
    /// until etcdctl exits: from async tests prefer `etcdctlAsync` (blocked cooperative threads
    /// stall every other test in the process).
    @discardableResult
    public func etcdctl(api: Int, _ args: [String]) throws -> CommandResult {
        try runCommand(etcdctlArguments(api: api) + args, environment: ["ETCDCTL_API=\(api)"])
    }

    /// Like `etcdctl` but throws with the output when it fails.
    @discardableResult
    public func etcdctlChecked(api: Int, _ args: [String]) throws -> String {
        try checked(api, args, try etcdctl(api: api, args))
    }

    /// `etcdctl` that waits without blocking a thread.
    @discardableResult
    public func etcdctlAsync(api: Int, _ args: [String]) async throws -> CommandResult {
        try await runCommandAsync(etcdctlArguments(api: api) + args, environment: ["ETCDCTL_API=\(api)"])
    }

    /// `etcdctlChecked` that waits without blocking a thread.
    @discardableResult
    public func etcdctlCheckedAsync(api: Int, _ args: [String]) async throws -> String {
        try checked(api, args, try await etcdctlAsync(api: api, args))
    }

    private func etcdctlArguments(api: Int) -> [String] {
        var argv = namespacePrefix + ["/usr/bin/etcdctl"]
        if api == 2 {
            argv += ["--endpoints", clientURL]
            if let t = etcdctlTLS { argv += ["--ca-file", t.ca, "--cert-file", t.cert, "--key-file", t.key] }
        } else {
            argv += ["--endpoints=\(clientURL)"]
            if let t = etcdctlTLS { argv += ["--cacert=\(t.ca)", "--cert=\(t.cert)", "--key=\(t.key)"] }
        }
        return argv
    }

    private func checked(_ api: Int, _ args: [String], _ r: CommandResult) throws -> String {
        guard r.status == 0 else {
            throw EtcdServerError("etcdctl (v\(api)) \(args.joined(separator: " ")) failed (\(r.status)): \(r.stderr) \(r.stdout)")
        }
        return r.stdout
    }

    public var log: String { readFile(logPath) }
}

// MARK: - processes and ports

/// Two distinct reserved TCP ports on 127.0.0.1 (see `TestPorts`).
public func freePortPair() throws -> (Int, Int) {
    let ports = try TestPorts.reserve(count: 2)
    return (ports[0], ports[1])
}

/// A reserved TCP port on 127.0.0.1 (see `TestPorts`).
public func freePort() throws -> Int {
    try TestPorts.reserve()
}

/// True if process `pid` holds a socket listening on TCP `port` (any address), as seen in its own
/// network namespace (/proc/<pid>/net/tcp), with the socket among its own fds.
func process(_ pid: pid_t, listensOn port: Int) -> Bool {
    let portHex = String(port, radix: 16, uppercase: true)
    let padded = String(repeating: "0", count: max(0, 4 - portHex.count)) + portHex
    var inodes: Set<String> = []
    for table in ["tcp", "tcp6"] {
        for line in readFile("/proc/\(pid)/net/\(table)").split(separator: "\n").dropFirst() {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 9, f[3] == "0A", f[1].hasSuffix(":" + padded) else { continue }
            inodes.insert(String(f[9]))
        }
    }
    guard !inodes.isEmpty, let names = Directory.entryNames(at: "/proc/\(pid)/fd") else { return false }
    var target = [CChar](repeating: 0, count: 256)
    for name in names {
        guard name.first?.isNumber == true else { continue }
        let n = readlink("/proc/\(pid)/fd/\(name)", &target, target.count - 1)
        guard n > 0 else { continue }
        let link = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if link.hasPrefix("socket:["), inodes.contains(String(link.dropFirst(8).dropLast())) { return true }
    }
    return false
}

/// posix_spawn with stdout+stderr to `stdoutPath` (or /dev/null); returns the pid.
func spawn(_ argv: [String], environment: [String] = [], stdoutPath: String? = nil, stderrPath: String? = nil,
           appendOutput: Bool = false) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    let flags = O_WRONLY | O_CREAT | (appendOutput ? O_APPEND : O_TRUNC)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, stdoutPath ?? "/dev/null", flags, 0o644)
    if let stderrPath {
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, flags, 0o644)
    } else {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    }
    closeInheritedDescriptors(&actions)
    var env = environment
    for name in ["PATH", "HOME"] {
        if let v = getenv(name) { env.append("\(name)=\(String(cString: v))") }
    }
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup($0) } + [nil]
    defer {
        cArgs.forEach { free($0) }
        cEnv.forEach { free($0) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, cEnv)
    guard rc == 0 else { throw EtcdServerError("posix_spawn \(argv[0]): \(String(cString: strerror(rc)))") }
    return pid
}

/// Runs a command to completion, capturing stdout and stderr. Blocks the calling thread: use
/// `runCommandAsync` from async tests (a blocked cooperative thread stalls every other test).
public func runCommand(_ argv: [String], environment: [String] = []) throws -> CommandResult {
    try withOutputFiles { out, err in
        let pid = try spawn(argv, environment: environment, stdoutPath: out, stderrPath: err)
        var status: Int32 = 0
        _ = SystemCall.retrying { waitpid(pid, &status, 0) }
        return status
    }
}

/// Like `runCommand`, but waits without blocking a thread.
public func runCommandAsync(_ argv: [String], environment: [String] = []) async throws -> CommandResult {
    let dir = try makeTempDir("fxcmd")
    defer {
        unlink(dir + "/out")
        unlink(dir + "/err")
        rmdir(dir)
    }
    let pid = try spawn(argv, environment: environment, stdoutPath: dir + "/out", stderrPath: dir + "/err")
    var status: Int32 = 0
    var delay = Duration.milliseconds(1)
    while true {
        let r = SystemCall.retrying { waitpid(pid, &status, WNOHANG) }
        if r == pid || r < 0 { break }
        try? await Task.sleep(for: delay)
        delay = min(delay * 2, .milliseconds(20))
    }
    return CommandResult(status: exitCode(status), stdout: readFile(dir + "/out"), stderr: readFile(dir + "/err"))
}

private func withOutputFiles(_ body: (String, String) throws -> Int32) throws -> CommandResult {
    let dir = try makeTempDir("fxcmd")
    defer {
        unlink(dir + "/out")
        unlink(dir + "/err")
        rmdir(dir)
    }
    let status = try body(dir + "/out", dir + "/err")
    return CommandResult(status: exitCode(status), stdout: readFile(dir + "/out"), stderr: readFile(dir + "/err"))
}

private func exitCode(_ status: Int32) -> Int32 {
    (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// True once `pid` has exited (and reaps it).
func reaped(_ pid: pid_t) async -> Bool {
    var status: Int32 = 0
    let r = waitpid(pid, &status, WNOHANG)
    return r == pid || (r < 0 && errno == ECHILD)
}

func makeTempDir(_ tag: String) throws -> String {
    var template = Array("/tmp/\(tag)-\(getpid())-XXXXXX".utf8CString)
    guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
        throw EtcdServerError("mkdtemp failed: errno \(errno)")
    }
    return stringFromCChars(template)
}

public func readFile(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Writes `text` to `path` through a close-on-exec descriptor: a child spawned meanwhile by another
/// test never holds the file open for writing (exec of such a file fails with ETXTBSY).
public func writeFile(_ path: String, _ text: String) throws {
    guard let f = fopen(path, "we") else { throw EtcdServerError("cannot write \(path): errno \(errno)") }
    defer { fclose(f) }
    let bytes = Array(text.utf8)
    guard fwrite(bytes, 1, bytes.count, f) == bytes.count else { throw EtcdServerError("short write to \(path)") }
}

func stringFromCChars(_ chars: [CChar]) -> String {
    String(decoding: chars.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
