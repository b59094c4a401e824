// FlannelBPF loading a compiled object file instead of the embedded one (`--bpf-object`): a changed
// program over the same pinned maps, and every way a file can be wrong — missing, not an object,
// not ours, maps that do not match the pinned ones, a program of the wrong type — refused with an
// error that names the file, before anything is attached.

import BPFDataplane
import BPFLoader
import CBPF
import Foundation
import TestSupport
import TestTraits
import Testing

/// Test-only objects that look like ours in some ways and not in others (see `ObjectSourceTests`).
private let lookalikeSource = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "fxdp_shared.h"
#ifdef SMALL_MAPS
#undef FXDP_MAX_PEERS
#define FXDP_MAX_PEERS 1024
#endif
#include "fxdp_maps.h"
SEC("tc") int fxdp_encap(struct __sk_buff *skb) { return 0; }
#ifdef XDP_AS_TC
SEC("tc") int fxdp_decap_xdp(struct __sk_buff *skb) { return 0; }
#else
SEC("xdp") int fxdp_decap_xdp(struct xdp_md *ctx) { return 2; }
#endif
#ifndef NO_CHECK
SEC("tc") int fxdp_decap_check(struct __sk_buff *skb) { return 0; }
#endif
SEC("tc") int fxdp_decap_steer(struct __sk_buff *skb) { return 0; }
SEC("netfilter") int fxdp_vxlan_door(void *ctx) { return 1; }
SEC("netfilter") int fxdp_pod_guard(void *ctx) { return 1; }
SEC("tc") int fxdp_fast_encap(struct __sk_buff *skb) { return 0; }
SEC("tc") int fxdp_encap6(struct __sk_buff *skb) { return 0; }
SEC("netfilter") int fxdp_vxlan_door6(void *ctx) { return 1; }
SEC("netfilter") int fxdp_pod_guard6(void *ctx) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""

@Suite(.needsRoot, .ownThreads)
struct ObjectSourceTests {
    /// A temp folder removed by the caller.
    private func tempDir() throws -> String {
        let dir = "/tmp/\(Names.unique())-objects"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    private func compileLookalike(_ defines: [String], in dir: String) throws -> String {
        let source = dir + "/lookalike.bpf.c", output = dir + "/lookalike\(defines.joined()).o"
        try lookalikeSource.write(toFile: source, atomically: true, encoding: .utf8)
        try sh([BPFVariantObject.clang()] + BPFVariantObject.compileFlags() + defines.map { "-D\($0)" } + ["-c", source, "-o", output])
        return output
    }

    private func tags(_ bpf: FlannelBPF) throws -> [[UInt8]] {
        try FXDPProgram.allCases.map { try bpf.program($0).info().tag }
    }

    private func mapIDs(_ bpf: FlannelBPF) -> [UInt32] {
        [bpf.peers.info().id, bpf.nodes.info().id, bpf.config.info().id, bpf.counterMap.info().id, bpf.strangers.info().id]
    }

    @Test func aChangedProgramLoadsOverTheSamePinnedMaps() throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try BPFVariantObject.compile(variant: 0, to: dir + "/v0.o")
        try BPFVariantObject.compile(variant: 7, to: dir + "/v7.o")

        let embedded = try FlannelBPF(bpffs: fs.path)
        #expect(embedded.source == .embedded)
        let sameCode = try FlannelBPF(bpffs: fs.path, object: .file(dir + "/v0.o"))
        let changed = try FlannelBPF(bpffs: fs.path, object: .file(dir + "/v7.o"))
        #expect(changed.source == .file(dir + "/v7.o"))
        // Variant 0 is the build's own object (same flags, same code); variant 7 differs in every program.
        #expect(try tags(sameCode) == tags(embedded), "the fixture build does not match the embedded build")
        #expect(try zip(tags(changed), tags(embedded)).allSatisfy { $0 != $1 })
        #expect(mapIDs(sameCode) == mapIDs(embedded) && mapIDs(changed) == mapIDs(embedded), "the pinned maps were not reused")
        for program in FXDPProgram.allCases {
            let maps = Set(try changed.program(program).info().mapIDs)
            #expect(maps.contains(embedded.config.info().id), "\(program) does not use the pinned config map")
        }
    }

    @Test(arguments: ["missing", "empty", "text", "foreign", "lacksAProgram", "smallerMaps", "wrongProgramType"])
    func aWrongFileIsRefusedNamingIt(_ kind: String) throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let running = try FlannelBPF(bpffs: fs.path) // pins exist, as on a node being upgraded
        let pinsBefore = try FileManager.default.contentsOfDirectory(atPath: running.pinDirectory).sorted()

        let path: String
        var mentions: [String] = []
        switch kind {
        case "missing":
            path = dir + "/nonexistent.o"
            mentions = ["cannot open", "No such file"]
        case "empty":
            path = dir + "/empty.o"
            _ = FileManager.default.createFile(atPath: path, contents: Data())
            mentions = ["not an ELF"]
        case "text":
            path = dir + "/text.o"
            try "not an object\n".write(toFile: path, atomically: true, encoding: .utf8)
            mentions = ["not an ELF"]
        case "foreign":
            path = dir + "/foreign.o"
            try "#include <linux/bpf.h>\n__attribute__((section(\"tc\"), used)) int other(struct __sk_buff *s) { return 0; }\nchar _l[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"
                .write(toFile: dir + "/foreign.bpf.c", atomically: true, encoding: .utf8)
            try sh([BPFVariantObject.clang()] + BPFVariantObject.compileFlags() + ["-c", dir + "/foreign.bpf.c", "-o", path])
            mentions = ["lacks program(s) fxdp_encap, fxdp_decap_xdp, fxdp_decap_steer, fxdp_decap_check", FXDP_MAP_PEERS]
        case "lacksAProgram":
            path = try compileLookalike(["NO_CHECK"], in: dir)
            mentions = ["lacks program(s) fxdp_decap_check"]
        case "smallerMaps":
            path = try compileLookalike(["SMALL_MAPS"], in: dir)
            mentions = ["bpf_object__load"]
        default:
            path = try compileLookalike(["XDP_AS_TC"], in: dir)
            mentions = ["fxdp_decap_xdp has type 3", "needs type 6"]
        }
        do {
            _ = try FlannelBPF(bpffs: fs.path, object: .file(path))
            Issue.record("\(kind): \(path) loaded")
        } catch let error as DataplaneError {
            let text = "\(error)"
            #expect(text.contains("--bpf-object \(path)"), "\(kind): the error does not name the file: \(text)")
            for word in mentions {
                #expect(text.contains(word), "\(kind): \(word.debugDescription) not in: \(text)")
            }
            #expect(text.contains("hint:"), "\(text)")
        }
        // Nothing of the refused object was pinned next to ours, and ours still work.
        #expect(try FileManager.default.contentsOfDirectory(atPath: running.pinDirectory).sorted() == pinsBefore)
        #expect(try FlannelBPF(bpffs: fs.path).peers.info().id == running.peers.info().id)
    }
}
