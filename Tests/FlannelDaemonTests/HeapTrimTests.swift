import Dataplane
import FlannelDaemon
import Glibc
import Testing

extension DaemonSuite {
@Suite("HeapTrim: free heap pages go back to the kernel")
struct HeapTrimTests {
    @Test("pages freed between live blocks (which glibc keeps) are given back by a trim; the figures are sane")
    func trimGivesFreedPagesBack() throws {
        #expect(HeapTrim.configure())
        let blockSize = 64 << 10 // below the mmap threshold: the blocks live in an arena
        let count = 512 // 32 MiB
        var blocks: [UnsafeMutableRawPointer] = []
        for _ in 0..<count {
            let block = try #require(malloc(blockSize))
            memset(block, 0x5a, blockSize) // resident now
            blocks.append(block)
        }
        defer { for (i, block) in blocks.enumerated() where i % 8 == 7 { free(block) } }
        // Free 7 of every 8: the live eighth ones pin the arena, so the freed pages stay resident.
        for (i, block) in blocks.enumerated() where i % 8 != 7 { free(block) }
        let before = HeapTrim.stats()
        #expect(before.inUse > 0 && before.free >= UInt64(count * 7 / 8 * blockSize) / 2)
        let trimmed = try #require(HeapTrim.trimIfWorthIt(), "\(before): not worth a trim?")
        let given = Int64(trimmed.before.residentAnonymous) - Int64(trimmed.after.residentAnonymous)
        // 28 MiB were freed; other tests in this process may allocate meanwhile, so ask for half.
        #expect(given >= 14 << 20, "before \(trimmed.before), after \(trimmed.after)")
        // Nothing left worth trimming right after a trim (unless others allocated and freed a lot).
        #expect(HeapTrim.stats().residentAnonymous < trimmed.before.residentAnonymous)
    }

    @Test("the executable's read-only pages can be handed back, and its code runs on afterwards")
    func executablePagesGoBack() {
        // This test binary's code and constants: tens of megabytes.
        #expect(HeapTrim.releaseExecutablePages() > 1 << 20)
        // Code paged out comes back on use.
        #expect(HeapTrim.stats().inUse > 0)
    }
}
}
