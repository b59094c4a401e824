// BenchPacket — nanoseconds per packet of the encap and decap programs, through BPF_PROG_TEST_RUN.
//
// Honesty about `repeat`: the kernel reruns the program on the packet the previous iteration left.
// Encap (adds 50 bytes) and XDP decap (strips 50) change the packet, so from the second iteration
// on they would time a different, cheaper path (encap sees an outer packet to a node IP that no
// peer subnet holds → pass; decap sees a non-VXLAN frame → pass). So those two are timed with
// repeat = 1, many times, and the median of the kernel's per-run duration is reported; that figure
// includes the kernel's timer overhead (two ktime reads), which the "floor" row measures: the TC
// check on a frame that is not VXLAN, its cheapest exit. The TC source check does not modify the
// packet, so it is also timed with a large repeat (amortised, no per-run overhead).
// Every timed run is checked: verdict and the counter that moved must say the intended path ran.
//
// Frames: `size` is the inner (pod) Ethernet frame; encap gets it as flannel.1 hands it over, decap
// gets it wrapped in outer Ethernet/IPv4/UDP/VXLAN (size + 50). A 64 KB GSO frame is not measured:
// the kernel's test run takes at most a page of packet data. The fast path's programs run on the
// 3c lab with the interface the packet arrives on in the skb context (the bridge, the underlay).

import BPFDataplane
import BPFLoader
import NetTypes
import TestSupport

struct PacketCost: Codable, Sendable {
    var program: String
    var frameBytes: Int
    var method: String
    var nanosecondsMedian: Double
    var nanosecondsP99: Double?
    var verdict: String
    var note: String?
}

enum PacketBench {
    static func run(on pl: PathLab, runs: Int, repeatCount: UInt32) throws -> [PacketCost] {
        guard pl.bpf.count == 2 else { throw LabError(command: [], message: "per-packet bench needs the BPF lab") }
        let (a, b) = (pl.nodes[0], pl.nodes[1])
        let bpf = pl.bpf[0]
        guard let config = try bpf.readConfig() else { throw LabError(command: [], message: "node 1 has no BPF config") }
        let peerVTEP = try pl.lab.linkMAC(b.name, "flannel.1")
        let peerUnderlayMAC = try pl.lab.linkMAC(b.name, b.underlayIfname)
        // The encap's FIB lookup needs the peer's underlay neighbour resolved; pin it so no run
        // depends on ARP timing.
        try pl.lab.sh(a.name, ["neigh", "replace", "\(b.nodeIP)", "lladdr", "\(peerUnderlayMAC)", "dev", a.underlayIfname, "nud", "permanent"])

        let encap = try bpf.program(.encap), decap = try bpf.program(.decapXDP), check = try bpf.program(.decapCheck)
        var results: [PacketCost] = []
        for size in [64, 1400] {
            let toPeer = innerFrame(size: size, dstMAC: peerVTEP, srcMAC: config.vtepMAC, src: a.podIP, dst: b.podIP)
            let fromPeer = innerFrame(size: size, dstMAC: config.vtepMAC, srcMAC: peerVTEP, src: b.podIP, dst: a.podIP)
            let vxlan = PacketBuilder.vxlanFrame(outerDst: config.underlayMAC, outerSrc: peerUnderlayMAC, src: b.nodeIP,
                                                 dst: a.nodeIP, dstPort: config.udpPort, vni: config.vni, inner: fromPeer)

            results.append(try perRun(bpf, ns: a.name, encap, name: "encap (TC egress)", frame: toPeer, runs: runs,
                                      expect: 7, expectCounters: [.encapOK, .encapOKNeigh], verdictName: "TC_ACT_REDIRECT"))
            results.append(try perRun(bpf, ns: a.name, decap, name: "decap (XDP)", frame: vxlan, runs: runs,
                                      expect: 2, expectCounters: [.decapOK], verdictName: "XDP_PASS"))
            results.append(try perRun(bpf, ns: a.name, check, name: "decap source check (TC ingress)", frame: vxlan, runs: runs,
                                      expect: 0, expectCounters: [.decapCheckOK], verdictName: "TC_ACT_OK"))
            results.append(try repeated(bpf, ns: a.name, check, name: "decap source check (TC ingress)", frame: vxlan,
                                        repeatCount: repeatCount, expectCounter: .decapCheckOK))
            // The floor: the cheapest exit (not VXLAN), same timer overhead.
            results.append(try perRun(bpf, ns: a.name, check, name: "floor: TC check on a non-VXLAN frame", frame: fromPeer,
                                      runs: runs, expect: 0, expectCounters: [.decapPassNotVXLAN], verdictName: "TC_ACT_OK"))
        }
        return results
    }

    /// The fast path's programs on the 3c lab, on a live UDP flow between the pods (conntrack has
    /// it confirmed and answered): the bridge's encap on node 1 (the pod's frame to its gateway) and
    /// the TC check's fast decap on node 2 (the peer's VXLAN datagram to its pod), both taking the
    /// whole fast path, so what is timed includes the conntrack and FIB lookups and the rewrite.
    static func runFast(on pl: PathLab, runs: Int) throws -> [PacketCost] {
        guard pl.path == .bpfFast, pl.bpf.count == 2 else { throw LabError(command: [], message: "fast-path costs need the 3c lab") }
        let (a, b) = (pl.nodes[0], pl.nodes[1])
        guard let configA = try pl.bpf[0].readConfig(), let configB = try pl.bpf[1].readConfig() else {
            throw LabError(command: [], message: "no BPF config")
        }
        let flow = try UDPProbe.ttlsSeen(from: a.podNamespace, to: b.podNamespace, server: (b.podIP, 6100), ttl: 64, count: 1)
        let podPort = flow.ends.clientAsSeenByServer.1
        let bridgeA = try pl.lab.linkMAC(a.name, "cni0")
        let podA = try pl.lab.linkMAC(a.podNamespace, "eth0")
        let underlayA = try pl.lab.linkMAC(a.name, a.underlayIfname)
        try pl.lab.sh(a.name, ["neigh", "replace", "\(b.nodeIP)", "lladdr", "\(try pl.lab.linkMAC(b.name, b.underlayIfname))",
                                "dev", a.underlayIfname, "nud", "permanent"])
        let portIndexA = try pl.lab.linkIndex(a.name, "vp")
        var results: [PacketCost] = []
        for size in [64, 1400] {
            func udp(_ src: IPv4Address, _ dst: IPv4Address, _ sport: UInt16, _ dport: UInt16) -> [UInt8] {
                let payload = [UInt8](repeating: 0xab, count: max(0, size - 14 - 20 - 8))
                return PacketBuilder.ipv4(src: src, dst: dst, proto: IPProto.udp,
                                          payload: PacketBuilder.udp(src: src, dst: dst, srcPort: sport, dstPort: dport, payload: payload))
            }
            let fromPod = PacketBuilder.ethernet(dst: bridgeA, src: podA, type: EtherType.ipv4) + udp(a.podIP, b.podIP, podPort, 6100)
            results.append(try perRun(pl.bpf[0], ns: a.name, try pl.bpf[0].program(.fastEncap), name: "fast encap (TC ingress, pod's veth)",
                                      frame: fromPod, runs: runs, expect: 7, expectCounters: [.fastEncapOK], verdictName: "TC_ACT_REDIRECT",
                                      skb: TestRunSKB(ifindex: portIndexA)))
            let inner = PacketBuilder.ethernet(dst: configB.vtepMAC, src: configA.vtepMAC, type: EtherType.ipv4) + udp(a.podIP, b.podIP, podPort, 6100)
            let vxlan = PacketBuilder.vxlanFrame(outerDst: configB.underlayMAC, outerSrc: underlayA, src: a.nodeIP, dst: b.nodeIP,
                                                 dstPort: configB.udpPort, vni: configB.vni, inner: inner)
            results.append(try perRun(pl.bpf[1], ns: b.name, try pl.bpf[1].program(.decapCheck), name: "fast decap (TC check → pod)",
                                      frame: vxlan, runs: runs, expect: 7, expectCounters: [.fastDecapOK], verdictName: "TC_ACT_REDIRECT",
                                      skb: TestRunSKB(ifindex: try pl.lab.linkIndex(b.name, b.underlayIfname))))
        }
        return results
    }

    /// An Ethernet + IPv4 + TCP frame of exactly `size` bytes.
    static func innerFrame(size: Int, dstMAC: MACAddress, srcMAC: MACAddress, src: IPv4Address, dst: IPv4Address) -> [UInt8] {
        let payload = [UInt8](repeating: 0xab, count: max(0, size - 14 - 20 - 20))
        let tcp = PacketBuilder.tcp(src: src, dst: dst, srcPort: 40000, dstPort: 5201, payload: payload)
        return PacketBuilder.ethernet(dst: dstMAC, src: srcMAC, type: EtherType.ipv4)
            + PacketBuilder.ipv4(src: src, dst: dst, proto: IPProto.tcp, payload: tcp, fragment: .init(dontFragment: true))
    }

    private static func perRun(_ bpf: FlannelBPF, ns: String, _ program: BPFProgram, name: String, frame: [UInt8], runs: Int,
                               expect: UInt32, expectCounters: [FXDPCounter], verdictName: String,
                               skb: TestRunSKB? = nil) throws -> PacketCost {
        let before = try bpf.counters()
        let (durations, verdicts) = try NetnsThread.run(namespace: ns) { () throws -> ([Double], Set<UInt32>) in
            var d: [Double] = [], v = Set<UInt32>()
            d.reserveCapacity(runs)
            for _ in 0..<runs {
                let r = try program.testRun(packet: frame, skb: skb)
                d.append(Double(r.durationNanoseconds))
                v.insert(r.retval)
            }
            return (d, v)
        }
        let after = try bpf.counters()
        let moved = expectCounters.reduce(UInt64(0)) { $0 + ((after[$1]?.packets ?? 0) &- (before[$1]?.packets ?? 0)) }
        var note: String?
        if verdicts != [expect] || moved != UInt64(runs) {
            note = "UNEXPECTED: verdicts \(verdicts.sorted()), intended counter moved \(moved) of \(runs)"
        }
        return PacketCost(program: name, frameBytes: frame.count, method: "repeat=1 ×\(runs), median of per-run duration",
                          nanosecondsMedian: BenchMath.median(durations), nanosecondsP99: BenchMath.percentile(durations, 99),
                          verdict: verdictName, note: note)
    }

    private static func repeated(_ bpf: FlannelBPF, ns: String, _ program: BPFProgram, name: String, frame: [UInt8],
                                 repeatCount: UInt32, expectCounter: FXDPCounter) throws -> PacketCost {
        let before = try bpf.counters()
        let samples = try NetnsThread.run(namespace: ns) { () throws -> [Double] in
            try (0..<5).map { _ in Double(try program.testRun(packet: frame, repeat: repeatCount).durationNanoseconds) }
        }
        let after = try bpf.counters()
        let moved = (after[expectCounter]?.packets ?? 0) &- (before[expectCounter]?.packets ?? 0)
        let note = moved == UInt64(repeatCount) * 5 ? "idempotent: every iteration takes the same path"
            : "UNEXPECTED: counter moved \(moved) of \(UInt64(repeatCount) * 5)"
        return PacketCost(program: name, frameBytes: frame.count, method: "repeat=\(repeatCount) ×5, median of the average",
                          nanosecondsMedian: BenchMath.median(samples), nanosecondsP99: nil, verdict: "TC_ACT_OK", note: note)
    }
}
