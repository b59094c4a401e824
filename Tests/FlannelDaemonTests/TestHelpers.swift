import FlannelDaemon
import Glibc
import TestSupport
import Testing

struct ToolFailure: Error, CustomStringConvertible {
    var command: String
    var status: Int32
    var output: String
    var description: String { "\(command) exited \(status): \(output)" }
}

/// Output and exit status of a program run with posix_spawn (stdout and stderr together).
func runProgram(_ path: String, _ arguments: [String], environment: [String]? = nil) throws -> (output: String, status: Int32) {
    var pipeFDs: [Int32] = [0, 0]
    guard pipe(&pipeFDs) == 0 else { throw ToolFailure(command: path, status: -1, output: "pipe: errno \(errno)") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
    posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
    closeInheritedDescriptors(&actions)
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let envStrings: [String] = environment ?? {
        var list: [String] = []
        var cursor = environ
        while let entry = cursor.pointee { list.append(String(cString: entry)); cursor += 1 }
        return list
    }()
    let envp = envStrings.map { strdup($0) } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
    close(pipeFDs[1])
    guard rc == 0 else {
        close(pipeFDs[0])
        throw ToolFailure(command: path, status: -1, output: "posix_spawn: \(rc)")
    }
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        data.append(contentsOf: buffer[0..<n])
    }
    close(pipeFDs[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let exitCode = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (String(decoding: data, as: UTF8.self), exitCode)
}

/// Runs a tool that must succeed and returns its output.
func runTool(_ path: String, _ arguments: [String]) throws -> String {
    let (output, status) = try runProgram(path, arguments)
    guard status == 0 else { throw ToolFailure(command: ([path] + arguments).joined(separator: " "), status: status, output: output) }
    return output
}

func readText(_ path: String) -> String? {
    access(path, F_OK) == 0 ? readFile(path) : nil
}

/// The built `flanneld-xdp` executable, beside the test bundle in the build folder.
func builtBinaryPath() -> String? {
    let path = TestBinaries.flanneldXDP()
    return access(path, X_OK) == 0 ? path : nil
}

/// A short tag unique to this test process: "fxd" + pid + a counter.
func uniqueTag(_ hint: String = "") -> String {
    "fxd\(hint)\(getpid())x\(UInt16.random(in: 0...UInt16.max))"
}

/// The daemon tests' etcd writes, through TestSupport's `EtcdServer` (which also runs etcd inside a
/// node's network namespace). etcdctl is awaited without blocking a thread.
extension EtcdServer {
    /// `etcdctl put` (v3) or `set` (v2).
    func put(_ key: String, _ value: String, v2: Bool = false) async throws {
        try await etcdctlCheckedAsync(api: v2 ? 2 : 3, [v2 ? "set" : "put", key, value])
    }

    func delete(_ key: String, v2: Bool = false) async throws {
        try await etcdctlCheckedAsync(api: v2 ? 2 : 3, [v2 ? "rm" : "del", key])
    }

    /// The value at `key` (v3), or "" when there is none.
    func get(_ key: String) async throws -> String {
        try await etcdctlCheckedAsync(api: 3, ["get", "--print-value-only", key])
    }
}

extension NodeState {
    /// What a vxlan node's daemon writes while it runs (the BPF path with XDP decap, etcd v3
    /// connected, two peers); each test changes what it is about.
    static func sample() -> NodeState {
        var state = NodeState()
        (state.startedAt, state.updatedAt) = (1_790_000_000, 1_790_000_100)
        (state.dataplane, state.dataplaneDetail) = ("bpf-xdp", "BPF (XDP decap; …) over flannel.1")
        (state.interface, state.interfaceIndex, state.publicIP) = ("eth0", 2, "192.168.77.1")
        (state.network, state.subnet, state.backend) = ("10.5.0.0/16", "10.5.1.0/24", "vxlan")
        (state.vni, state.port, state.mtu) = (1, 8472, 1450)
        (state.etcdAPI, state.etcdEndpoints, state.etcdState, state.etcdLastContact) = ("v3", "http://127.0.0.1:2379", "connected", 1_790_000_090)
        (state.leaseExpiry, state.peerCount) = (1_790_086_400, 2)
        return state
    }
}
