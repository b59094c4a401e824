// TestBinaries — where the built executables are, and a public way to run a program to completion
// (stdout and stderr kept apart, exit status decoded), for tests outside this module.

import Glibc

public enum TestBinaries {
    /// The flanneld-xdp binary next to the test bundle (`swift build --build-tests` builds both),
    /// or $FXDP_DAEMON.
    public static func flanneldXDP() -> String {
        if let p = getenv("FXDP_DAEMON") { return String(cString: p) }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        let exe = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        var dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast()
        // …/debug/flanneld-xdpPackageTests.xctest is a file; its folder holds the executables.
        if dir.last?.hasSuffix(".xctest") == true { dir = dir.dropLast() }
        return dir.joined(separator: "/") + "/flanneld-xdp"
    }
}

public enum TestCommand {
    /// Runs `argv` (argv[0] absolute) to completion; `env` is added to this process's environment.
    public static func run(_ argv: [String], env: [String: String] = [:]) throws -> LabCommandResult {
        try CommandRunner.run(argv, env: env)
    }
}
