// Design note: why the daemon hands freed memory back to the kernel. At start-up, and again on every
// lease re-list, full reconcile pass and last-known-state write, the daemon briefly holds O(peers)
// transient data: etcd's list response and its parse tree, the map and netlink dumps a full pass
// reads back, the JSON of the saved state. glibc keeps what is freed inside its arenas (one per
// thread that allocated, up to 8 per core), so VmRSS stayed near the start-up peak. Measured at 5000
// peers with mallinfo2/malloc_info: about 4–5 MB in use, 11–13 MB free inside 4 thread arenas.
// Two glibc behaviours keep that memory resident, and both are addressed here:
//
// - `malloc_trim(0)` gives the free pages inside every arena back (MADV_DONTNEED), but not the free
//   top of a thread arena. A thread arena shrinks its top only when a free leaves more than
//   M_TRIM_THRESHOLD there, and glibc raises that threshold (to twice the largest freed mmapped
//   block, megabytes after one large response) unless it is set explicitly. So `configure()` fixes
//   M_TRIM_THRESHOLD and M_MMAP_THRESHOLD at 128 KiB (glibc's own starting values): blocks of
//   128 KiB and more (response bodies, dump buffers) are mmapped and unmapped when freed, and free
//   tops above 128 KiB go back at once. The control plane makes few such allocations; the data
//   paths allocate nothing that large per packet.
// - Then `trimIfWorthIt()` runs `malloc_trim(0)` once when start-up has finished and whenever a
//   periodic check (one /proc/self/statm read and one mallinfo2, microseconds, every 2 s) finds more
//   than `defaultSlack` of resident anonymous memory beyond what malloc has handed out.
//
// Measured (bench, 5000 peers, right after 50 lease changes): VmRSS 36.9 MiB with neither, 33.4 MiB
// with the trim alone, 26.1 MiB with both. M_ARENA_MAX=2 saved another 0.3 MiB only and would make
// the userspace data path's threads share arenas, so it is not set.
//
// The executable's own pages are the other half of VmRSS. The static binary holds ~17 MB of code;
// the kernel maps file pages 64 KiB around each page touched (fault-around), and start-up (argument
// parsing, TLS set-up, BPF load, the first reconcile) touches code all over it: 19.5 of the 22.4 MiB
// of VmRSS at 100 peers were file pages. `releaseExecutablePages()`, once after start-up, asks the
// kernel to drop the executable's read-only pages from this process (MADV_PAGEOUT; pages another
// process maps stay); what the running daemon uses comes back on first use, a read from the page
// cache or the disk, and the rest stays out.
//
// It lives here, below the daemon, because glibc's malloc.h is not in Swift's Glibc module: the
// calls go through the C bridge, which the daemon does not import. The daemon's HeapTrimService
// runs the periodic check.

import CSystemShims
import Glibc
import RuntimeSupport

public enum HeapTrim {
    public struct Stats: Sendable, CustomStringConvertible {
        /// Bytes malloc has handed out.
        public var inUse: UInt64
        /// Bytes free inside the arenas (whether or not still resident).
        public var free: UInt64
        /// Resident anonymous memory of the process (heap, stacks, other private mappings).
        public var residentAnonymous: UInt64

        public var description: String {
            "in use \(inUse >> 10) KiB, free in arenas \(free >> 10) KiB, resident anonymous \(residentAnonymous >> 10) KiB"
        }
    }

    /// More resident anonymous memory than this beyond what is in use is worth a trim.
    public static let defaultSlack: UInt64 = 3 << 20

    /// glibc's starting values, fixed: see the design note.
    public static let thresholdBytes: Int32 = 128 << 10

    /// Fixes glibc's trim and mmap thresholds (call once, early). Returns false if glibc refused.
    @discardableResult
    public static func configure() -> Bool {
        shim_heap_set_thresholds(thresholdBytes, thresholdBytes) == 1
    }

    public static func stats() -> Stats {
        var heap = shim_heap_stats()
        shim_heap_stats(&heap)
        return Stats(inUse: heap.in_use, free: heap.free, residentAnonymous: residentAnonymousBytes() ?? 0)
    }

    /// Trims when the resident anonymous memory exceeds what malloc has handed out by more than
    /// `slack`. Returns the figures before and after a trim, nil when none was done.
    @discardableResult
    public static func trimIfWorthIt(slack: UInt64 = defaultSlack) -> (before: Stats, after: Stats)? {
        let before = stats()
        guard before.residentAnonymous > before.inUse &+ slack else { return nil }
        _ = shim_heap_trim()
        return (before, stats())
    }

    /// Drops the executable's read-only pages (code and constants) from this process: see the
    /// design note. Returns the bytes asked back (0 when /proc/self/maps is unreadable).
    @discardableResult
    public static func releaseExecutablePages() -> Int {
        guard let executable = SystemCall.readLink("/proc/self/exe"),
              let maps = SystemCall.readSmallFile("/proc/self/maps", limit: 1 << 20) else { return 0 }
        var released = 0
        for line in maps.split(separator: "\n") {
            // "start-end perms offset dev inode path"
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[5] == executable, !fields[1].contains("w") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16), end > start,
                  let address = UnsafeMutableRawPointer(bitPattern: start) else { continue }
            if madvise(address, Int(end - start), MADV_PAGEOUT) == 0 { released += Int(end - start) }
        }
        return released
    }

    /// Resident pages minus file-backed/shared ones, from /proc/self/statm; nil if unreadable.
    static func residentAnonymousBytes() -> UInt64? {
        guard let text = SystemCall.readSmallFile("/proc/self/statm", limit: 128) else { return nil }
        // "size resident shared text lib data dt", in pages.
        let fields = text.split(separator: " ").prefix(3).map { UInt64($0) }
        guard fields.count == 3, let resident = fields[1], let shared = fields[2], resident >= shared else { return nil }
        return (resident - shared) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }
}
