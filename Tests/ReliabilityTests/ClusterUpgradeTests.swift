// Upgrade-style restarts with traffic flowing (FlannelCluster, pods: `ping -i 0.01` and an iperf3
// TCP stream): node A's daemon is SIGKILLed and started again with a *changed* program
// (`--bpf-object`, bpf/ compiled with -DFXDP_PROGRAM_VARIANT: other code, the same maps), then
// SIGTERMed and started again with the embedded object. Meanwhile:
// - a monitor thread inside A's namespace reads our hooks (flannel.1's tcx egress; the underlay's
//   tcx ingress or XDP, per decap mode; the pod veth's tcx ingress, the fast path's) in a tight
//   loop: at no sample may a hook be empty or hold a program that is not ours;
// - our tcx links stay the same links, their programs swapped in place (bpf_link_update), and
//   `tc monitor` records no qdisc or filter event at all (tcx needs no clsact, whose creation
//   would deactivate the device for a moment);
// - the tags must change to the new code and back, the pinned map ids never change and the new
//   programs use those very maps (no refill gap), same subnet, no ping lost, no 1 s stall.
// First, a staged object that cannot load (here: not an object at all) makes the restart fail with
// an error naming the file while the old programs keep carrying traffic.

import BPFDataplane
import BPFLoader
import CBPF
import Foundation
import Glibc
import NetTypes
import Synchronization
import TestSupport
import TestTraits
import Testing

/// What a sample of one hook found.
struct HookSample: Equatable, CustomStringConvertible {
    var encap: UInt32?
    var decap: UInt32?
    var fast: UInt32?
    var description: String {
        "encap \(encap.map(String.init) ?? "-"), decap \(decap.map(String.init) ?? "-"), fast \(fast.map(String.init) ?? "-")"
    }
}

/// Samples our hooks in a node's namespace as fast as it can, from a thread of its own.
final class AttachmentMonitor: @unchecked Sendable {
    // @unchecked: `report` is written by the monitor thread before `done` is signalled, read after.
    struct Report {
        var samples = 0
        var queryErrors: [String] = []
        /// Samples where a hook was empty or held a program not named fxdp_*.
        var gaps: [String] = []
        /// Each distinct (encap, decap) pair in the order seen.
        var sequence: [HookSample] = []
        /// What each program id seen was (looked up the first time it was seen).
        var programs: [UInt32: BPFProgramInfo] = [:]
        var seconds = 0.0
    }

    private let stopFlag = Atomic<Bool>(false)
    private let done = Mutex<Report?>(nil)
    private var thread: Thread?

    init(namespace: String, overlayIfindex: Int32, underlayIfindex: Int32, podPortIfindex: Int32, xdp: Bool) {
        let t = Thread { [self] in
            let report = (try? NetnsThread.run(namespace: namespace) {
                self.loop(overlay: overlayIfindex, underlay: underlayIfindex, port: podPortIfindex, xdp: xdp)
            }) ?? Report(queryErrors: ["could not enter namespace \(namespace)"])
            self.done.withLock { $0 = report }
        }
        thread = t
        t.start()
    }

    private func loop(overlay: Int32, underlay: Int32, port: Int32, xdp: Bool) -> Report {
        var report = Report()
        let start = monotonicSeconds()
        var last: HookSample?
        while !stopFlag.load(ordering: .relaxed) {
            var sample = HookSample()
            do {
                // Only ours are in the lab: the first program on each tcx hook.
                sample.encap = try TCX.attached(ifindex: overlay, direction: .egress).first?.programID
                if xdp {
                    sample.decap = try XDP.attachedProgramID(ifindex: underlay, mode: .native)
                        ?? XDP.attachedProgramID(ifindex: underlay, mode: .generic)
                } else {
                    sample.decap = try TCX.attached(ifindex: underlay, direction: .ingress).first?.programID
                }
                sample.fast = try TCX.attached(ifindex: port, direction: .ingress).first?.programID
            } catch {
                if report.queryErrors.count < 5 { report.queryErrors.append("\(error)") }
                continue
            }
            report.samples += 1
            let t = String(format: "%.3f s", monotonicSeconds() - start)
            for id in [sample.encap, sample.decap, sample.fast].compactMap({ $0 }) where report.programs[id] == nil {
                // A program replaced between the query and this lookup may be gone already: it was
                // attached when sampled, which is all this sample is about.
                if let info = try? BPFProgramInfo.forID(id) { report.programs[id] = info }
            }
            for (hook, id) in [("encap", sample.encap), ("decap", sample.decap), ("fast encap", sample.fast)] {
                guard let id else {
                    if report.gaps.count < 20 { report.gaps.append("\(t): \(hook) hook empty") }
                    continue
                }
                if let info = report.programs[id], !info.name.hasPrefix(FlannelBPF.programPrefix), report.gaps.count < 20 {
                    report.gaps.append("\(t): \(hook) hook holds \(info.name) (id \(id))")
                }
            }
            if sample != last {
                report.sequence.append(sample)
                last = sample
            }
        }
        report.seconds = monotonicSeconds() - start
        return report
    }

    /// Stops sampling and returns what was seen.
    func finish() -> Report {
        stopFlag.store(true, ordering: .relaxed)
        let deadline = monotonicSeconds() + 10
        while monotonicSeconds() < deadline {
            if let report = done.withLock({ $0 }) { return report }
            usleep(5_000)
        }
        return Report(queryErrors: ["the monitor thread did not stop within 10 s"])
    }
}

/// Which decap mode a cluster test runs in, and the flags that choose it.
enum UpgradeDecap: String, CustomStringConvertible, CaseIterable, Sendable {
    /// The default on veth: TC source check in front of the kernel's vxlan decap.
    case kernel
    /// `--dataplane=xdp`: native XDP decap on the underlay veth.
    case xdp
    var description: String { rawValue }
    var flags: [String] { self == .xdp ? ["--dataplane=xdp"] : [] }
    var tag: String { self == .xdp ? "rux" : "ruk" }
    var port: Int { self == .xdp ? 5312 : 5311 }
}

/// The pinned maps' ids of a node (name → id), read through the pins from this process.
func pinnedMapIDs(_ cluster: FlannelCluster, _ node: LabNode) -> [String: UInt32] {
    var ids: [String: UInt32] = [:]
    for name in FlannelBPF.pinnedMapNames {
        let fd = bpf_obj_get(cluster.pinFolder(node) + "/" + name)
        guard fd >= 0 else { continue }
        defer { close(fd) }
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        if bpf_obj_get_info_by_fd(fd, &info, &length) == 0 { ids[name] = info.id }
    }
    return ids
}

func hexTag(_ tag: [UInt8]) -> String { tag.map { String(format: "%02x", $0) }.joined() }

@Suite("ClusterUpgradeTests: a changed program replaces the running one atomically, traffic flowing", .serialized,
       .needsRoot, .ownThreads)
struct ClusterUpgradeTests {
    @Test("upgrade to a changed program (SIGKILL) and back (SIGTERM): never nothing attached, same maps, no ping lost",
          arguments: UpgradeDecap.allCases)
    func upgradeAndBack(_ decap: UpgradeDecap) throws {
        let cluster = try FlannelCluster(tag: decap.tag, api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let changed = cluster.workDir + "/flanneld_xdp.variant.o", broken = cluster.workDir + "/broken.o"
        try BPFVariantObject.compile(variant: 7, to: changed)
        try "not an ELF object\n".write(toFile: broken, atomically: true, encoding: .utf8)
        for node in cluster.nodes { try cluster.startDaemon(node, extra: decap.flags) }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        #expect(try waitUntil(5) { try pinnedPeers(cluster, a) == [b.podSubnet] && pinnedPeers(cluster, b) == [a.podSubnet] } != nil)
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP))
        let overlay = try cluster.lab.linkIndex(a.name, "flannel.1"), underlay = try cluster.lab.linkIndex(a.name, a.underlayIfname)
        let mapsBefore = pinnedMapIDs(cluster, a)
        let subnetBefore = subnetLine(cluster, a)
        #expect(mapsBefore.count == FlannelBPF.pinnedMapNames.count, "\(mapsBefore)")
        // The fast path's pass puts its encap on the pod's veth within a second.
        let port = try cluster.lab.linkIndex(a.name, "vp")
        func fastProgram() throws -> UInt32? {
            try NetnsThread.run(namespace: a.name) { try TCX.attached(ifindex: port, direction: .ingress).first?.programID }
        }
        #expect(try waitUntil(5) { try fastProgram() != nil } != nil)
        // Our tcx links, by pin: the same links must carry every program from here on.
        func tcxLinks() -> [String: UInt32] {
            var ids: [String: UInt32] = [:]
            for pin in [FXDPSlots.overlayEgressPin, FXDPSlots.underlayIngressPin, FXDPSlots.podPin(port)] {
                if let id = try? BPFLink.openPinned(path: cluster.pinFolder(a) + "/" + pin).info().id { ids[pin] = id }
            }
            return ids
        }
        let linksBefore = tcxLinks()
        #expect(linksBefore.count == 3, "\(linksBefore)")

        let ping = try FastPing(cluster.lab, from: a.podNamespace, to: b.podIP)
        let stream = try TCPStream(cluster.lab, from: a.podNamespace, to: b.podNamespace, ip: b.podIP, port: decap.port)
        defer { stream.stop() }
        usleep(1_500_000)

        /// One restart of A's daemon watched by the monitor and `tc monitor`; returns what was
        /// attached before and after (the sample sequence's ends) and the monitor's report.
        func watchedRestart(_ what: String, newFastProgram: Bool = false, _ restart: () throws -> Void) throws -> (AttachmentMonitor.Report, [String]) {
            let events = try cluster.lab.spawn(a.name, ["/usr/sbin/tc", "monitor"])
            // Listening only once it reports an event of its own making (a qdisc on lo, then gone).
            let listening = try waitUntil(10) {
                _ = try cluster.lab.run(a.name, ["/usr/sbin/tc", "qdisc", "replace", "dev", "lo", "clsact"])
                usleep(50_000)
                return events.output().contains("dev lo")
            }
            _ = try cluster.lab.run(a.name, ["/usr/sbin/tc", "qdisc", "del", "dev", "lo", "clsact"])
            try #require(listening != nil, "tc monitor reported nothing: \(events.output())")
            let monitor = AttachmentMonitor(namespace: a.name, overlayIfindex: overlay, underlayIfindex: underlay, podPortIfindex: port,
                                            xdp: decap == .xdp)
            usleep(100_000)
            let fastBefore = try fastProgram()
            let t0 = monotonicSeconds()
            try restart()
            let took = monotonicSeconds() - t0
            // The pods' veths are the fast path's pass's (every second): wait for its swap too.
            if newFastProgram {
                #expect(try waitUntil(10) { try fastProgram() != fastBefore } != nil, "\(what): the pod veth kept the old program")
            }
            usleep(300_000)
            let report = monitor.finish()
            usleep(100_000)
            events.kill(SIGTERM)
            _ = events.waitExit(timeout: 3)
            let filterEvents = events.output().split(separator: "\n").map(String.init)
                .filter { ($0.contains("filter") || $0.contains("qdisc")) && !$0.contains("dev lo") }
            print("ClusterUpgradeTests.\(decap) \(what): restart took \(String(format: "%.2f", took)) s; monitor \(report.samples) samples in "
                  + "\(String(format: "%.2f", report.seconds)) s, sequence \(report.sequence), gaps \(report.gaps.count), "
                  + "tc events \(filterEvents.map { $0.split(separator: " ").prefix(5).joined(separator: " ") })")
            #expect(report.queryErrors.isEmpty, "\(what): \(report.queryErrors)")
            #expect(report.samples > 100, "\(what): only \(report.samples) samples")
            #expect(report.gaps.isEmpty, "\(what): nothing of ours attached at: \(report.gaps)")
            #expect(filterEvents.isEmpty, "\(what): tc saw qdisc or filter changes (tcx needs neither): \(filterEvents)")
            return (report, filterEvents)
        }
        func tags(_ report: AttachmentMonitor.Report, _ sample: HookSample?) -> [String] {
            [sample?.encap, sample?.decap, sample?.fast].map { id in id.flatMap { report.programs[$0] }.map { "\($0.name) \(hexTag($0.tag))" } ?? "?" }
        }

        // 0. A staged object that cannot load: the restart stops with an error naming it, without
        //    falling back (not even under the default --dataplane=auto); the old programs stay.
        let (failed, failedEvents) = try watchedRestart("broken object") {
            cluster.killDaemon(a)
            let p = try cluster.lab.spawn(a.name, cluster.daemonArguments(a, extra: decap.flags + ["--bpf-object", broken]))
            let status = p.waitExit(timeout: 20)
            let output = p.output()
            p.kill(SIGKILL)
            #expect(status != nil && status != 0, "the daemon started with a broken object: \(output.suffix(1500))")
            #expect(output.contains("--bpf-object \(broken)") && output.contains("no fallback"),
                    "the error does not name the file or says nothing of the fallback:\n\(output.suffix(1500))")
            #expect(!output.contains("userspace path;") && !output.contains("our lease"), "it went on starting:\n\(output.suffix(1500))")
            try cluster.startDaemon(a, extra: decap.flags)
        }
        #expect(failed.sequence.count == 1, "the attached programs changed: \(failed.sequence)")
        #expect(failedEvents.isEmpty, "\(failedEvents)")
        let original = try #require(failed.sequence.first)
        let originalTags = tags(failed, original)

        // 1. Upgrade: SIGKILL, then the changed object.
        let (up, _) = try watchedRestart("upgrade (SIGKILL, --bpf-object)", newFastProgram: true) {
            cluster.killDaemon(a)
            try cluster.startDaemon(a, extra: decap.flags + ["--bpf-object", changed])
        }
        let upgraded = try #require(up.sequence.last)
        let upgradedTags = tags(up, upgraded)
        print("ClusterUpgradeTests.\(decap): tags \(originalTags) → \(upgradedTags)")
        #expect(up.sequence.first == original, "\(up.sequence)")
        #expect(upgraded.encap != original.encap && upgraded.decap != original.decap, "ids did not change: \(up.sequence)")
        #expect(zip(originalTags, upgradedTags).allSatisfy { $0 != $1 && $0.split(separator: " ").first == $1.split(separator: " ").first },
                "tags did not change to the new code: \(originalTags) → \(upgradedTags)")
        // The three tcx programs (the encap, the underlay's ingress: the check, or the steer in XDP
        // mode, and the fast path's encap on the pod's veth) swapped inside the same links.
        #expect(tcxLinks() == linksBefore, "the links changed: \(tcxLinks()) (were \(linksBefore))")
        #expect(cluster.daemonLog(a).contains("BPF programs loaded from --bpf-object \(changed)"))
        let status = try cluster.runTool(a, ["status", "--subnet-file", cluster.subnetFile(a), "--bpffs", cluster.bpffs(a)])
        #expect(status.stdout.contains("programs from --bpf-object \(changed)"), "status does not say so:\n\(status.stdout)\n\(status.stderr)")
        // The new programs run on the very maps that were pinned (no refill gap): between them (the
        // fast path's encap on the pod's veth too) they use all seven, and no other map of ours
        // (libbpf's per-load .rodata/.bss are not state).
        let fastEncapMaps = try fastProgram().map { try BPFProgramInfo.forID($0).mapIDs } ?? []
        let used = Set([upgraded.encap, upgraded.decap].compactMap { $0 }.flatMap { up.programs[$0]?.mapIDs ?? [] } + fastEncapMaps)
        let pinned = Set(mapsBefore.values)
        let otherOfOurs = used.subtracting(pinned).filter { (try? BPFMapInfo.forID($0).name.hasPrefix("fxdp_")) != false }
        #expect(used.isSuperset(of: pinned) && otherOfOurs.isEmpty, "the new programs use maps \(used.sorted()), pinned \(mapsBefore)")
        #expect(pinnedMapIDs(cluster, a) == mapsBefore)
        #expect(subnetLine(cluster, a) == subnetBefore)
        #expect(stream.client.isRunning, "the TCP stream ended at the upgrade: \(stream.client.output().suffix(500))")

        // 2. Back to the embedded object: SIGTERM, then no --bpf-object.
        let (down, _) = try watchedRestart("back (SIGTERM, embedded)", newFastProgram: true) {
            cluster.stopDaemon(a)
            try cluster.startDaemon(a, extra: decap.flags)
        }
        let back = try #require(down.sequence.last)
        #expect(down.sequence.first == upgraded, "\(down.sequence)")
        #expect(back.encap != upgraded.encap && back.decap != upgraded.decap, "\(down.sequence)")
        #expect(tags(down, back) == originalTags, "not the embedded code again: \(tags(down, back)), first \(originalTags)")
        #expect(tcxLinks() == linksBefore, "the links changed: \(tcxLinks()) (were \(linksBefore))")
        #expect(pinnedMapIDs(cluster, a) == mapsBefore)
        #expect(subnetLine(cluster, a) == subnetBefore)

        usleep(1_500_000)
        let (sent, received) = ping.finish()
        let intervals = stream.intervals
        print("ClusterUpgradeTests.\(decap): ping \(received)/\(sent); stream intervals \(intervals.count), min \(intervals.min() ?? -1) KB")
        #expect(sent > 100 && sent == received, "ping lost \(sent - received) of \(sent)")
        #expect(stream.client.isRunning, "the TCP stream died: \(stream.client.output().suffix(800))")
        #expect(intervals.count >= 3 && intervals.allSatisfy { $0 > 0 }, "a second without transfer: \(intervals)")
        #expect(try pinnedPeers(cluster, a) == [b.podSubnet])
        let counters = try cluster.pinnedCounter(a, FXDP_C_ENCAP_OK)
        #expect(counters > 0, "BPF carried nothing")
    }
}
