import Glibc
import Testing

/// A real etcd 3.4 (Debian's etcd-server) on 127.0.0.1 with free ports and a temp data dir, v2
/// enabled, for the daemon's start-up tests. Stopped (and its dir removed) by `stop()`.
final class DaemonTestEtcd: @unchecked Sendable {
    // @unchecked: immutable after init; `stop` is called once from the owning test.
    let clientPort: Int
    let peerPort: Int
    let dataDir: String
    let pid: pid_t
    /// The network namespace etcd runs in (nil: the test's own).
    let namespace: String?
    var url: String { "http://127.0.0.1:\(clientPort)" }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw ToolFailure(command: "bind 127.0.0.1:0", status: errno, output: "") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    init(namespace: String? = nil) async throws {
        self.namespace = namespace
        clientPort = try Self.freePort()
        peerPort = try Self.freePort()
        let tag = uniqueTag("e")
        dataDir = "/tmp/\(tag)"
        let prefix = namespace.map { ["/usr/sbin/ip", "netns", "exec", $0] } ?? []
        let arguments = prefix + [
            "/usr/bin/etcd", "--name", tag, "--data-dir", dataDir, "--enable-v2=true",
            "--listen-client-urls", "http://127.0.0.1:\(clientPort)", "--advertise-client-urls", "http://127.0.0.1:\(clientPort)",
            "--listen-peer-urls", "http://127.0.0.1:\(peerPort)", "--initial-advertise-peer-urls", "http://127.0.0.1:\(peerPort)",
            "--initial-cluster", "\(tag)=http://127.0.0.1:\(peerPort)",
        ]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, arguments[0], &actions, nil, argv, environ)
        guard rc == 0 else { throw ToolFailure(command: "spawn etcd", status: rc, output: "") }
        pid = child
        for _ in 0..<100 {
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                throw ToolFailure(command: arguments.joined(separator: " "), status: status, output: "etcd exited at start")
            }
            if let health = try? runProgram(prefix.first ?? "/usr/bin/etcdctl",
                                            Array(prefix.dropFirst()) + (prefix.isEmpty ? [] : ["/usr/bin/etcdctl"])
                                                + ["--endpoints", url, "--dial-timeout=300ms", "--command-timeout=500ms", "endpoint", "health"],
                                            environment: ["ETCDCTL_API=3", "PATH=/usr/bin:/bin"]),
               health.status == 0 { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        stop()
        throw ToolFailure(command: "etcd on \(url)", status: -1, output: "not healthy within 10 s")
    }

    func stop() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        _ = try? runProgram("/bin/rm", ["-rf", dataDir])
    }

    /// `etcdctl put` (v3) or `set` (v2).
    func put(_ key: String, _ value: String, v2: Bool = false) throws {
        if v2 {
            _ = try runEtcdctl(api: 2, ["set", key, value])
        } else {
            _ = try runEtcdctl(api: 3, ["put", key, value])
        }
    }

    func delete(_ key: String, v2: Bool = false) throws {
        _ = try runEtcdctl(api: v2 ? 2 : 3, [v2 ? "rm" : "del", key])
    }

    func get(_ key: String) throws -> String {
        try runEtcdctl(api: 3, ["get", "--print-value-only", key])
    }

    @discardableResult
    func runEtcdctl(api: Int, _ arguments: [String]) throws -> String {
        let prefix = namespace.map { ["/usr/sbin/ip", "netns", "exec", $0] } ?? []
        let command = prefix + ["/usr/bin/etcdctl", "--endpoints", url] + arguments
        let (output, status) = try runProgram(command[0], Array(command.dropFirst()),
                                              environment: ["ETCDCTL_API=\(api)", "PATH=/usr/bin:/bin"])
        guard status == 0 else { throw ToolFailure(command: "etcdctl \(arguments.joined(separator: " "))", status: status, output: output) }
        return output
    }
}
