// Typed map access: CRUD, iteration, LPM, per-CPU, size checks.

import BPFLoader
import CBPF
import Glibc
import TestSupport
import TestTraits
import Testing

@Suite("BPF maps", .needsRoot, .ownThreads)
struct MapTests {
    @Test func hashCRUDKeysEntries() throws {
        let object = try loadFixture("loader_fixture")
        let map = try object.map(named: "fx_hash", key: UInt32.self, value: FxValue.self)
        #expect(try map.lookup(1) == nil)
        try map.update(1, FxValue(a: 0x1122_3344_5566_7788, b: 7))
        try map.update(2, FxValue(a: 2, b: 22))
        #expect(try map.lookup(1) == FxValue(a: 0x1122_3344_5566_7788, b: 7))
        #expect(Set(try map.keys()) == [1, 2])
        let entries = try map.entries()
        #expect(entries.count == 2)
        #expect(entries.first { $0.key == 2 }?.value == FxValue(a: 2, b: 22))

        // Flags mean what they say.
        let exists = #expect(throws: BPFError.self) { try map.update(1, FxValue(a: 0, b: 0), flags: .noExist) }
        #expect(exists?.errno == EEXIST)
        let absent = #expect(throws: BPFError.self) { try map.update(3, FxValue(a: 0, b: 0), flags: .exist) }
        #expect(absent?.errno == ENOENT)
        try map.update(1, FxValue(a: 9, b: 9), flags: .exist)
        #expect(try map.lookup(1) == FxValue(a: 9, b: 9))

        #expect(try map.delete(1) == true)
        #expect(try map.delete(1) == false)
        #expect(try map.keys() == [2])

        // Full map: E2BIG with a hint.
        for key in UInt32(10)..<UInt32(17) { try map.update(key, FxValue(a: UInt64(key), b: 0)) }
        let full = #expect(throws: BPFError.self) { try map.update(99, FxValue(a: 0, b: 0)) }
        #expect(full?.errno == E2BIG)

        let info = map.info()
        #expect(info.name == "fx_hash")
        #expect(info.type == BPF_MAP_TYPE_HASH.rawValue)
        #expect(info.keySize == 4 && info.valueSize == 16 && info.maxEntries == 8)
    }

    @Test func lpmLongestPrefixMatch() throws {
        let object = try loadFixture("loader_fixture")
        let lpm = try object.map(named: "fx_lpm", key: LPMKey.self, value: UInt32.self)
        try lpm.update(LPMKey(8, 10, 0, 0, 0), 8)
        try lpm.update(LPMKey(16, 10, 1, 0, 0), 16)
        try lpm.update(LPMKey(32, 10, 1, 2, 3), 32)
        #expect(try lpm.lookup(LPMKey(32, 10, 1, 2, 3)) == 32)
        #expect(try lpm.lookup(LPMKey(32, 10, 1, 2, 4)) == 16)
        #expect(try lpm.lookup(LPMKey(32, 10, 200, 0, 1)) == 8)
        #expect(try lpm.lookup(LPMKey(32, 11, 0, 0, 1)) == nil)
        #expect(try lpm.keys().count == 3)
        #expect(try lpm.delete(LPMKey(16, 10, 1, 0, 0)))
        #expect(try lpm.lookup(LPMKey(32, 10, 1, 2, 4)) == 8)
    }

    @Test func perCPUArray() throws {
        let object = try loadFixture("loader_fixture")
        let counts = try object.perCPUMap(named: "fx_counts", key: UInt32.self, value: UInt64.self)
        let cpus = try possibleCPUCount()
        #expect(counts.cpuCount == cpus)
        #expect(try counts.lookup(3) == Array(repeating: 0, count: cpus))
        try counts.update(3, 5)
        #expect(try counts.lookup(3) == Array(repeating: 5, count: cpus))
        #expect(try counts.sum(3) == UInt64(5 * cpus))
        try counts.update(4, perCPU: (0..<cpus).map { UInt64($0 + 1) })
        #expect(try counts.lookup(4) == (0..<cpus).map { UInt64($0 + 1) })
        #expect(try counts.keys().count == 8)
        #expect(try counts.lookup(100) == [])
        #expect(try counts.lookupIfPresent(100) == nil)
        #expect(throws: BPFError.self) { try counts.update(4, perCPU: [1]) }
    }

    @Test func perCPUValuesSmallerThanEightBytesAreRounded() throws {
        // A per-CPU map with 4-byte values: each CPU slot is 8 bytes in the syscall buffer.
        let fd = bpf_map_create(BPF_MAP_TYPE_PERCPU_ARRAY, "fxld_pcpu4", 4, 4, 2, nil)
        #expect(fd >= 0)
        defer { close(fd) }
        try withPrivateBPFFS { root in
            #expect(bpf_obj_pin(fd, "\(root)/m") == 0)
            let map = try PerCPUMap.openPinned(path: "\(root)/m", key: UInt32.self, value: UInt32.self)
            try map.update(1, perCPU: (0..<map.cpuCount).map { UInt32(100 + $0) })
            #expect(try map.lookup(1) == (0..<map.cpuCount).map { UInt32(100 + $0) })
            #expect(try map.sum(1) == (0..<map.cpuCount).reduce(0) { $0 + UInt32(100 + $1) })
        }
    }

    @Test func sizeMismatchIsAClearError() throws {
        let object = try loadFixture("loader_fixture")
        let value = #expect(throws: BPFError.self) { try object.map(named: "fx_hash", key: UInt32.self, value: UInt32.self) }
        #expect(value?.detail.contains("value size 16") == true)
        #expect(value?.detail.contains("UInt32") == true)
        let key = #expect(throws: BPFError.self) { try object.map(named: "fx_hash", key: UInt64.self, value: FxValue.self) }
        #expect(key?.detail.contains("key size 4") == true)
        // Per-CPU maps must be opened as such, and the other way round.
        #expect(throws: BPFError.self) { try object.map(named: "fx_counts", key: UInt32.self, value: UInt64.self) }
        #expect(throws: BPFError.self) { try object.perCPUMap(named: "fx_hash", key: UInt32.self, value: FxValue.self) }
    }

    @Test func mapOutlivesItsObjectAndIsSharedAcrossThreads() async throws {
        let map: BPFMap<UInt32, FxValue>
        do {
            let object = try loadFixture("loader_fixture")
            map = try object.map(named: "fx_hash", key: UInt32.self, value: FxValue.self)
        }
        // The object is closed; our dup()'d fd keeps the map.
        try map.update(1, FxValue(a: 1, b: 1))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in UInt32(0)..<4 {
                group.addTask {
                    for round in 0..<200 {
                        try map.update(worker, FxValue(a: UInt64(round), b: worker))
                        _ = try map.lookup(worker)
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try map.lookup(3) == FxValue(a: 199, b: 3))
        #expect(try BPFMapInfo.forID(map.info().id) == map.info())
    }
}
