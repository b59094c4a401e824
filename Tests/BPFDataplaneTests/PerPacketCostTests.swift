// What one packet costs each program, from BPF_PROG_TEST_RUN's own timer (the figures behind the
// decap default: the programs are cheap; on veth the loss comes from XDP itself, see docs/PITFALLS.md "XDP on veth").
// Repeat > 1 reruns on the packet the previous run left, so only idempotent paths use it (the TC
// check, XDP pass); the encap and the XDP strip are timed one run at a time (median). Bounds are
// loose: they catch a pathology (a loop, a helper storm), not a regression of a few percent.

import BPFDataplane
import TestSupport
import TestTraits
import Testing

@Suite(.needsRoot, .ownThreads)
struct PerPacketCostTests {
    @Test func programsCostMicrosecondsAtMost() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let vxlan = lab.vxlanFromPeer()
        let check = try lab.bpf.program(.decapCheck), xdp = try lab.bpf.program(.decapXDP), encap = try lab.bpf.program(.encap)
        let checkNs = try lab.ns.run { try check.testRun(packet: vxlan, repeat: 100_000).durationNanoseconds }
        let passNs = try lab.ns.run {
            try xdp.testRun(packet: PacketLab.overlayFrame(PacketLab.podPacket()), repeat: 100_000).durationNanoseconds
        }
        func median(_ body: () throws -> UInt32) throws -> UInt32 {
            var samples: [UInt32] = []
            for _ in 0..<301 { samples.append(try body()) }
            return samples.sorted()[samples.count / 2]
        }
        let stripNs = try lab.ns.run { try median { try xdp.testRun(packet: vxlan).durationNanoseconds } }
        let encapIn = PacketLab.overlayFrame(PacketLab.podPacket())
        let encapNs = try lab.ns.run { try median { try encap.testRun(packet: encapIn).durationNanoseconds } }
        print("per-packet cost (ns): decap_check \(checkNs), xdp pass \(passNs), xdp strip \(stripNs) (single run), encap \(encapNs) (single run)")
        #expect(checkNs < 5_000 && passNs < 5_000)
        #expect(stripNs < 50_000 && encapNs < 50_000)
    }
}
