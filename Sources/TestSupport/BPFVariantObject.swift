// BPFVariantObject — builds "a changed program" for upgrade tests: bpf/flanneld_xdp.bpf.c compiled
// with the flags the build uses (scripts/embed-bpf.sh, `make bpf`) plus -DFXDP_PROGRAM_VARIANT=<n>,
// which puts one behaviour-neutral instruction in every program. The result has other program tags
// than the embedded object and exactly the same maps, which is what a new release that changed
// only code looks like to a running node.

import Glibc

public enum BPFVariantObject {
    /// The repository root (this file is Sources/TestSupport/BPFVariantObject.swift).
    public static func repositoryRoot(_ file: String = #filePath) -> String {
        var parts = file.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }

    /// The clang the build uses: $BPF_CLANG, else the toolchain's, else Debian's.
    public static func clang() -> String {
        if let env = getenv("BPF_CLANG"), env.pointee != 0 { return String(cString: env) }
        return access("/opt/swift/usr/bin/clang", X_OK) == 0 ? "/opt/swift/usr/bin/clang" : "/usr/bin/clang"
    }

    /// The compile flags of every BPF object the project builds (bpf/cflags), then the include
    /// folders of the shared header, bpf/ and the multiarch system headers.
    public static func compileFlags() -> [String] {
        let root = repositoryRoot()
        let multiarch = (try? CommandRunner.run(["/usr/bin/gcc", "-print-multiarch"]))?.stdout
            .split(separator: "\n").first.map(String.init) ?? "x86_64-linux-gnu"
        let flags = readFile(root + "/bpf/cflags")
        return flags.split(whereSeparator: \.isWhitespace).map(String.init)
            + ["-I\(root)/Sources/CBPF/include", "-I\(root)/bpf", "-I/usr/include/\(multiarch)"]
    }

    /// Compiles the data path object with `variant` (0: the same code as the embedded object) into
    /// `output`. Throws LabError with clang's stderr when the compile fails.
    public static func compile(variant: Int, to output: String) throws {
        let argv = [clang()] + compileFlags()
            + ["-DFXDP_PROGRAM_VARIANT=\(variant)", "-c", "\(repositoryRoot())/bpf/flanneld_xdp.bpf.c", "-o", output]
        let r = try CommandRunner.run(argv)
        guard r.status == 0 else { throw LabError(command: argv, status: r.status, stderr: r.stderr) }
    }
}
