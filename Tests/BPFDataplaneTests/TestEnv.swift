// Test plumbing for the BPF data-path tests: unique names, a private bpffs per test, a throw-away
// network namespace, shell commands. Everything created is removed in `close()` / defer, also on
// failure; names carry "fxb" + pid + a per-test counter so parallel tests (and other helpers'
// tests on this machine) never collide.

import BPFDataplane
import BPFLoader
import Foundation
import Glibc
import NetTypes
import Synchronization
import TestSupport

enum Names {
    private static let counter = Atomic<Int>(0)
    /// "fxb12345n3": short enough to suffix interface names (≤ 15 bytes).
    static func unique() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        if n == 1 { sweepLeftoversOfDeadRuns() }
        return "fxb\(getpid() % 100_000)n\(n)"
    }

    /// A test process that crashed (a trap, SIGKILL) could not close its namespaces and bpffs
    /// mounts: remove those whose creator no longer runs. A live process's, this one's or another
    /// run's in parallel, are left alone (a pid that matches a live process keeps them, too).
    private static func sweepLeftoversOfDeadRuns() {
        func creatorIsDead(_ name: String) -> Bool {
            guard name.hasPrefix("fxb"), let n = name.dropFirst(3).split(separator: "n").first, let pid = Int32(n),
                  pid > 0, pid != getpid() % 100_000 else { return false }
            return kill(pid, 0) != 0 && errno == ESRCH
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? [] where creatorIsDead(name) {
            _ = try? sh(["ip", "netns", "del", name], allowFailure: true)
        }
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/run")) ?? []
        where entry.hasSuffix("-bpffs") && creatorIsDead(String(entry.dropLast("-bpffs".count))) {
            BPFFS.unmount("/run/" + entry)
            rmdir("/run/" + entry)
        }
    }
}

struct CommandFailed: Error, CustomStringConvertible {
    var command: [String]
    var status: Int32
    var output: String
    var description: String { "`\(command.joined(separator: " "))` exited \(status): \(output)" }
}

/// Runs a command (absolute path or looked up in /usr/sbin, /usr/bin, /sbin, /bin) and returns stdout.
@discardableResult
func sh(_ args: [String], allowFailure: Bool = false) throws -> String {
    let process = Process()
    let tool = args[0]
    let path = tool.hasPrefix("/") ? tool
        : ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) } ?? tool
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = Array(args.dropFirst())
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let output = String(decoding: data, as: UTF8.self)
    if process.terminationStatus != 0 && !allowFailure {
        throw CommandFailed(command: args, status: process.terminationStatus, output: output)
    }
    return output
}

@discardableResult
func nsh(_ ns: String, _ args: [String], allowFailure: Bool = false) throws -> String {
    try sh(["ip", "netns", "exec", ns] + args, allowFailure: allowFailure)
}

/// A private bpffs under /run, unmounted and removed by `close()`.
final class PrivateBPFFS: @unchecked Sendable {
    let path: String
    init(_ tag: String) throws {
        path = "/run/\(tag)-bpffs"
        try BPFFS.ensureMounted(at: path)
    }
    func close() {
        BPFFS.unmount(path)
        rmdir(path)
    }
}

/// A network namespace deleted by `close()`.
final class TestNamespace: @unchecked Sendable {
    let name: String
    init(_ name: String) throws {
        self.name = name
        try BPFDataplaneTests.sh(["ip", "netns", "add", name])
        try nsh(name, ["ip", "link", "set", "lo", "up"])
    }
    func run<T>(_ body: () throws -> T) throws -> T { try NetnsThread.run(namespace: name, body) }
    @discardableResult
    func sh(_ args: [String], allowFailure: Bool = false) throws -> String {
        try nsh(name, args, allowFailure: allowFailure)
    }
    func ifindex(_ ifname: String) throws -> Int32 {
        try run { Int32(if_nametoindex(ifname)) }
    }
    func mac(_ ifname: String) throws -> MACAddress {
        let text = try sh(["cat", "/sys/class/net/\(ifname)/address"]).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let mac = MACAddress(text) else { throw CommandFailed(command: ["mac", ifname], status: 0, output: text) }
        return mac
    }
    func close() {
        _ = try? TestSupportShell.delete(namespace: name)
    }
}

enum TestSupportShell {
    static func delete(namespace: String) throws {
        try sh(["ip", "netns", "del", namespace], allowFailure: true)
    }
}

/// Verdict names for fixture tables and failure messages.
enum Verdict: String, Sendable {
    case xdpAborted = "XDP_ABORTED", xdpDrop = "XDP_DROP", xdpPass = "XDP_PASS", xdpTX = "XDP_TX", xdpRedirect = "XDP_REDIRECT"
    case tcOK = "TC_ACT_OK", tcShot = "TC_ACT_SHOT", tcRedirect = "TC_ACT_REDIRECT"

    static func xdp(_ v: UInt32) -> String {
        [0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"][v] ?? "XDP_\(v)"
    }
    static func tc(_ v: UInt32) -> String {
        [0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT", UInt32(bitPattern: -1): "TC_ACT_UNSPEC"][v] ?? "TC_\(v)"
    }
}

/// The difference between two counter snapshots: only the counters that moved.
func counterDelta(_ before: [FXDPCounter: FXDPCount], _ after: [FXDPCounter: FXDPCount]) -> [FXDPCounter: FXDPCount] {
    var moved: [FXDPCounter: FXDPCount] = [:]
    for (k, a) in after {
        let b = before[k] ?? FXDPCount()
        if a != b { moved[k] = FXDPCount(packets: a.packets &- b.packets, bytes: a.bytes &- b.bytes) }
    }
    return moved
}

/// Makes a namespace and a private bpffs named `tag`, then runs `setUp` in them; when any step
/// fails, both are removed before the error goes on.
func makeNamespaceAndBPFFS<T>(_ tag: String, setUp: (TestNamespace, PrivateBPFFS) throws -> T) throws
    -> (ns: TestNamespace, bpffs: PrivateBPFFS, made: T) {
    let ns = try TestNamespace(tag)
    let bpffs: PrivateBPFFS
    do { bpffs = try PrivateBPFFS(tag) } catch { ns.close(); throw error }
    do {
        return (ns, bpffs, try setUp(ns, bpffs))
    } catch {
        bpffs.close()
        ns.close()
        throw error
    }
}
