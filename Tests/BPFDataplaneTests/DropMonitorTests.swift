// The drop samples behind `flanneld-xdp monitor`: written by every kind of program only while a
// monitor listens, within the per-CPU budget, and decoded layer by layer from what they hold.

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("Drop samples for monitor (root)", .serialized, .needsRoot, .ownThreads)
struct DropMonitorTests {
    static func drain(_ ring: borrowing BPFRingBuffer) throws -> [DropEvent] {
        var events: [DropEvent] = []
        while try ring.poll(timeoutMilliseconds: 0, { if let e = DropEvent(record: $0) { events.append(e) } }) > 0 {}
        return events
    }

    /// The lab's drop ring buffer and the switch that makes the programs write to it.
    struct Monitor: ~Copyable {
        let ring: BPFRingBuffer
        let monitorSwitch: DropMonitorSwitch

        init(_ lab: PacketLab) throws {
            let folder = lab.bpffs.path + "/" + FlannelBPF.pinFolderName
            let ring = try BPFRingBuffer.openPinned(path: folder + "/" + FXDP_MAP_DROPS)
            let monitorSwitch = try DropMonitorSwitch(pinDirectory: folder)
            self.ring = ring
            self.monitorSwitch = monitorSwitch
        }
    }

    @Test("nobody listening: drops are counted, nothing is sampled; listening: each drop of the TC check and of XDP is sampled with its addresses, VNI and inner addresses")
    func samplesOnlyWhileListening() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let monitor = try Monitor(lab)
        let inner = PacketBuilder.ipv4(src: IPv4Address(10, 5, 1, 9), dst: IPv4Address(10, 5, 2, 7), proto: IPProto.icmp,
                                       payload: PacketBuilder.icmpEcho(id: 1, sequence: 1, payload: []))
        let stranger = lab.vxlanFromPeer(inner: PacketLab.innerFrame(inner), src: PacketLab.stranger)

        #expect(try lab.run(.decapCheck, stranger).moved[.decapDropNotPeer]?.packets == 1)
        #expect(try Self.drain(monitor.ring).isEmpty, "sampled while nobody listens")

        try monitor.monitorSwitch.listen(forSeconds: 30, eventsPerSecond: 100)
        let before = DropMonitorSwitch.monotonicNanoseconds()
        for program in [FXDPProgram.decapCheck, .decapXDP] {
            #expect(try lab.run(program, stranger).moved[.decapDropNotPeer]?.packets == 1)
        }
        // A pass is not a drop: not sampled.
        #expect(try lab.run(.decapCheck, PacketLab.overlayFrame(inner)).moved[.decapPassNotVXLAN]?.packets == 1)
        let events = try Self.drain(monitor.ring)
        #expect(events.count == 2, "\(events)")
        for event in events {
            #expect(event.reason == .decapDropNotPeer)
            #expect(event.source == PacketLab.stranger && event.destination == PacketLab.us)
            #expect(event.ipProtocol == 17 && event.destinationPort == PacketLab.port)
            #expect(event.vni == PacketLab.vni)
            #expect(event.innerDestinationMAC == PacketLab.ourVTEP)
            #expect(event.innerSource == IPv4Address(10, 5, 1, 9) && event.innerDestination == IPv4Address(10, 5, 2, 7))
            #expect(event.innerProtocol == 1)
            #expect(event.packetLength == UInt32(stranger.count))
            #expect(event.monotonicNanoseconds >= before && event.monotonicNanoseconds <= DropMonitorSwitch.monotonicNanoseconds())
        }

        // A deadline in the past switches sampling off again.
        try monitor.monitorSwitch.listen(forSeconds: -1, eventsPerSecond: 100)
        _ = try lab.run(.decapCheck, stranger)
        #expect(try Self.drain(monitor.ring).isEmpty)
    }

    @Test("the per-CPU budget: past --rate events in a second, drops are counted as suppressed, not sampled")
    func budget() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let monitor = try Monitor(lab)
        let stranger = lab.vxlanFromPeer(src: PacketLab.stranger)
        try monitor.monitorSwitch.listen(forSeconds: 30, eventsPerSecond: 3)
        let suppressedBefore = try monitor.monitorSwitch.suppressed()
        // Test runs of one program stay on one CPU only while the second lasts: run until 10 drops
        // fell in a single second of the program's clock, whatever the scheduler does.
        var sampled = 0, suppressed: UInt64 = 0
        for _ in 0..<5 {
            let second = DropMonitorSwitch.monotonicNanoseconds() / 1_000_000_000
            let suppressedStart = try monitor.monitorSwitch.suppressed()
            for _ in 0..<10 { _ = try lab.run(.decapCheck, stranger) }
            let events = try Self.drain(monitor.ring)
            sampled = events.count
            suppressed = try monitor.monitorSwitch.suppressed() - suppressedStart
            if DropMonitorSwitch.monotonicNanoseconds() / 1_000_000_000 == second && events.allSatisfy({ $0.monotonicNanoseconds / 1_000_000_000 == second }) {
                break
            }
        }
        // Within one second, each CPU writes at most 3; what it did not write is counted.
        #expect(sampled >= 3 && sampled <= 3 * Int(libbpf_num_possible_cpus()), "\(sampled) sampled")
        #expect(UInt64(sampled) + suppressed == 10, "\(sampled) sampled + \(suppressed) suppressed")
        #expect(try monitor.monitorSwitch.suppressed() > suppressedBefore)
    }

    @Test("netfilter drops are sampled from the IPv4 header; encap drops from the pod's frame")
    func otherHooks() throws {
        // The samples a netfilter program and the encap write, decoded as monitor decodes them.
        let vxlan = PacketBuilder.ipv4(src: IPv4Address(192, 168, 60, 50), dst: IPv4Address(10, 5, 2, 1), proto: IPProto.udp,
                                       payload: PacketBuilder.udp(src: IPv4Address(192, 168, 60, 50), dst: IPv4Address(10, 5, 2, 1),
                                                                  srcPort: 40000, dstPort: 8472,
                                                                  payload: PacketBuilder.vxlan(vni: 7)
                                                                      + PacketBuilder.ethernet(dst: PacketLab.ourVTEP, src: PacketLab.peerVTEP, type: EtherType.ipv4)
                                                                      + PacketBuilder.ipv4(src: IPv4Address(10, 5, 3, 7), dst: IPv4Address(10, 5, 2, 7),
                                                                                           proto: IPProto.icmp, payload: [8, 0, 0, 0, 0, 0, 0, 0])))
        let door = DropEvent(monotonicNanoseconds: 1, reason: .doorDropNotPeer, ifindex: 3, packetLength: UInt32(vxlan.count),
                             sample: Array(vxlan.prefix(Int(FXDP_DROP_SAMPLE))), startsAtIPv4: true)
        #expect(door.source == IPv4Address(192, 168, 60, 50) && door.destination == IPv4Address(10, 5, 2, 1))
        #expect(door.sourcePort == 40000 && door.destinationPort == 8472 && door.vni == 7)
        #expect(door.innerSource == IPv4Address(10, 5, 3, 7) && door.innerProtocol == 1)

        let malformedPod = PacketLab.overlayFrame([0x45, 0, 0, 20])
        let encap = DropEvent(monotonicNanoseconds: 1, reason: .encapDropMalformed, ifindex: 3, packetLength: 18,
                              sample: malformedPod, startsAtIPv4: false)
        #expect(encap.source == nil && encap.vni == nil, "a truncated header yields no fields, not garbage")

        // Every truncation of a full sample decodes without trapping, to a prefix of the fields.
        let full = PacketLab.overlayFrame(vxlan)
        for n in 0...full.count {
            let e = DropEvent(monotonicNanoseconds: 1, reason: .decapDropNotPeer, ifindex: 1, packetLength: UInt32(full.count),
                              sample: Array(full.prefix(n)), startsAtIPv4: false)
            if e.innerSource != nil { #expect(e.vni == 7 && e.source != nil) }
        }
        #expect(DropEvent(record: [1, 2, 3]) == nil)
    }

    @Test("IPv6 drops are sampled and decoded: XDP and TC from the Ethernet header, the IPv6 door from the IPv6 header")
    func ipv6Samples() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let folder = lab.bpffs.path + "/" + FlannelBPF.pinFolderName
        let ring = try BPFRingBuffer.openPinned(path: folder + "/" + FXDP_MAP_DROPS)
        let monitorSwitch = try DropMonitorSwitch(pinDirectory: folder)
        try monitorSwitch.listen(forSeconds: 30, eventsPerSecond: 100)
        defer { try? monitorSwitch.listen(forSeconds: -1, eventsPerSecond: 100) }
        let stranger = lab.vxlan6FromPeer(src: PacketLab.stranger6)
        for program in [FXDPProgram.decapCheck, .decapXDP] {
            #expect(try lab.run(program, stranger).moved[.decapDropNotPeer]?.packets == 1)
        }
        let events = try Self.drain(ring)
        #expect(events.count == 2, "\(events)")
        for event in events {
            #expect(event.source == nil && event.source6 == PacketLab.stranger6 && event.destination6 == PacketLab.us6)
            #expect(event.ipProtocol == 17 && event.destinationPort == PacketLab.port && event.vni == PacketLab.vni)
            #expect(event.innerDestinationMAC == PacketLab.ourVTEP6)
            #expect(event.innerSource6 == PacketLab.peerPod6 && event.innerDestination6 == PacketLab.ourPod6 && event.innerProtocol == 58)
        }
        // The door's sample starts at the IPv6 header; a fragment header is read through.
        let l3 = Array(lab.vxlan6FromPeer(src: PacketLab.stranger6, moreFragments: true)[14...])
        let door = DropEvent(monotonicNanoseconds: 1, reason: .door6DropNotPeer, ifindex: 2, packetLength: UInt32(l3.count),
                             sample: Array(l3.prefix(Int(FXDP_DROP_SAMPLE))), startsAtIPv4: true)
        #expect(door.source6 == PacketLab.stranger6 && door.destinationPort == PacketLab.port && door.innerSource6 == PacketLab.peerPod6)
        for n in 0...l3.count {
            let e = DropEvent(monotonicNanoseconds: 1, reason: .door6DropNotPeer, ifindex: 1, packetLength: UInt32(l3.count),
                              sample: Array(l3.prefix(n)), startsAtIPv4: true)
            if e.innerSource6 != nil { #expect(e.vni == 1 && e.source6 != nil) }
        }
    }
}
