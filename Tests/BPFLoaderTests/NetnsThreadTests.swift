// TestSupport.NetnsThread: the closure runs inside the namespace, results and errors come back.

import Glibc
import TestSupport
import TestTraits
import Testing

@Suite("NetnsThread", .needsRoot, .ownThreads)
struct NetnsThreadTests {
    struct Marker: Error, Equatable { var value: Int }

    @Test func runsInsideTheNamespace() throws {
        try VethLab.with { lab in
            let inside = try NetnsThread.run(namespace: lab.name) { (if_nametoindex("va"), if_nametoindex("vb")) }
            #expect(inside.0 > 0 && inside.1 > 0)
            // The worker thread is in the namespace; the calling thread stays where it was.
            let target = inode("/run/netns/\(lab.name)")
            #expect(try NetnsThread.run(namespace: lab.name) { inode("/proc/thread-self/ns/net") } == target)
            #expect(inode("/proc/thread-self/ns/net") != target)
            let viaPath = try NetnsThread.run(namespace: "/run/netns/\(lab.name)") { if_nametoindex("vb") }
            #expect(viaPath == inside.1)
        }
    }

    @Test func rethrowsAndReportsMissingNamespace() throws {
        try VethLab.with { lab in
            let thrown = #expect(throws: Marker.self) { try NetnsThread.run(namespace: lab.name) { throw Marker(value: 7) } }
            #expect(thrown == Marker(value: 7))
        }
        let missing = #expect(throws: NetnsError.self) { try NetnsThread.run(namespace: "fxld-no-such-ns-\(getpid())") { 1 } }
        #expect(missing?.errno == ENOENT)
        #expect(missing?.description.contains("ip netns add") == true)
    }
}

private func inode(_ path: String) -> UInt64 {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_ino) : 0
}
