// bpffs, pinning, reopening pinned maps from other processes, and pin_root_path reuse.

@testable import BPFLoader
import CBPF
import Glibc
import Foundation
import TestSupport
import TestTraits
import Testing

@Suite("bpffs and pinning", .needsRoot, .ownThreads)
struct PinTests {
    @Test func mountsAndUnmountsAPrivateBPFFS() throws {
        let path = "/run/\(UniqueName.make("-mnt"))/nested"
        defer { rmdir(path); rmdir((path as NSString).deletingLastPathComponent) }
        #expect(!BPFFS.isMounted(at: "/tmp"))
        #expect(!BPFFS.isMounted(at: path))
        try BPFFS.ensureMounted(at: path)
        #expect(BPFFS.isMounted(at: path))
        try BPFFS.ensureMounted(at: path)  // idempotent
        BPFFS.unmount(path)
        #expect(!BPFFS.isMounted(at: path))
    }

    @Test func folderInsideABPFFSIsNotMountedAgain() throws {
        try withPrivateBPFFS { root in
            let nested = "\(root)/project/v1"
            try BPFFS.ensureMounted(at: nested)
            #expect(BPFFS.isMounted(at: nested))
            let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
            #expect(!mounts.contains(nested))
            // Pins made there are visible through the parent instance.
            let object = try loadFixture("loader_fixture")
            try object.map(named: "fx_hash", key: UInt32.self, value: FxValue.self).pin(at: "\(nested)/fx_hash")
            _ = try BPFMap.openPinned(path: "\(root)/project/v1/fx_hash", key: UInt32.self, value: FxValue.self)
        }
    }

    @Test func swiftPinsAndAnotherProcessReads() throws {
        try withPrivateBPFFS { root in
            let pinPath = "\(root)/fx_hash"
            do {
                let object = try loadFixture("loader_fixture")
                let map = try object.map(named: "fx_hash", key: UInt32.self, value: FxValue.self)
                try map.update(7, FxValue(a: 4386, b: 5))
                try map.pin(at: pinPath)
                let again = #expect(throws: BPFError.self) { try map.pin(at: pinPath) }
                #expect(again?.errno == EEXIST)
            }
            // Object and handles are gone; the pin keeps the map. Another process reads it.
            let dump = try sh(["/usr/sbin/bpftool", "-j", "map", "dump", "pinned", pinPath])
            #expect(dump.stdout.contains("4386"), "\(dump.stdout)")
            // And Swift reopens it by path.
            let reopened = try BPFMap.openPinned(path: pinPath, key: UInt32.self, value: FxValue.self)
            #expect(try reopened.lookup(7) == FxValue(a: 4386, b: 5))
            #expect(reopened.info().name == "fx_hash")
            let wrongType = #expect(throws: BPFError.self) { try BPFMap.openPinned(path: pinPath, key: UInt32.self, value: UInt8.self) }
            #expect(wrongType?.errno == EINVAL)
            let missing = #expect(throws: BPFError.self) { try BPFMap.openPinned(path: "\(root)/none", key: UInt32.self, value: UInt8.self) }
            #expect(missing?.errno == ENOENT)
        }
    }

    @Test func programPinOutlivesTheObject() throws {
        try withPrivateBPFFS { root in
            let id: UInt32
            do {
                let object = try loadFixture("loader_fixture")
                let program = try object.program(named: "tc_drop")
                id = try program.info().id
                try program.pin(at: "\(root)/tc_drop")
            }
            // The object is closed; the pin keeps the program loaded under the same id.
            #expect(try BPFProgramInfo.forID(id).name == "tc_drop")
            let show = try sh(["/usr/sbin/bpftool", "-j", "prog", "show", "pinned", "\(root)/tc_drop"])
            #expect(show.stdout.contains("\"id\":\(id)"), "\(show.stdout)")
        }
    }

    @Test func anotherProcessPinsAndExitsThenSwiftReads() throws {
        try withPrivateBPFFS { root in
            let pinPath = "\(root)/external"
            // Each bpftool run is a process that exits: only the pin keeps the map alive.
            try sh(["/usr/sbin/bpftool", "map", "create", pinPath, "type", "hash", "key", "4", "value", "8",
                    "entries", "4", "name", "fxld_ext"])
            try sh(["/usr/sbin/bpftool", "map", "update", "pinned", pinPath,
                    "key", "1", "0", "0", "0", "value", "42", "0", "0", "0", "0", "0", "0", "0"])
            let map = try BPFMap.openPinned(path: pinPath, key: UInt32.self, value: UInt64.self)
            #expect(try map.lookup(1) == 42)
            try map.update(2, 43)
            let dump = try sh(["/usr/sbin/bpftool", "-j", "map", "lookup", "pinned", pinPath, "key", "2", "0", "0", "0"])
            #expect(dump.stdout.contains("0x2b"), "\(dump.stdout)")
        }
    }

    @Test func pinRootReusesPinnedMapAcrossObjects() throws {
        try withPrivateBPFFS { root in
            let firstID: UInt32
            do {
                let object = try loadFixture("pinned_fixture", pinRoot: root)
                #expect(try object.pinPath(ofMap: "fx_pinned") == "\(root)/fx_pinned")
                let map = try object.map(named: "fx_pinned", key: UInt32.self, value: UInt64.self)
                firstID = map.info().id
                try map.update(1, 99)
                _ = try object.program(named: "xdp_pinned").testRun(packet: ipv4Packet(to: [1, 2, 3, 4]))
                #expect(try map.lookup(1) == 100)
            }
            #expect(FileManager.default.fileExists(atPath: "\(root)/fx_pinned"))
            // A new object (as after a restart) finds the pinned map: same id, same contents.
            let object = try loadFixture("pinned_fixture", pinRoot: root)
            let map = try object.map(named: "fx_pinned", key: UInt32.self, value: UInt64.self)
            #expect(map.info().id == firstID)
            #expect(try map.lookup(1) == 100)
            _ = try object.program(named: "xdp_pinned").testRun(packet: ipv4Packet(to: [1, 2, 3, 4]))
            #expect(try map.lookup(1) == 101)
        }
    }

    @Test func incompatiblePinIsRefused() throws {
        try withPrivateBPFFS { root in
            // Someone pinned a different map under the same name: libbpf must not reuse it.
            try sh(["/usr/sbin/bpftool", "map", "create", "\(root)/fx_pinned", "type", "hash", "key", "4", "value", "4",
                    "entries", "16", "name", "fx_pinned"])
            var object = try BPFObject(elf: Fixtures.bytes("pinned_fixture"), name: "pinned_fixture", pinRoot: root)
            let error = #expect(throws: BPFError.self) { try object.load() }
            #expect(error?.detail.contains("fx_pinned") == true, "\(error?.description ?? "")")
        }
    }

    @Test func pinRootThatIsNotBPFFSFails() throws {
        // libbpf creates the missing folder, then refuses to pin outside a bpffs.
        let root = "/run/\(UniqueName.make("-absent"))"
        defer { rmdir(root) }
        var object = try BPFObject(elf: Fixtures.bytes("pinned_fixture"), name: "pinned_fixture", pinRoot: root)
        let error = #expect(throws: BPFError.self) { try object.load() }
        #expect(error?.detail.contains("fx_pinned") == true, "\(error?.description ?? "")")
    }

    @Test func repairPinsPutsBackRemovedAndForeignPins() throws {
        try withPrivateBPFFS { root in
            let folder = "\(root)/app"
            let object = try loadFixture("pinned_fixture", pinRoot: folder)
            let id = try object.map(named: "fx_pinned", key: UInt32.self, value: UInt64.self).info().id
            let path = "\(folder)/fx_pinned"
            #expect(try object.repairPins().isEmpty, "nothing to repair right after load")

            // Removed by hand: pinned again, the same map.
            #expect(unlink(path) == 0)
            #expect(try object.repairPins() == [PinRepair(mapName: "fx_pinned", path: path, kind: .missing)])
            #expect(try BPFMap.openPinned(path: path, key: UInt32.self, value: UInt64.self).info().id == id)

            // Another map pinned in its place: ours again.
            #expect(unlink(path) == 0)
            try sh(["/usr/sbin/bpftool", "map", "create", path, "type", "hash", "key", "4", "value", "8",
                    "entries", "16", "name", "fx_pinned"])
            #expect(try BPFMap.openPinned(path: path, key: UInt32.self, value: UInt64.self).info().id != id)
            #expect(try object.repairPins() == [PinRepair(mapName: "fx_pinned", path: path, kind: .replaced)])
            #expect(try BPFMap.openPinned(path: path, key: UInt32.self, value: UInt64.self).info().id == id)

            // The whole folder removed: made again.
            #expect(unlink(path) == 0 && rmdir(folder) == 0)
            #expect(try object.repairPins().map(\.kind) == [.missing])
            #expect(try BPFMap.openPinned(path: path, key: UInt32.self, value: UInt64.self).info().id == id)
            unlink(path)
            rmdir(folder)
        }
    }
}
