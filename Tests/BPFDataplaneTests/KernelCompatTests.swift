// Wire compatibility with stock flannel: the frame our encap builds is compared byte for byte with
// the frame the Linux vxlan device builds when configured exactly as flanneld configures
// flannel.<VNI> (docs/FLANNEL-COMPAT.md), captured with an AF_PACKET socket on the receiving side of a
// veth. Fields that legitimately differ (outer IP id and checksum, UDP source port and checksum) are
// checked for validity instead. Then encap → decap (and kernel encap → our decap) must give back
// the original inner packet.

import BPFDataplane
import BPFLoader
import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

/// Two namespaces A and B joined by a veth, the bench of the kernel-compatibility suites.
/// A's flannel device sends to B's VTEP with its own as the source.
protocol NamespacePair: AnyObject {
    var a: TestNamespace { get }
    var b: TestNamespace { get }
    var aVTEP: MACAddress { get }
    var bVTEP: MACAddress { get }
}

extension NamespacePair {
    /// Two fresh namespaces and the veth between them (A's end `aIf`, B's `bIf`); a failure on the
    /// way removes what was made.
    static func makeVethPair() throws -> (a: TestNamespace, b: TestNamespace, aIf: String, bIf: String) {
        let tag = Names.unique()
        let a = try TestNamespace(tag + "a")
        let b: TestNamespace
        do { b = try TestNamespace(tag + "b") } catch { a.close(); throw error }
        let (aIf, bIf) = (tag + "x", tag + "y")
        do {
            try a.sh(["ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.name])
        } catch {
            a.close()
            b.close()
            throw error
        }
        return (a, b, aIf, bIf)
    }

    /// Runs the pair's set-up; when it fails, both namespaces go before the error is rethrown.
    func settingUp(_ setUp: () throws -> Void) rethrows {
        do { try setUp() } catch { close(); throw error }
    }

    func close() {
        a.close()
        b.close()
    }

    /// Our encap, run in A on the inner packet of the kernel device's `kernelFrame` (from
    /// `innerOffset`) as the flannel device hands it over, must redirect the kernel's frame but for
    /// the bytes at `mayDiffer`. Our frame, or nil when even its length differs.
    func encapsulateLikeTheKernel(_ encap: BPFProgram, kernelFrame: [UInt8], innerOffset: Int, innerType: UInt16,
                                  mayDiffer: Set<Int>) throws -> [UInt8]? {
        let overlayFrame = PacketBuilder.ethernet(dst: bVTEP, src: aVTEP, type: innerType) + Array(kernelFrame[innerOffset...])
        let result = try a.run { try encap.testRun(packet: overlayFrame) }
        #expect(Verdict.tc(result.retval) == "TC_ACT_REDIRECT")
        let ours = result.packet
        #expect(ours.count == kernelFrame.count)
        guard ours.count == kernelFrame.count else { return nil }
        let differing = (0..<ours.count).filter { ours[$0] != kernelFrame[$0] && !mayDiffer.contains($0) }
        #expect(differing.isEmpty, "bytes differ from the kernel's frame at \(differing)\nkernel: \(kernelFrame.hex)\nours:   \(ours.hex)")
        return ours
    }

    /// Our encap's frame and the kernel's, each into B's decap (XDP) and check (TC) programs: the
    /// decap passes `decapsulated(frame)` (the steer's mark in the metadata in front), the check
    /// passes the frame untouched.
    func decapsulateBoth(ours: [UInt8], kernel: [UInt8], decap: BPFProgram, check: BPFProgram,
                         decapsulated: ([UInt8]) -> [UInt8]) throws {
        for (label, frame) in [("bpf encap", ours), ("kernel encap", kernel)] {
            let d = try b.run { try decap.testRun(packet: frame) }
            #expect(Verdict.xdp(d.retval) == "XDP_PASS", "\(label)")
            #expect(d.packet == decapsulated(frame), "\(label) → decap")
            let c = try b.run { try check.testRun(packet: frame) }
            #expect(Verdict.tc(c.retval) == "TC_ACT_OK" && c.packet == frame, "\(label) → check")
        }
    }
}

/// A has flannel.1 as flanneld would make it, pointing at B.
final class KernelPair: NamespacePair, @unchecked Sendable {
    let a: TestNamespace, b: TestNamespace
    let aIf: String, bIf: String
    let aIP = IPv4Address(192, 168, 61, 1), bIP = IPv4Address(192, 168, 61, 2)
    let aPods = IPv4Subnet(cidr: "10.5.1.0/24")!, bPods = IPv4Subnet(cidr: "10.5.2.0/24")!
    let bVTEP = MACAddress("02:bb:00:00:00:02")!
    var aVTEP = MACAddress.zero

    init() throws {
        (a, b, aIf, bIf) = try Self.makeVethPair()
        try settingUp {
            try a.sh(["ip", "addr", "add", "\(aIP)/24", "dev", aIf])
            try a.sh(["ip", "link", "set", aIf, "up"])
            try a.sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"]) // as on every flannel node
            try b.sh(["ip", "addr", "add", "\(bIP)/24", "dev", bIf])
            try b.sh(["ip", "link", "set", bIf, "up"])
            // flannel.1 as flanneld creates it (pkg/backend/vxlan/device.go), and one peer lease's
            // neighbour, fdb entry and route, in flanneld's order.
            try a.sh(["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", "\(aIP)", "dev", aIf,
                      "dstport", "8472", "nolearning"])
            try a.sh(["ip", "link", "set", "flannel.1", "mtu", "1450", "up"])
            try a.sh(["ip", "addr", "add", "\(aPods.address)/32", "dev", "flannel.1"])
            try a.sh(["ip", "neigh", "replace", "\(bPods.address)", "lladdr", "\(bVTEP)", "dev", "flannel.1", "nud", "permanent"])
            try a.sh(["bridge", "fdb", "replace", "\(bVTEP)", "dev", "flannel.1", "dst", "\(bIP)", "self", "permanent"])
            try a.sh(["ip", "route", "replace", "\(bPods)", "via", "\(bPods.address)", "dev", "flannel.1", "onlink"])
            aVTEP = try a.mac("flannel.1")
        }
    }

    /// Opens an AF_PACKET socket in B (all interfaces there), 2 s receive timeout.
    func openCapture() throws -> Int32 { try openFrameCapture(in: b) }

    /// The next VXLAN frame (UDP to 8472) the socket sees, or nil after the timeout.
    func nextVXLAN(_ fd: Int32) -> [UInt8]? {
        nextFrame(fd) { ParsedFrame($0)?.udp?.dstPort == 8472 }
    }

    func nodeConfig(forA: Bool) throws -> NodeConfig {
        let ns = forA ? a : b
        let ifname = forA ? aIf : bIf
        return NodeConfig(nodeIP: forA ? aIP : bIP, vtepMAC: forA ? aVTEP : bVTEP, underlayIfindex: try ns.ifindex(ifname),
                          underlayMAC: try ns.mac(ifname), overlayIfindex: forA ? try ns.ifindex("flannel.1") : 1, overlayMTU: 1450)
    }
}

/// An AF_PACKET socket in `ns` (all its interfaces), 2 s receive timeout.
func openFrameCapture(in ns: TestNamespace) throws -> Int32 {
    try ns.run {
        // SOCK_RAW (3) by number: this file sometimes failed to see Glibc's enum in incremental builds.
        let fd = socket(AF_PACKET, 3 /* SOCK_RAW */, Int32(UInt16(0x0003 /* ETH_P_ALL */).bigEndian))
        guard fd >= 0 else { throw CommandFailed(command: ["socket(AF_PACKET)"], status: errno, output: "") }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }
}

/// The next frame socket `fd` sees that `wanted` accepts, or nil after its timeout.
func nextFrame(_ fd: Int32, where wanted: ([UInt8]) -> Bool) -> [UInt8]? {
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { return nil }
        let frame = Array(buffer[0..<n])
        if wanted(frame) { return frame }
    }
}

@Suite(.needsRoot, .ownThreads)
struct KernelCompatTests {
    @Test func encapMatchesTheKernelVXLANDeviceAndRoundTrips() throws {
        let pair = try KernelPair()
        defer { pair.close() }
        let fd = try pair.openCapture()
        defer { close(fd) }

        // Two packets through the kernel device: plain, and with ECN CE (outer gets ECT(0)).
        var captured: [[UInt8]] = []
        for tos in ["0x0", "0x3"] {
            try pair.a.sh(["ping", "-c", "1", "-W", "1", "-Q", tos, "-s", "100", "10.5.2.5"], allowFailure: true)
            guard let frame = pair.nextVXLAN(fd) else {
                Issue.record("the kernel vxlan device sent no VXLAN frame for TOS \(tos)")
                return
            }
            captured.append(frame)
        }

        let tagA = Names.unique(), tagB = Names.unique()
        let fsA = try PrivateBPFFS(tagA)
        defer { fsA.close() }
        let fsB = try PrivateBPFFS(tagB)
        defer { fsB.close() }
        let nodeA = try FlannelBPF(bpffs: fsA.path)
        try nodeA.writeConfig(try pair.nodeConfig(forA: true))
        try nodeA.peerTable().upsert(Peer(subnet: pair.bPods, publicIP: pair.bIP, vtepMAC: pair.bVTEP))
        let nodeB = try FlannelBPF(bpffs: fsB.path)
        let configB = try pair.nodeConfig(forA: false)
        try nodeB.writeConfig(configB)
        try nodeB.peerTable().upsert(Peer(subnet: pair.aPods, publicIP: pair.aIP, vtepMAC: pair.aVTEP))

        let encap = try nodeA.program(.encap)
        let decap = try nodeB.program(.decapXDP)
        let check = try nodeB.program(.decapCheck)
        for kernelFrame in captured {
            let innerIP = Array(kernelFrame[64...])
            // IP id, IP checksum, UDP sport, UDP checksum may differ.
            guard let ours = try pair.encapsulateLikeTheKernel(encap, kernelFrame: kernelFrame, innerOffset: 64, innerType: EtherType.ipv4,
                                                              mayDiffer: [18, 19, 24, 25, 34, 35, 40, 41]) else { continue }
            let parsed = ParsedFrame(ours)
            #expect(parsed?.ipv4?.headerChecksumValid == true)
            #expect(parsed?.udp?.checksumValidOrZero == true)
            #expect((32768..<61000).contains(parsed?.udp?.srcPort ?? 0))

            // Our encap → our decap on B, and the kernel's frame → our decap: the original packet back.
            try pair.decapsulateBoth(ours: ours, kernel: kernelFrame, decap: decap, check: check) { _ in
                ReferenceDatapath.xdpMetaBytes(sourceInSubnet: true) + configB.underlayMAC.bytes + pair.aVTEP.bytes + [0x08, 0x00] + innerIP
            }
        }
        let countsA = try nodeA.counters(), countsB = try nodeB.counters()
        #expect(countsA[.encapOK]?.packets == 2)
        #expect(countsB[.decapOK]?.packets == 4)
        #expect(countsB[.decapCheckOK]?.packets == 4)
    }
}
