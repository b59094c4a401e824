// XDP and TC attachment inside a private network namespace with a veth pair, including the
// "only touch what is ours" rules against programs attached with the ip/tc command line.

@testable import BPFLoader
import CBPF
import Glibc
import Dispatch
import Foundation
import Synchronization
import TestSupport
import TestTraits
import Testing

/// Watches an XDP slot from another thread in the namespace while the test changes it.
final class SlotWatcher: Sendable {
    let stop = Atomic<Bool>(false)
    let sawEmpty = Atomic<Bool>(false)
    let samples = Atomic<Int>(0)
    let seen = Mutex<Set<UInt32>>([])
    let finished = DispatchSemaphore(value: 0)

    func start(namespace: String, _ probe: @escaping @Sendable () throws -> UInt32?) {
        DispatchQueue.global().async {
            _ = try? NetnsThread.run(namespace: namespace) {
                while !self.stop.load(ordering: .acquiring) {
                    if let id = try probe() {
                        self.seen.withLock { _ = $0.insert(id) }
                    } else {
                        self.sawEmpty.store(true, ordering: .releasing)
                    }
                    self.samples.add(1, ordering: .relaxed)
                }
            }
            self.finished.signal()
        }
    }

    func waitForSamples(_ count: Int) {
        let target = samples.load(ordering: .relaxed) + count
        var spins = 0
        while samples.load(ordering: .relaxed) < target && spins < 20_000 {
            usleep(100)
            spins += 1
        }
    }

    private let joined = Atomic<Bool>(false)

    /// Stops and joins the watcher; safe to call again (from a defer after a failure).
    func finish() {
        stop.store(true, ordering: .releasing)
        if !joined.exchange(true, ordering: .acquiringAndReleasing) { finished.wait() }
    }

    /// Watches the slot `probe` reads in `namespace` while each of `replacements` runs, 50 samples
    /// before, between and after them: the program ids seen, and whether the slot was ever empty
    /// (an atomic replace never shows it empty).
    static func watch(namespace: String, _ probe: @escaping @Sendable () throws -> UInt32?,
                      during replacements: [() throws -> Void]) throws -> (seen: Set<UInt32>, sawEmpty: Bool) {
        let watcher = SlotWatcher()
        defer { watcher.finish() }
        watcher.start(namespace: namespace, probe)
        watcher.waitForSamples(50)
        for replace in replacements {
            try replace()
            watcher.waitForSamples(50)
        }
        watcher.finish()
        return (watcher.seen.withLock { $0 }, watcher.sawEmpty.load(ordering: .acquiring))
    }
}

@Suite("XDP attach", .needsRoot, .ownThreads)
struct XDPAttachTests {
    @Test(arguments: [XDPMode.generic, XDPMode.native])
    func attachReplaceDetach(mode: XDPMode) throws {
        let object = try loadFixture("loader_fixture")
        let first = try object.program(named: "xdp_fixture")
        let second = try object.program(named: "xdp_other")
        let firstID = try first.info().id, secondID = try second.info().id
        try VethLab.with { lab in
            let va = try lab.ifindex("va")
            try lab.run {
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == nil)
                try XDP.attach(first, ifindex: va, mode: mode, replacing: nil)
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == firstID)
                let other: XDPMode = mode == .native ? .generic : .native
                #expect(try XDP.attachedProgramID(ifindex: va, mode: other) == nil)

                // An occupied slot is not taken over without naming the program there.
                let busy = #expect(throws: BPFError.self) { try XDP.attach(second, ifindex: va, mode: mode, replacing: nil) }
                #expect(busy?.errno == EBUSY || busy?.errno == EEXIST)
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == firstID)
                // Naming the wrong program is refused as well.
                let wrong = #expect(throws: BPFError.self) { try XDP.attach(second, ifindex: va, mode: mode, replacing: secondID) }
                #expect(wrong?.errno == EEXIST)
            }

            // Atomic replace: a watcher in the namespace never sees the slot empty.
            let watched = try SlotWatcher.watch(namespace: lab.name, { try XDP.attachedProgramID(ifindex: va, mode: mode) }, during: [
                { try lab.run { try XDP.attach(second, ifindex: va, mode: mode, replacing: firstID) } },
                { try lab.run { try XDP.attach(first, ifindex: va, mode: mode, replacing: secondID) } },
            ])
            #expect(!watched.sawEmpty)
            #expect(watched.seen == [firstID, secondID])

            try lab.run {
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == firstID)
                // Detach with someone else's id refuses and leaves ours.
                let refused = #expect(throws: BPFError.self) { try XDP.detach(ifindex: va, mode: mode, expectedProgramID: secondID) }
                #expect(refused?.errno == EEXIST)
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == firstID)
                try XDP.detach(ifindex: va, mode: mode, expectedProgramID: firstID)
                #expect(try XDP.attachedProgramID(ifindex: va, mode: mode) == nil)
                // Detaching again is a no-op.
                try XDP.detach(ifindex: va, mode: mode, expectedProgramID: firstID)
            }
        }
    }

    @Test func foreignXDPProgramIsLeftAlone() throws {
        let object = try loadFixture("loader_fixture")
        let ours = try object.program(named: "xdp_fixture")
        let oursID = try ours.info().id
        let foreignFile = try Fixtures.file("foreign")
        defer { unlink(foreignFile) }
        try VethLab.with { lab in
            try sh(["/usr/sbin/ip", "-n", lab.name, "link", "set", "dev", "vb", "xdpgeneric", "obj", foreignFile, "sec", "xdp"])
            let vb = try lab.ifindex("vb")
            try lab.run {
                guard let foreignID = try XDP.attachedProgramID(ifindex: vb, mode: .generic) else {
                    Issue.record("the foreign program is not attached")
                    return
                }
                #expect(try BPFProgramInfo.forID(foreignID).name == "foreign_xdp")
                #expect(throws: BPFError.self) { try XDP.attach(ours, ifindex: vb, mode: .generic, replacing: nil) }
                let refused = #expect(throws: BPFError.self) { try XDP.detach(ifindex: vb, mode: .generic, expectedProgramID: oursID) }
                #expect(refused?.errno == EEXIST)
                #expect(refused?.detail.contains("not ours") == true)
                #expect(try XDP.attachedProgramID(ifindex: vb, mode: .generic) == foreignID)
            }
        }
    }

    @Test func badInterfaceIsAnError() throws {
        let object = try loadFixture("loader_fixture")
        let program = try object.program(named: "xdp_fixture")
        try VethLab.with { lab in
            let va = try lab.ifindex("va")
            let tcProgram = try object.program(named: "tc_mark")
            let (attachError, queryError, typeError) = try lab.run {
                (#expect(throws: BPFError.self) { try XDP.attach(program, ifindex: 9999, mode: .generic, replacing: nil) },
                 #expect(throws: BPFError.self) { try XDP.attachedProgramID(ifindex: 9999, mode: .generic) },
                 #expect(throws: BPFError.self) { try XDP.attach(tcProgram, ifindex: va, mode: .generic, replacing: nil) })
            }
            #expect(attachError?.errno == ENODEV)
            #expect(queryError?.errno == ENODEV)
            #expect(typeError?.detail.contains("needs type") == true)
            #expect(try lab.run { try XDP.attachedProgramID(ifindex: va, mode: .generic) } == nil)
        }
    }
}

@Suite("TC attach", .needsRoot, .ownThreads)
struct TCAttachTests {
    @Test(arguments: [TCDirection.egress, TCDirection.ingress])
    func attachReplaceDetach(direction: TCDirection) throws {
        let object = try loadFixture("loader_fixture")
        let mark = try object.program(named: "tc_mark"), drop = try object.program(named: "tc_drop")
        let markID = try mark.info().id, dropID = try drop.info().id
        try VethLab.with { lab in
            let va = try lab.ifindex("va")
            try lab.run {
                // No clsact yet: the slot reads as empty, not as an error.
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 1, priority: 1) == nil)
                try TC.attach(mark, ifindex: va, direction: direction, handle: 1, priority: 1)
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 1, priority: 1) == markID)
                // Another slot of ours beside it.
                try TC.attach(mark, ifindex: va, direction: direction, handle: 2, priority: 2)
            }
            // Replace in place: a watcher in the namespace never finds the slot empty.
            let watched = try SlotWatcher.watch(
                namespace: lab.name, { try TC.attachedProgramID(ifindex: va, direction: direction, handle: 1, priority: 1) },
                during: [{ try lab.run { try TC.attach(drop, ifindex: va, direction: direction, handle: 1, priority: 1) } }])
            #expect(!watched.sawEmpty)
            #expect(watched.seen == [markID, dropID])
            try lab.run {
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 1, priority: 1) == dropID)
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 2, priority: 2) == markID)
                // Detach one slot, refusing when the expected program is not there.
                #expect(throws: BPFError.self) {
                    try TC.detach(ifindex: va, direction: direction, handle: 1, priority: 1, expectedProgramID: markID)
                }
                try TC.detach(ifindex: va, direction: direction, handle: 1, priority: 1, expectedProgramID: dropID)
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 1, priority: 1) == nil)
                #expect(try TC.attachedProgramID(ifindex: va, direction: direction, handle: 2, priority: 2) == markID)
                try TC.detach(ifindex: va, direction: direction, handle: 2, priority: 2)
                try TC.detach(ifindex: va, direction: direction, handle: 2, priority: 2)  // no-op
            }
            let filters = try sh(["/usr/sbin/tc", "-n", lab.name, "filter", "show", "dev", "va", "\(direction)"])
            #expect(!filters.stdout.contains("tc_"), "\(filters.stdout)")
            // The qdisc stays unless asked.
            #expect(try sh(["/usr/sbin/tc", "-n", lab.name, "qdisc", "show", "dev", "va"]).stdout.contains("clsact"))
            try lab.run { try TC.destroyHook(ifindex: va) }
            #expect(!(try sh(["/usr/sbin/tc", "-n", lab.name, "qdisc", "show", "dev", "va"]).stdout.contains("clsact")))
        }
    }

    @Test func attachedFilterSeesTraffic() throws {
        // tc_drop on va egress: UDP datagrams sent out of va run through it (and are dropped).
        let object = try loadFixture("loader_fixture")
        let drop = try object.program(named: "tc_drop")
        let counts = try object.perCPUMap(named: "fx_counts", key: UInt32.self, value: UInt64.self)
        try VethLab.with { lab in
            try sh(["/usr/sbin/ip", "-n", lab.name, "addr", "add", "192.168.77.1/24", "dev", "va"])
            try sh(["/usr/sbin/ip", "-n", lab.name, "neigh", "add", "192.168.77.9", "lladdr", "02:00:00:00:00:09",
                    "dev", "va", "nud", "permanent"])
            let va = try lab.ifindex("va")
            try lab.run { try TC.attach(drop, ifindex: va, direction: .egress, handle: 1, priority: 1) }
            let sent = try lab.run { sendUDP(to: (192, 168, 77, 9), port: 9, count: 3) }
            #expect(sent >= 1)
            #expect(try counts.sum(6) >= 1)
            try lab.run { try TC.detach(ifindex: va, direction: .egress, handle: 1, priority: 1) }
            let before = try counts.sum(6)
            _ = try lab.run { sendUDP(to: (192, 168, 77, 9), port: 9, count: 3) }
            #expect(try counts.sum(6) == before)
        }
    }

    @Test func foreignFilterAndQdiscAreLeftAlone() throws {
        let object = try loadFixture("loader_fixture")
        let mark = try object.program(named: "tc_mark")
        let markID = try mark.info().id
        let foreignFile = try Fixtures.file("foreign")
        defer { unlink(foreignFile) }
        try VethLab.with { lab in
            let tc = ["/usr/sbin/tc", "-n", lab.name]
            try sh(tc + ["qdisc", "add", "dev", "va", "clsact"])
            try sh(tc + ["filter", "add", "dev", "va", "egress", "prio", "9", "handle", "9", "bpf", "da", "obj", foreignFile, "sec", "tc"])
            let va = try lab.ifindex("va")
            try lab.run {
                let foreignID = try TC.attachedProgramID(ifindex: va, direction: .egress, handle: 9, priority: 9)
                #expect(foreignID != nil && foreignID != markID)
                try TC.attach(mark, ifindex: va, direction: .egress, handle: 1, priority: 1)  // clsact exists: reused
                // Refuses to remove the foreign filter when asked to remove ours from its slot.
                #expect(throws: BPFError.self) {
                    try TC.detach(ifindex: va, direction: .egress, handle: 9, priority: 9, expectedProgramID: markID)
                }
                try TC.detach(ifindex: va, direction: .egress, handle: 1, priority: 1, expectedProgramID: markID)
                #expect(try TC.attachedProgramID(ifindex: va, direction: .egress, handle: 9, priority: 9) == foreignID)
            }
            #expect(try sh(tc + ["filter", "show", "dev", "va", "egress"]).stdout.contains("foreign"))
            #expect(try sh(tc + ["qdisc", "show", "dev", "va"]).stdout.contains("clsact"))
        }
    }

    @Test func badSlotIsAnError() throws {
        let object = try loadFixture("loader_fixture")
        let mark = try object.program(named: "tc_mark")
        try VethLab.with { lab in
            let va = try lab.ifindex("va")
            try lab.run {
                #expect(throws: BPFError.self) { try TC.attach(mark, ifindex: va, direction: .egress, handle: 0, priority: 1) }
                #expect(throws: BPFError.self) { try TC.attach(mark, ifindex: va, direction: .egress, handle: 1, priority: 70_000) }
                #expect(throws: BPFError.self) { try TC.attach(mark, ifindex: 0, direction: .egress, handle: 1, priority: 1) }
                let noDevice = #expect(throws: BPFError.self) { try TC.attach(mark, ifindex: 9999, direction: .egress, handle: 1, priority: 1) }
                #expect(noDevice?.errno == ENODEV)
                let wrongType = #expect(throws: BPFError.self) {
                    try TC.attach(object.program(named: "xdp_fixture"), ifindex: va, direction: .egress, handle: 1, priority: 1)
                }
                #expect(wrongType?.detail.contains("needs type") == true)
            }
        }
    }
}

/// Sends `count` small UDP datagrams from the calling thread's namespace; returns how many
/// sendto calls were accepted (a TC drop may make the kernel report an error).
func sendUDP(to address: (UInt8, UInt8, UInt8, UInt8), port: UInt16, count: Int) -> Int {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var destination = sockaddr_in()
    destination.sin_family = sa_family_t(AF_INET)
    destination.sin_port = port.bigEndian
    withUnsafeMutableBytes(of: &destination.sin_addr) { $0.copyBytes(from: [address.0, address.1, address.2, address.3]) }
    var accepted = 0
    let payload: [UInt8] = Array("fxld".utf8)
    for _ in 0..<count {
        let ret = withUnsafePointer(to: &destination) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if ret >= 0 { accepted += 1 }
    }
    return accepted
}

@Suite("TCX attach", .needsRoot, .ownThreads)
struct TCXAttachTests {
    @Test("tcx: no qdisc, programs in order, one program once per hook, an atomic swap, a pin that outlives the fd, detach", arguments: [TCDirection.egress, .ingress])
    func attachUpdateDetach(direction: TCDirection) throws {
        let object = try loadFixture("loader_fixture")
        let mark = try object.program(named: "tc_mark"), drop = try object.program(named: "tc_drop")
        let markID = try mark.info().id, dropID = try drop.info().id
        // A hook takes a program once: the swap needs another load of one.
        let again = try loadFixture("loader_fixture")
        let mark2 = try again.program(named: "tc_mark")
        let mark2ID = try mark2.info().id
        let bpffs = "/run/\(getpid())-tcx-\(direction)-bpffs"
        try BPFFS.ensureMounted(at: bpffs)
        defer { BPFFS.unmount(bpffs); rmdir(bpffs) }
        try VethLab.with { lab in
            let va = try lab.ifindex("va")
            try lab.run { () throws -> Void in
                #expect(try TCX.attached(ifindex: va, direction: direction).isEmpty)
                let first = try BPFLink.attachTCX(mark, ifindex: va, direction: direction)
                #expect(throws: BPFError.self) { try BPFLink.attachTCX(mark, ifindex: va, direction: direction) }
                let second = try BPFLink.attachTCX(drop, ifindex: va, direction: direction)
                let firstInfo = try first.info(), secondInfo = try second.info()
                #expect(firstInfo.tcxIfindex == va && firstInfo.tcxDirection == direction && firstInfo.programID == markID)
                #expect(try TCX.attached(ifindex: va, direction: direction)
                        == [TCXAttachment(programID: markID, linkID: firstInfo.id), TCXAttachment(programID: dropID, linkID: secondInfo.id)])
                // Swapped in place: same link, same position, the other program.
                try first.update(to: mark2)
                #expect(try TCX.attached(ifindex: va, direction: direction)
                        == [TCXAttachment(programID: mark2ID, linkID: firstInfo.id), TCXAttachment(programID: dropID, linkID: secondInfo.id)])
                // Pinned, the link outlives its fd; detached, it stays pinned but runs nothing.
                try first.pin(at: bpffs + "/first")
                try second.detach()
                #expect(try second.info().tcxIfindex == 0)
            }
            try lab.run { () throws -> Void in
                let pinned = try BPFLink.openPinned(path: bpffs + "/first")
                #expect(try TCX.attached(ifindex: va, direction: direction).map(\.linkID) == [try pinned.info().id])
                unlink(bpffs + "/first")
            }
            // No qdisc was ever made.
            #expect(!(try sh(["/usr/sbin/tc", "-n", lab.name, "qdisc", "show", "dev", "va"]).stdout.contains("clsact")))
            // The last holder gone, the hook is empty.
            #expect(try lab.run { try TCX.attached(ifindex: va, direction: direction) }.isEmpty)
        }
    }
}
