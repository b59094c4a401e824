// Test support for BPFLoaderTests: fixture compilation, a shell runner, unique names, a private
// bpffs and a network namespace with a veth pair — each removed again in a defer.

import BPFLoader
import Foundation
import Glibc
import Synchronization
import TestSupport
import Testing

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

struct ShellResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a command (absolute path) and waits; throws if it fails and `check` is set.
@discardableResult
func sh(_ arguments: [String], check: Bool = true) throws -> ShellResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("fxld-\(getpid())-\(UniqueName.next())-stderr")
    _ = FileManager.default.createFile(atPath: errFile.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: errFile) }
    let outPipe = Pipe()
    process.standardOutput = outPipe
    process.standardError = try FileHandle(forWritingTo: errFile)
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let out = outPipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    let result = ShellResult(status: process.terminationStatus,
                             stdout: String(decoding: out, as: UTF8.self),
                             stderr: (try? String(contentsOf: errFile, encoding: .utf8)) ?? "")
    if check && result.status != 0 {
        throw TestFailure("\(arguments.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)")
    }
    return result
}

enum UniqueName {
    private static let counter = Atomic<Int>(0)
    static func next() -> Int { counter.add(1, ordering: .relaxed).newValue }
    /// "fxld-<pid>-<n>": loader area tag + pid + counter, unique across helpers and parallel tests.
    static func make(_ what: String = "") -> String { "fxld\(what)-\(getpid())-\(next())" }
}

/// The fixture objects, compiled once per test process from Fixtures/*.bpf.c and kept in memory.
enum Fixtures {
    static let compiled: Result<[String: [UInt8]], TestFailure> = compileAll()

    static func bytes(_ name: String) throws -> [UInt8] {
        guard let bytes = try compiled.get()[name] else { throw TestFailure("no fixture \(name)") }
        return bytes
    }

    /// Writes a fixture to a temp file (for CLIs such as tc/ip/bpftool); removed by the caller.
    static func file(_ name: String) throws -> String {
        let path = "/tmp/\(UniqueName.make("-obj"))-\(name).o"
        try Data(bytes(name)).write(to: URL(fileURLWithPath: path))
        return path
    }

    private static func clang() -> String {
        if let env = ProcessInfo.processInfo.environment["BPF_CLANG"], !env.isEmpty { return env }
        if FileManager.default.isExecutableFile(atPath: "/opt/swift/usr/bin/clang") { return "/opt/swift/usr/bin/clang" }
        return "/usr/bin/clang"
    }

    private static func compileAll() -> Result<[String: [UInt8]], TestFailure> {
        let sourceDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        var template = Array("/tmp/fxld-fixtures-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            return .failure(TestFailure("mkdtemp failed"))
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let multiarch = (try? sh(["/usr/bin/gcc", "-print-multiarch"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? ""
        let include = "/usr/include/" + (multiarch.isEmpty ? "x86_64-linux-gnu" : multiarch)
        var objects: [String: [UInt8]] = [:]
        do {
            let sources = try FileManager.default.contentsOfDirectory(atPath: sourceDir.path).filter { $0.hasSuffix(".bpf.c") }
            for source in sources {
                let name = String(source.dropLast(".bpf.c".count))
                let output = "\(dir)/\(name).o"
                try sh([clang()] + BPFVariantObject.compileFlags() + ["-I", include,
                        "-c", sourceDir.appendingPathComponent(source).path, "-o", output])
                objects[name] = Array(try Data(contentsOf: URL(fileURLWithPath: output)))
            }
        } catch {
            return .failure(TestFailure("compiling fixtures: \(error)"))
        }
        return .success(objects)
    }
}

/// Loads a fixture object, optionally with a pin root.
func loadFixture(_ name: String, pinRoot: String? = nil) throws -> BPFObject {
    var object = try BPFObject(elf: Fixtures.bytes(name), name: name, pinRoot: pinRoot)
    try object.load()
    return object
}

/// Mounts a private bpffs under /run for the duration of `body`.
func withPrivateBPFFS<T>(_ body: (String) throws -> T) throws -> T {
    let path = "/run/\(UniqueName.make("-bpffs"))"
    try BPFFS.ensureMounted(at: path)
    defer {
        BPFFS.unmount(path)
        rmdir(path)
    }
    return try body(path)
}

/// A network namespace with a veth pair va <-> vb inside, both up; deleted after `body`.
struct VethLab {
    let name: String

    static func with<T>(_ body: (VethLab) throws -> T) throws -> T {
        let lab = VethLab(name: UniqueName.make("-ns"))
        try sh(["/usr/sbin/ip", "netns", "add", lab.name])
        defer { _ = try? sh(["/usr/sbin/ip", "netns", "del", lab.name], check: false) }
        try sh(["/usr/sbin/ip", "-n", lab.name, "link", "add", "va", "type", "veth", "peer", "name", "vb"])
        try sh(["/usr/sbin/ip", "-n", lab.name, "link", "set", "va", "up"])
        try sh(["/usr/sbin/ip", "-n", lab.name, "link", "set", "vb", "up"])
        return try body(lab)
    }

    func ifindex(_ device: String) throws -> Int32 {
        let index = try NetnsThread.run(namespace: name) { if_nametoindex(device) }
        guard index > 0 else { throw TestFailure("no \(device) in \(name)") }
        return Int32(index)
    }

    /// Runs `body` on a thread inside the namespace.
    func run<T>(_ body: () throws -> T) throws -> T {
        try NetnsThread.run(namespace: name, body)
    }
}

// MARK: - Packets and fixture types

/// Matches `struct fx_lpm_key` in loader_fixture.bpf.c.
struct LPMKey: BitwiseCopyable {
    var prefixlen: UInt32
    var a: UInt8, b: UInt8, c: UInt8, d: UInt8
    init(_ prefixlen: UInt32, _ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        self.prefixlen = prefixlen
        self.a = a; self.b = b; self.c = c; self.d = d
    }
}

/// Matches `struct fx_value` (C sizeof 16; Swift size 12, stride 16).
struct FxValue: BitwiseCopyable, Equatable {
    var a: UInt64
    var b: UInt32
}

let macA: [UInt8] = [0x02, 0, 0, 0, 0, 0x0a]
let macB: [UInt8] = [0x02, 0, 0, 0, 0, 0x0b]

/// Ethernet + IPv4 (no options) + 8 payload bytes, checksum left 0 (the fixtures don't check it).
func ipv4Packet(to destination: [UInt8], from source: [UInt8] = [10, 9, 9, 9]) -> [UInt8] {
    var packet = macB + macA + [0x08, 0x00]
    let totalLength = 20 + 8
    packet += [0x45, 0, UInt8(totalLength >> 8), UInt8(totalLength & 0xff), 0, 1, 0, 0, 64, 17, 0, 0]
    packet += source + destination
    packet += [1, 2, 3, 4, 5, 6, 7, 8]
    return packet
}
