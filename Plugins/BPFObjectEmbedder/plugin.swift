// BPFObjectEmbedder — compiles every bpf/*.bpf.c with clang -target bpf and embeds each object in
// the target as a base64 string (see scripts/embed-bpf.sh), so the daemon carries its programs
// wherever it is installed and loads them with bpf_object__open_mem.
//
// Why base64 and not a resource or a [UInt8] literal: declaring the .o as an output makes SwiftPM
// treat it as a resource (pulling Foundation resource bundles in); a 200 KB array literal takes
// tens of seconds to type-check, a string literal a fraction of a second.
import Foundation
import PackagePlugin

@main
struct BPFObjectEmbedder: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let bpfDir = root.appending(path: "bpf")
        let sharedHeader = root.appending(path: "Sources/CBPF/include/fxdp_shared.h")
        let script = root.appending(path: "scripts/embed-bpf.sh")
        let files = try FileManager.default.contentsOfDirectory(atPath: bpfDir.path())
        let sources = files.filter { $0.hasSuffix(".bpf.c") }.sorted()
        let headers = files.filter { $0.hasSuffix(".h") }.sorted().map { bpfDir.appending(path: $0) }
        let clang = ProcessInfo.processInfo.environment["BPF_CLANG"]
            .map { URL(fileURLWithPath: $0) } ?? (try? context.tool(named: "clang").url)
            ?? URL(fileURLWithPath: "/usr/bin/clang")
        return sources.map { name in
            let base = String(name.dropLast(".bpf.c".count))
            let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedBPF_\(base).swift")
            return .buildCommand(
                displayName: "Compiling and embedding BPF object \(name)",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [script.path(), clang.path(), bpfDir.appending(path: name).path(), output.path(),
                            root.appending(path: "Sources/CBPF/include").path()],
                inputFiles: [bpfDir.appending(path: name), sharedHeader, script, bpfDir.appending(path: "cflags")] + headers,
                outputFiles: [output]
            )
        }
    }
}
