// Open/load, error reporting, program info and BPF_PROG_TEST_RUN on the fixture programs.

import BPFLoader
import CBPF
import Glibc
import Foundation
import Logging
import Synchronization
import TestSupport
import TestTraits
import Testing

@Suite("BPFObject and programs", .needsRoot, .ownThreads)
struct ObjectTests {
    @Test func opensAndLoadsFixture() throws {
        var object = try BPFObject(elf: Fixtures.bytes("loader_fixture"), name: "loader_fixture")
        let loadedEarly = object.isLoaded
        #expect(!loadedEarly)
        #expect(Set(object.programNames) == ["xdp_fixture", "xdp_other", "tc_mark", "tc_drop", "xdp_config"])
        #expect(Set(["fx_lpm", "fx_hash", "fx_counts"]).isSubset(of: Set(object.mapNames)))
        // Programs are not usable before load: a clear error, not a crash.
        let early = #expect(throws: BPFError.self) { try object.program(named: "xdp_fixture") }
        #expect(early?.description.contains("load()") == true)
        try object.load()
        let loadedNow = object.isLoaded
        #expect(loadedNow)
        let program = try object.program(named: "xdp_fixture")
        #expect(program.fd >= 0)
        #expect(program.name == "xdp_fixture")
    }

    @Test func opensFromPath() throws {
        let path = try Fixtures.file("loader_fixture")
        defer { unlink(path) }
        var object = try BPFObject(path: path)
        try object.load()
        let objectName = object.name
        #expect(objectName.hasPrefix("fxld") || objectName.contains("loader_fixture"), "\(objectName)")
        _ = try object.program(named: "tc_drop")
    }

    @Test func unknownProgramAndMapNamesAreClearErrors() throws {
        let object = try loadFixture("loader_fixture")
        let noProgram = #expect(throws: BPFError.self) { try object.program(named: "nope") }
        #expect(noProgram?.errno == ENOENT)
        #expect(noProgram?.detail.contains("xdp_fixture") == true)
        let noMap = #expect(throws: BPFError.self) { try object.map(named: "nope", key: UInt32.self, value: UInt32.self) }
        #expect(noMap?.detail.contains("fx_hash") == true)
    }

    @Test func badELFIsAClearError() throws {
        let garbage = #expect(throws: BPFError.self) { _ = try BPFObject(elf: [1, 2, 3], name: "garbage") }
        #expect(garbage?.errno == EINVAL)
        #expect(garbage?.description.contains("not an ELF") == true)
        #expect(garbage?.description.contains("bpf_object__open_mem(garbage)") == true)

        // A real ELF that is not a BPF object: libbpf refuses and says why.
        let hostBinary = Array(try Data(contentsOf: URL(fileURLWithPath: "/bin/true")))
        let notBPF = #expect(throws: BPFError.self) { _ = try BPFObject(elf: hostBinary, name: "host") }
        #expect(notBPF != nil && notBPF!.errno != 0)
        #expect(notBPF?.detail.contains("libbpf said") == true)

        // Truncated BPF object.
        let truncated = Array(try Fixtures.bytes("loader_fixture").prefix(200))
        #expect(throws: BPFError.self) { _ = try BPFObject(elf: truncated, name: "truncated") }

        let missing = #expect(throws: BPFError.self) { _ = try BPFObject(path: "/nonexistent/x.bpf.o") }
        #expect(missing?.errno == ENOENT)
    }

    @Test func verifierRefusalCarriesTheLog() throws {
        var object = try BPFObject(elf: Fixtures.bytes("verifier_reject"), name: "verifier_reject")
        let error = #expect(throws: BPFError.self) { try object.load() }
        #expect(error?.operation == "bpf_object__load(verifier_reject)")
        #expect(error?.errno == EACCES)
        // The verifier's own words reach the caller.
        #expect(error?.detail.contains("invalid access to packet") == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("verifier") == true)
    }

    @Test func readOnlyConfigIsSetBeforeLoad() throws {
        // Default: the compiled-in XDP_PASS.
        let plain = try loadFixture("loader_fixture")
        #expect(try plain.program(named: "xdp_config").testRun(packet: ipv4Packet(to: [1, 1, 1, 1])).retval == XDP_PASS.rawValue)

        var object = try BPFObject(elf: Fixtures.bytes("loader_fixture"), name: "loader_fixture")
        #expect(object.mapNames.contains { $0.hasSuffix(".rodata") })
        let wrongSize = #expect(throws: BPFError.self) { try object.setInitialValue(mapNamed: ".rodata", value: UInt64(1)) }
        #expect(wrongSize?.detail.contains("4 bytes") == true)
        try object.setInitialValue(mapNamed: ".rodata", value: UInt32(XDP_DROP.rawValue))
        try object.load()
        #expect(try object.program(named: "xdp_config").testRun(packet: ipv4Packet(to: [1, 1, 1, 1])).retval == XDP_DROP.rawValue)
        // After load the config is frozen.
        #expect(throws: BPFError.self) { try object.setInitialValue(mapNamed: ".rodata", value: UInt32(1)) }
    }

    @Test func programInfo() throws {
        let object = try loadFixture("loader_fixture")
        let xdp = try object.program(named: "xdp_fixture")
        let info = try xdp.info()
        #expect(info.id > 0)
        #expect(info.tag.count == 8)
        #expect(info.name == "xdp_fixture")
        #expect(info.type == BPF_PROG_TYPE_XDP.rawValue)
        let lpm = try object.map(named: "fx_lpm", key: LPMKey.self, value: UInt32.self)
        let counts = try object.perCPUMap(named: "fx_counts", key: UInt32.self, value: UInt64.self)
        // The maps it uses, plus ".rodata", which libbpf binds to every program.
        #expect(Set([lpm.info().id, counts.info().id]).isSubset(of: Set(info.mapIDs)))
        #expect(info.mapIDs.count <= 3)
        #expect(try BPFProgramInfo.forID(info.id) == info)

        let tc = try object.program(named: "tc_mark").info()
        #expect(tc.type == BPF_PROG_TYPE_SCHED_CLS.rawValue)
        #expect(tc.tag != info.tag)

        let gone = #expect(throws: BPFError.self) { try BPFProgramInfo.forID(UInt32.max - 7) }
        #expect(gone?.errno == ENOENT)
    }

    @Test func testRunXDPVerdictsAndBytes() throws {
        let object = try loadFixture("loader_fixture")
        let lpm = try object.map(named: "fx_lpm", key: LPMKey.self, value: UInt32.self)
        try lpm.update(LPMKey(16, 10, 1, 0, 0), UInt32(XDP_TX.rawValue))
        try lpm.update(LPMKey(24, 10, 1, 2, 0), UInt32(XDP_DROP.rawValue))
        let xdp = try object.program(named: "xdp_fixture")

        // 10.1.9.9 → /16 → XDP_TX with source and destination MAC swapped.
        let bounced = ipv4Packet(to: [10, 1, 9, 9])
        let tx = try xdp.testRun(packet: bounced)
        #expect(tx.retval == XDP_TX.rawValue)
        #expect(Array(tx.packet[0..<6]) == macA)
        #expect(Array(tx.packet[6..<12]) == macB)
        #expect(Array(tx.packet[12...]) == Array(bounced[12...]))

        // 10.1.2.3 → the longer /24 wins → XDP_DROP.
        #expect(try xdp.testRun(packet: ipv4Packet(to: [10, 1, 2, 3])).retval == XDP_DROP.rawValue)

        // No match → XDP_PASS, bytes untouched.
        let other = ipv4Packet(to: [192, 168, 0, 1])
        let pass = try xdp.testRun(packet: other)
        #expect(pass.retval == XDP_PASS.rawValue)
        #expect(pass.packet == other)

        // Per-CPU counters: test runs happened on some CPU(s); the sum is what counts.
        let counts = try object.perCPUMap(named: "fx_counts", key: UInt32.self, value: UInt64.self)
        _ = try xdp.testRun(packet: other, repeat: 5)
        #expect(try counts.sum(UInt32(XDP_PASS.rawValue)) == 6)
        #expect(try counts.sum(UInt32(XDP_TX.rawValue)) == 1)
        #expect(try counts.sum(UInt32(XDP_DROP.rawValue)) == 1)
    }

    @Test func testRunTCPrograms() throws {
        let object = try loadFixture("loader_fixture")
        let packet = ipv4Packet(to: [10, 0, 0, 1])
        let mark = try object.program(named: "tc_mark").testRun(packet: packet)
        #expect(mark.retval == UInt32(TC_ACT_OK))
        var expected = packet
        expected[5] = 0xAA
        #expect(mark.packet == expected)

        let drop = try object.program(named: "tc_drop").testRun(packet: packet)
        #expect(drop.retval == UInt32(TC_ACT_SHOT))

        let counts = try object.perCPUMap(named: "fx_counts", key: UInt32.self, value: UInt64.self)
        #expect(try counts.sum(5) == 1)
        #expect(try counts.sum(6) == 1)

        // Bad input is an error, not a crash.
        #expect(throws: BPFError.self) { try object.program(named: "tc_drop").testRun(packet: []) }
        let small = #expect(throws: BPFError.self) { try object.program(named: "tc_mark").testRun(packet: packet, outputCapacity: 4) }
        #expect(small?.errno == ENOSPC)
    }

    @Test func libbpfMessagesReachSwiftLog() throws {
        let collected = CollectedLogs()
        LibbpfLogging.install(logger: Logger(label: "libbpf-test") { _ in CollectingHandler(store: collected) })
        defer { LibbpfLogging.uninstall() }
        let hostBinary = Array(try Data(contentsOf: URL(fileURLWithPath: "/bin/true")))
        #expect(throws: BPFError.self) { _ = try BPFObject(elf: hostBinary, name: "host_for_log") }
        #expect(collected.messages.contains { $0.level == .warning && $0.text.contains("libbpf:") })
    }

    @Test func errorDescriptionSaysWhatAndWhy() {
        let error = BPFError(operation: "bpf_xdp_attach(p, ifindex 3, native)", errno: -EBUSY, detail: "program id 9 is attached")
        #expect(error.errno == EBUSY)
        #expect(error.description.contains("bpf_xdp_attach(p, ifindex 3, native) failed"))
        #expect(error.description.contains("Device or resource busy"))
        #expect(error.description.contains("program id 9"))
        #expect(error.description.contains("hint:"))
    }

    @Test func possibleCPUs() throws {
        let count = try possibleCPUCount()
        #expect(count >= ProcessInfo.processInfo.activeProcessorCount)
    }
}

final class CollectedLogs: Sendable {
    struct Entry: Sendable { var level: Logger.Level; var text: String }
    private let storage = Mutex<[Entry]>([])
    func append(_ entry: Entry) { storage.withLock { $0.append(entry) } }
    var messages: [Entry] { storage.withLock { $0 } }
}

struct CollectingHandler: LogHandler {
    let store: CollectedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        store.append(.init(level: event.level, text: event.message.description))
    }
}
