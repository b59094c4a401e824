// Wire compatibility of the IPv6 path with stock flannel's flannel-v6.<VNI>: the frame fxdp_encap6
// builds is compared byte for byte with the frame the Linux vxlan device builds when configured as
// flanneld configures flannel-v6.<VNI> (local = the node's IPv6 address, dstport 8472, nolearning, no
// udp6zerocsumtx/rx, TTL auto), captured with an AF_PACKET socket on the receiving side of a veth.
// Only the UDP source port (a hash) and so the UDP checksum may differ: ours must be the datagram's
// checksum, and the kernel's is the one a device completes (what our rule gives for its frame). Then both directions of acceptance: our frame sent into a kernel flannel-v6 device is
// delivered by it (and the same frame with checksum 0 is not: the device needs the checksum), and
// the kernel's frame passes our decap.

import BPFDataplane
import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

/// Two namespaces A and B on a veth with an IPv6 underlay; each has flannel-v6.1 as flanneld would
/// make it, pointing at the other.
final class KernelPair6: NamespacePair, @unchecked Sendable {
    let a: TestNamespace, b: TestNamespace
    let aIf: String, bIf: String
    let aIP = IPv6Address("fd00:61::1")!, bIP = IPv6Address("fd00:61::2")!
    let aPods = IPv6Subnet(address: IPv6Address("fd10:5:1::")!, prefixLength: 64)!
    let bPods = IPv6Subnet(address: IPv6Address("fd10:5:2::")!, prefixLength: 64)!
    var aVTEP = MACAddress.zero, bVTEP = MACAddress.zero

    init() throws {
        (a, b, aIf, bIf) = try Self.makeVethPair()
        try settingUp {
            for (ns, ifname, ip) in [(a, aIf, aIP), (b, bIf, bIP)] {
                try ns.sh(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]) // as on every flannel node
                try ns.sh(["ip", "-6", "addr", "add", "\(ip)/64", "dev", ifname, "nodad"])
                try ns.sh(["ip", "link", "set", ifname, "up"])
            }
            // flannel-v6.1 as flanneld creates it (backend/vxlan: newVXLANDevice with the IPv6
            // address as local, ConfigureIPv6: the lease's first address /128, up), and the other
            // node's neighbour, fdb entry and route in flanneld's order.
            for (ns, ifname, ip, ours, theirs, theirIP) in [(a, aIf, aIP, aPods, bPods, bIP), (b, bIf, bIP, bPods, aPods, aIP)] {
                try ns.sh(["ip", "link", "add", "flannel-v6.1", "type", "vxlan", "id", "1", "local", "\(ip)", "dev", ifname,
                           "dstport", "8472", "nolearning"])
                try ns.sh(["ip", "-6", "addr", "add", "\(ours.address)/128", "dev", "flannel-v6.1", "nodad"])
                try ns.sh(["ip", "link", "set", "flannel-v6.1", "up"])
                _ = theirs
                _ = theirIP
            }
            aVTEP = try a.mac("flannel-v6.1")
            bVTEP = try b.mac("flannel-v6.1")
            for (ns, theirs, theirIP, theirVTEP) in [(a, bPods, bIP, bVTEP), (b, aPods, aIP, aVTEP)] {
                try ns.sh(["ip", "-6", "neigh", "replace", "\(theirs.address)", "lladdr", "\(theirVTEP)", "dev", "flannel-v6.1", "nud", "permanent"])
                try ns.sh(["bridge", "fdb", "replace", "\(theirVTEP)", "dev", "flannel-v6.1", "dst", "\(theirIP)", "self", "permanent"])
                try ns.sh(["ip", "-6", "route", "replace", "\(theirs)", "via", "\(theirs.address)", "dev", "flannel-v6.1", "onlink"])
            }
            // A pod address of B, on loopback: B answers pings to it.
            try b.sh(["ip", "-6", "addr", "add", "fd10:5:2::5/128", "dev", "lo"])
        }
    }

    /// The first IPv6 VXLAN frame (UDP to 8472) an AF_PACKET socket in B sees, or nil after 2 s.
    func captureVXLAN(while send: () throws -> Void) throws -> [UInt8]? {
        let fd = try openFrameCapture(in: b)
        defer { Glibc.close(fd) }
        try send()
        return nextFrame(fd) { frame in
            frame.count >= 62 && frame.be16(at: 12) == EtherType.ipv6Ethernet && frame[20] == IPProto.udp && frame.be16(at: 56) == 8472
        }
    }

    /// Sends `frame` as is out of A's underlay.
    func sendFromA(_ frame: [UInt8]) throws {
        try FrameSender.send(namespace: a.name, ifname: aIf, frames: [frame])
    }

    /// flannel-v6.1's received packets in B.
    func kernelDeviceReceived() throws -> Int {
        let text = try b.sh(["cat", "/sys/class/net/flannel-v6.1/statistics/rx_packets"], allowFailure: true)
        if let n = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) { return n }
        // sysfs shows the namespace it was mounted in; ip -s reads the thread's.
        let out = try b.sh(["ip", "-s", "-o", "link", "show", "dev", "flannel-v6.1"])
        let words = out.split(whereSeparator: { $0 == " " || $0 == "\\" })
        guard let rx = words.firstIndex(of: "RX:"), let value = words.dropFirst(rx + 1).compactMap({ Int($0) }).dropFirst().first else {
            throw CommandFailed(command: ["ip", "-s", "link"], status: 0, output: out)
        }
        return value
    }

    func nodeConfigs(forA: Bool) throws -> (NodeConfig, NodeConfig6) {
        let ns = forA ? a : b
        let ifname = forA ? aIf : bIf
        let shared = NodeConfig(nodeIP: IPv4Address(0), vtepMAC: MACAddress("02:00:00:00:00:0a")!, underlayIfindex: try ns.ifindex(ifname),
                                underlayMAC: try ns.mac(ifname), overlayIfindex: 1, overlayMTU: 1450)
        let v6 = NodeConfig6(nodeIP: forA ? aIP : bIP, vtepMAC: forA ? aVTEP : bVTEP, overlayIfindex: try ns.ifindex("flannel-v6.1"),
                             overlayMTU: 1430)
        return (shared, v6)
    }
}

@Suite(.needsRoot, .ownThreads)
struct KernelCompat6Tests {
    @Test func encap6MatchesTheKernelFlannelV6DeviceAndBothAcceptEachOther() throws {
        let pair = try KernelPair6()
        defer { pair.close() }
        // flanneld leaves the device MTU to the kernel: the underlay's less IPv6 VXLAN's 70 bytes.
        #expect(try pair.a.sh(["cat", "/sys/class/net/flannel-v6.1/mtu"], allowFailure: true).contains("1430")
            || (try pair.a.sh(["ip", "-o", "link", "show", "dev", "flannel-v6.1"])).contains("mtu 1430"))

        // Two packets through the kernel device: plain, and with ECN CE (outer gets ECT(0)).
        var captured: [[UInt8]] = []
        for tclass in ["0x0", "0x3"] {
            let frame = try pair.captureVXLAN {
                try pair.a.sh(["ping", "-6", "-c", "1", "-W", "1", "-Q", tclass, "-s", "100", "fd10:5:2::5"], allowFailure: true)
            }
            guard let frame else {
                Issue.record("the kernel flannel-v6 device sent no VXLAN frame for traffic class \(tclass)")
                return
            }
            captured.append(frame)
        }

        let fsA = try PrivateBPFFS(Names.unique()), fsB = try PrivateBPFFS(Names.unique())
        defer { fsA.close(); fsB.close() }
        let nodeA = try FlannelBPF(bpffs: fsA.path), nodeB = try FlannelBPF(bpffs: fsB.path)
        let (sharedA, configA) = try pair.nodeConfigs(forA: true), (sharedB, configB) = try pair.nodeConfigs(forA: false)
        try nodeA.writeConfig(sharedA)
        try nodeA.writeConfig6(configA)
        try nodeA.ipv6PeerTable().upsert(BPFPeer6(subnet: pair.bPods, publicIP: pair.bIP, vtepMAC: pair.bVTEP))
        try nodeB.writeConfig(sharedB)
        try nodeB.writeConfig6(configB)
        try nodeB.ipv6PeerTable().upsert(BPFPeer6(subnet: pair.aPods, publicIP: pair.aIP, vtepMAC: pair.aVTEP))

        let encap = try nodeA.program(.encap6)
        let decap = try nodeB.program(.decapXDP), check = try nodeB.program(.decapCheck)
        for kernelFrame in captured {
            // The UDP source port (a hash), and so the UDP checksum, may differ.
            guard let ours = try pair.encapsulateLikeTheKernel(encap, kernelFrame: kernelFrame, innerOffset: 84,
                                                              innerType: EtherType.ipv6Ethernet, mayDiffer: [54, 55, 60, 61]) else { continue }
            #expect(Checksum.udp6Valid(ours[54...], src: pair.aIP, dst: pair.bIP), "ours: UDP checksum over the whole datagram")
            // The kernel leaves its checksum to the device (CHECKSUM_PARTIAL: the field holds the
            // pseudo header sum), and a veth passes it on unfilled; a NIC writes the full checksum,
            // which is what our rule gives for the kernel's frame.
            let kernelChecksum = kernelFrame.be16(at: 60)
            let partial = Checksum.fold(Checksum.pseudoHeader6(src: pair.aIP, dst: pair.bIP, nextHeader: IPProto.udp,
                                                               length: kernelFrame.count - 54))
            #expect(kernelChecksum == partial || Checksum.udp6Valid(kernelFrame[54...], src: pair.aIP, dst: pair.bIP),
                    "kernel: a checksum left to the device, or a complete one")
            var completed = kernelFrame
            completed[60] = 0
            completed[61] = 0
            var full = Checksum.internet(completed[54...], initial: Checksum.pseudoHeader6(src: pair.aIP, dst: pair.bIP, nextHeader: IPProto.udp,
                                                                                            length: completed.count - 54))
            if full == 0 { full = 0xffff }
            #expect(Checksum.vxlan6UDP(kernelFrame) == full, "our rule gives the kernel's frame the checksum a device completes it with")
            for (label, frame) in [("ours", ours), ("kernel", kernelFrame)] {
                #expect((32768..<61000).contains(frame.be16(at: 54)), "\(label): source port in the kernel's range")
            }

            // Our encap → our decap on B, and the kernel's frame → our decap: the original packet back.
            try pair.decapsulateBoth(ours: ours, kernel: kernelFrame, decap: decap, check: check) { frame in
                ReferenceDatapath.xdpMetaBytes(sourceInSubnet: true, ipv6: true) + sharedB.underlayMAC.bytes + pair.aVTEP.bytes
                    + [0x86, 0xdd] + Array(frame[84...]).withInnerCE(from: frame)
            }

            // Our frame into B's kernel flannel-v6 device: delivered. The same with checksum 0: not
            // (flannel's device has no udp6zerocsumrx, which is why the encap computes it).
            let before = try pair.kernelDeviceReceived()
            try pair.sendFromA(ours)
            var delivered = try pair.kernelDeviceReceived()
            for _ in 0..<100 where delivered == before {
                usleep(20_000)
                delivered = try pair.kernelDeviceReceived()
            }
            #expect(delivered == before + 1, "the kernel's flannel-v6 device took our frame")
            var zeroChecksum = ours
            zeroChecksum[60] = 0
            zeroChecksum[61] = 0
            try pair.sendFromA(zeroChecksum)
            try pair.sendFromA(ours) // a marker: counted once it is through, after the zero one
            var after = try pair.kernelDeviceReceived()
            for _ in 0..<100 where after == delivered {
                usleep(20_000)
                after = try pair.kernelDeviceReceived()
            }
            #expect(after == delivered + 1, "only the checksummed frame was taken, not the one with checksum 0")
        }
        #expect(try nodeA.counters()[.encap6OK]?.packets == 2)
        let countsB = try nodeB.counters()
        #expect(countsB[.decap6OK]?.packets == 4 && countsB[.decap6CheckOK]?.packets == 4)
    }
}

extension Array where Element == UInt8 {
    /// This inner IPv6 packet as our XDP decap leaves it: an outer CE mark (traffic class of the
    /// IPv6 VXLAN `frame`) copied in.
    func withInnerCE(from frame: [UInt8]) -> [UInt8] {
        var p = self
        if (frame[15] >> 4) & 0x3 == 0x3 && !p.isEmpty { p[1] |= 0x30 }
        return p
    }
}
