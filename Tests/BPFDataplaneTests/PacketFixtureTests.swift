// Fixture tables (katran's testing/ idea): each row is a description, an input frame, the expected
// verdict by name, the expected output ("unchanged", or the exact bytes) and the ONE counter that
// must move (by one packet and the input's length). Rows run through BPF_PROG_TEST_RUN on programs
// loaded and configured by the production code. Note: the test run zero-fills new headroom, so a
// header byte the encap forgot to write would read 0 here; the kernel-comparison test
// (KernelCompatTests) catches that by comparing with a frame the kernel itself built.

import BPFDataplane
import NetTypes
import TestSupport
import TestTraits
import Testing

struct DecapFixture: Sendable, CustomStringConvertible {
    /// `strippedCE`: stripped, and the outer CE mark copied into the inner IPv4 header.
    /// `stripped6`: an IPv6 frame stripped (PacketFixture6Tests).
    enum Output: Sendable { case unchanged, stripped, strippedCE, stripped6(sourceInSubnet: Bool, copiesCE: Bool) }
    var description: String
    var input: [UInt8]
    var xdpVerdict: String
    var tcVerdict: String
    var xdpOutput: Output
    /// Counter for the XDP program; the TC check uses the same one except decapOK → decapCheckOK.
    var counter: FXDPCounter
    /// BPF_PROG_TEST_RUN refuses skb input shorter than 15 bytes, and IPv4 frames whose IP header
    /// is shorter than 20 bytes (EINVAL): those rows run through XDP only.
    var runsOnTC: Bool {
        input.count >= 15 && !(input.count < 34 && input[12] == 0x08 && input[13] == 0x00)
    }

    static func drop(_ d: String, _ input: [UInt8], _ counter: FXDPCounter) -> DecapFixture {
        DecapFixture(description: d, input: input, xdpVerdict: "XDP_DROP", tcVerdict: "TC_ACT_SHOT", xdpOutput: .unchanged, counter: counter)
    }
    static func pass(_ d: String, _ input: [UInt8], _ counter: FXDPCounter) -> DecapFixture {
        DecapFixture(description: d, input: input, xdpVerdict: "XDP_PASS", tcVerdict: "TC_ACT_OK", xdpOutput: .unchanged, counter: counter)
    }
    static func accept(_ d: String, _ input: [UInt8], output: Output = .stripped) -> DecapFixture {
        DecapFixture(description: d, input: input, xdpVerdict: "XDP_PASS", tcVerdict: "TC_ACT_OK", xdpOutput: output, counter: .decapOK)
    }
}

struct EncapFixture: Sendable, CustomStringConvertible {
    var description: String
    var input: [UInt8]
    var verdict: String
    /// nil: unchanged. Otherwise checked by `checkEncapsulated`.
    var encapsulatedTo: (node: IPv4Address, vtep: MACAddress, outerDst: MACAddress?)?
    var counter: FXDPCounter
}

@Suite(.needsRoot, .ownThreads)
struct PacketFixtureTests {
    static func decapFixtures(_ lab: PacketLab) -> [DecapFixture] {
        let valid = lab.vxlanFromPeer()
        let us = PacketLab.us, peer = PacketLab.peer
        let eth = { (type: UInt16) in PacketBuilder.ethernet(dst: lab.underlayMAC, src: PacketLab.peerUnderlayMAC, type: type) }
        let innerEth = { (dst: MACAddress, type: UInt16) in PacketBuilder.ethernet(dst: dst, src: PacketLab.peerVTEP, type: type) }
        let podIP = PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7))
        let udpTo = { (port: UInt16) in
            eth(EtherType.ipv4) + PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp,
                                                     payload: PacketBuilder.udp(src: peer, dst: us, srcPort: 40000, dstPort: port, payload: Array(valid[42...])))
        }
        let withIP = { (header: [UInt8]) in eth(EtherType.ipv4) + header }
        let tcpInner = innerEth(PacketLab.ourVTEP, EtherType.ipv4)
            + PacketBuilder.ipv4(src: IPv4Address(10, 5, 1, 7), dst: IPv4Address(10, 5, 2, 9), proto: IPProto.tcp,
                                 payload: PacketBuilder.tcp(src: IPv4Address(10, 5, 1, 7), dst: IPv4Address(10, 5, 2, 9),
                                                            srcPort: 5201, dstPort: 40000, payload: Array(repeating: 0x61, count: 100)))
        var vlanTagged = valid
        vlanTagged.replaceSubrange(12..<12, with: [0x81, 0x00, 0x00, 0x64])
        var qinq = valid
        qinq.replaceSubrange(12..<12, with: [0x88, 0xa8, 0x00, 0x64])
        var reservedLow = valid
        reservedLow[49] = 0x01
        var ipVersion6 = valid
        ipVersion6[14] = 0x65
        var ihl4 = valid
        ihl4[14] = 0x44
        var badChecksum = valid
        badChecksum[24] ^= 0xff

        var rows: [DecapFixture] = [
            .accept("valid VXLAN from a peer, inner ICMP", valid),
            .accept("valid, UDP checksum computed (as kernel vxlan sends)", lab.vxlanFromPeer(udpChecksum: true)),
            .accept("valid, inner TCP", lab.vxlanFromPeer(inner: tcpInner)),
            .pass("ARP", eth(EtherType.arp) + Array(repeating: 0, count: 28), .decapPassNotIPv4),
            .pass("IPv6", eth(EtherType.ipv6) + Array(repeating: 0x60, count: 48), .decapPassNotIPv4),
            .pass("802.1Q tagged VXLAN", vlanTagged, .decapPassVLAN),
            .pass("802.1ad tagged VXLAN", qinq, .decapPassVLAN),
            .drop("IPv4 header truncated at 10 bytes", eth(EtherType.ipv4) + Array(valid[14..<24]), .decapDropMalformed),
            .drop("IPv4 version 6 in an IPv4 frame", ipVersion6, .decapDropMalformed),
            .drop("IHL 4 (below the minimum 5)", ihl4, .decapDropMalformed),
            .drop("IHL 15 but the frame ends after 30 bytes of IP",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp, payload: Array(repeating: 0, count: 10), ihl: 15)),
                  .decapDropMalformed),
            .drop("total length 10 < header length",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp, payload: Array(valid[34...]), totalLength: 10)),
                  .decapDropMalformed),
            .pass("TCP to port 8472", withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.tcp,
                                                                 payload: PacketBuilder.tcp(src: peer, dst: us, srcPort: 1, dstPort: 8472, payload: [1, 2, 3]))),
                  .decapPassNotVXLAN),
            .pass("ICMP echo to the node", withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.icmp,
                                                                      payload: PacketBuilder.icmpEcho(id: 1, sequence: 1, payload: [0, 1, 2, 3]))),
                  .decapPassNotVXLAN),
            .pass("UDP to port 53", udpTo(53), .decapPassNotVXLAN),
            .pass("VXLAN to 4789 (IANA port, not flannel's)", udpTo(4789), .decapPassNotVXLAN),
            .pass("non-first fragment to the node", lab.vxlanFromPeer(fragment: .init(moreFragments: true, offset: 100)),
                  .decapPassFragment),
            .pass("last fragment (offset, no MF)", lab.vxlanFromPeer(fragment: .init(offset: 185)), .decapPassFragment),
            .pass("VXLAN from a peer to another host (transit through this node)",
                  PacketBuilder.vxlanFrame(outerDst: lab.underlayMAC, outerSrc: PacketLab.peerUnderlayMAC, src: peer,
                                           dst: IPv4Address(192, 168, 60, 50), inner: Array(valid[50...])),
                  .decapPassOtherHost),
            .pass("VXLAN from a stranger to another host", PacketBuilder.vxlanFrame(
                      outerDst: lab.underlayMAC, outerSrc: PacketLab.peerUnderlayMAC, src: PacketLab.stranger,
                      dst: IPv4Address(10, 99, 0, 1), inner: Array(valid[50...])),
                  .decapPassOtherHost),
            .pass("first fragment (MF) from a peer, every header checked: left to the kernel's reassembly",
                  lab.vxlanFromPeer(fragment: .init(moreFragments: true)), .decapFragmentOK),
            .drop("first fragment from a peer carrying only the UDP header",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp,
                                            payload: PacketBuilder.udp(src: peer, dst: us, srcPort: 40000, dstPort: PacketLab.port, payload: []),
                                            fragment: .init(moreFragments: true))),
                  .decapDropFragment),
            .drop("first fragment from a peer ending inside the inner Ethernet header",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp, payload: Array(valid[34..<56]),
                                            fragment: .init(moreFragments: true))),
                  .decapDropFragment),
            .drop("first fragment from a stranger", lab.vxlanFromPeer(src: PacketLab.stranger, fragment: .init(moreFragments: true)),
                  .decapDropNotPeer),
            .drop("first fragment from a peer with a spoofed inner source",
                  lab.vxlanFromPeer(inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 3, 4))),
                                    fragment: .init(moreFragments: true)),
                  .decapDropInnerSource),
            .pass("first fragment to port 53",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp,
                                            payload: PacketBuilder.udp(src: peer, dst: us, srcPort: 1, dstPort: 53, payload: [1, 2, 3, 4]),
                                            fragment: .init(moreFragments: true))),
                  .decapPassNotVXLAN),
            .drop("IP options (4 NOPs) on VXLAN", lab.vxlanFromPeer(options: [1, 1, 1, 1]), .decapDropIPOptions),
            .drop("IP options (40 bytes, IHL 15) on VXLAN", lab.vxlanFromPeer(options: Array(repeating: 1, count: 40)), .decapDropIPOptions),
            .pass("IP options on UDP to port 53",
                  withIP(PacketBuilder.ipv4(src: peer, dst: us, proto: IPProto.udp,
                                            payload: PacketBuilder.udp(src: peer, dst: us, srcPort: 1, dstPort: 53, payload: [1, 2, 3, 4]),
                                            options: [1, 1, 1, 1])),
                  .decapPassNotVXLAN),
            .drop("UDP header truncated (4 of 8 bytes)", Array(valid[0..<38]), .decapDropMalformed),
            .drop("VXLAN from a node that is not a peer", lab.vxlanFromPeer(src: PacketLab.stranger), .decapDropNotPeer),
            .drop("non-peer with a wrong VNI: the source check comes first", lab.vxlanFromPeer(src: PacketLab.stranger, vni: 7),
                  .decapDropNotPeer),
            .drop("wrong VNI 2", lab.vxlanFromPeer(vni: 2), .decapDropBadVNI),
            .drop("I flag clear", lab.vxlanFromPeer(vxlanFlags: 0x00), .decapDropBadVNI),
            .drop("GBP bit set with I (extension we do not speak)", lab.vxlanFromPeer(vxlanFlags: 0x88), .decapDropBadVNI),
            .drop("reserved byte after the VNI set", reservedLow, .decapDropBadVNI),
            .drop("VXLAN header truncated", Array(valid[0..<46]), .decapDropMalformed),
            .drop("inner Ethernet truncated", Array(valid[0..<56]), .decapDropMalformed),
            .drop("inner destination broadcast", lab.vxlanFromPeer(inner: innerEth(MACAddress("ff:ff:ff:ff:ff:ff")!, EtherType.ipv4) + podIP),
                  .decapDropInnerNotOurs),
            .drop("inner destination another node's VtepMAC",
                  lab.vxlanFromPeer(inner: innerEth(MACAddress("02:00:00:00:00:05")!, EtherType.ipv4) + podIP), .decapDropInnerNotOurs),
            .drop("inner ARP", lab.vxlanFromPeer(inner: innerEth(PacketLab.ourVTEP, EtherType.arp) + Array(repeating: 0, count: 28)),
                  .decapDropInnerNotIPv4),
            .drop("outer IPv4 header checksum wrong", badChecksum, .decapDropOuterCsum),
            .drop("outer total length beyond the frame", valid.withTotalLength(UInt16(valid.count - 14 + 8)), .decapDropMalformed),
            .drop("inner source MAC is our own VtepMAC (a loop)",
                  lab.vxlanFromPeer(inner: PacketLab.innerFrame(podIP, from: PacketLab.ourVTEP)), .decapDropLoop),
            .drop("outer CE on a not-ECT inner packet", lab.vxlanFromPeer(tos: 0x03), .decapDropECN),
            .accept("outer CE on an ECT(0) inner packet: CE copied in",
                    lab.vxlanFromPeer(inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7), tos: 0x02)),
                                      tos: 0x03), output: .strippedCE),
            .accept("outer CE on a CE inner packet", lab.vxlanFromPeer(
                        inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7), tos: 0x03)),
                        tos: 0x03)),
            .accept("outer ECT(0) on a not-ECT inner packet (the kernel only logs it)", lab.vxlanFromPeer(tos: 0x02)),
            .drop("inner source in another peer's subnet", lab.vxlanFromPeer(inner: PacketLab.innerFrame(
                      PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 3, 4)))), .decapDropInnerSource),
            .drop("inner source in our own subnet", lab.vxlanFromPeer(inner: PacketLab.innerFrame(
                      PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 2, 77)))), .decapDropInnerSource),
            .drop("inner source outside the pod network", lab.vxlanFromPeer(inner: PacketLab.innerFrame(
                      PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(8, 8, 8, 8)))), .decapDropInnerSource),
            .accept("inner source the peer node's own address", lab.vxlanFromPeer(inner: PacketLab.innerFrame(
                        PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: peer)))),
            .accept("inner source the peer's flannel.<VNI> address", lab.vxlanFromPeer(inner: PacketLab.innerFrame(
                        PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 0))))),
            .accept("from a peer's published SourceIP, inner source in its subnet", lab.vxlanFromPeer(
                        inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 5, 7))),
                        src: PacketLab.multihomedSource)),
            .accept("from a SourceIP-publishing peer's PublicIP (NAT in between), inner source in its subnet", lab.vxlanFromPeer(
                        inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 5, 7))),
                        src: PacketLab.multihomedPeer)),
            .drop("from a peer's SourceIP, inner source of another peer", lab.vxlanFromPeer(
                      inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7))),
                      src: PacketLab.multihomedSource),
                  .decapDropInnerSource),
            .drop("inner IPv4 truncated at 10 bytes", Array(valid[0..<74]).withTotalLength(UInt16(74 - 14)), .decapDropMalformed),
        ]
        // Every truncation point of the valid frame: each cuts a header, or leaves the outer total
        // length beyond the frame, which ip_rcv drops too. (BPF_PROG_TEST_RUN refuses frames under
        // 14 bytes for XDP too, so DECAP_PASS_SHORT is reachable only on a real interface.)
        for cut in 14..<valid.count {
            rows.append(.drop("truncated at \(cut)", Array(valid[0..<cut]), .decapDropMalformed))
        }
        // Every truncation point whose outer total length was made to match: each header the
        // classification reads is cut in turn; once the inner IPv4 header is whole the rest is the
        // stack's to check.
        for cut in 34..<valid.count {
            let frame = Array(valid[0..<cut]).withTotalLength(UInt16(cut - 14))
            rows.append(cut < 84 ? .drop("cut at \(cut), total length matching", frame, .decapDropMalformed)
                : .accept("cut at \(cut), total length matching", frame))
        }
        return rows
    }

    @Test func decapFixtureTable() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let rows = PacketFixtureTests.decapFixtures(lab)
        #expect(rows.count >= 55 + 2 * 90)
        for row in rows {
            let xdp = try lab.run(.decapXDP, row.input)
            #expect(xdp.verdict == row.xdpVerdict, "xdp: \(row)")
            switch row.xdpOutput {
            case .unchanged: #expect(xdp.output == row.input, "xdp output: \(row)")
            case .stripped: #expect(xdp.output == lab.stripped(row.input), "xdp output: \(row)")
            case .strippedCE:
                var want = lab.stripped(row.input)
                let ip = 8 + 14 // metadata, inner Ethernet
                want[ip + 1] |= 0x3
                want[ip + 10] = 0
                want[ip + 11] = 0
                let check = Checksum.internet(want[ip..<(ip + 20)])
                want[ip + 10] = UInt8(check >> 8)
                want[ip + 11] = UInt8(check & 0xff)
                #expect(xdp.output == want, "xdp output: \(row)")
            case .stripped6: Issue.record("an IPv6 expectation in the IPv4 table: \(row)")
            }
            #expect(xdp.moved == [row.counter: FXDPCount(packets: 1, bytes: UInt64(row.input.count))], "xdp counter: \(row)")

            guard row.runsOnTC else { continue }
            let tc = try lab.run(.decapCheck, row.input)
            let tcCounter: FXDPCounter = row.counter == .decapOK ? .decapCheckOK : row.counter
            #expect(tc.verdict == row.tcVerdict, "tc: \(row)")
            #expect(tc.output == row.input, "tc output (the check never modifies): \(row)")
            #expect(tc.moved == [tcCounter: FXDPCount(packets: 1, bytes: UInt64(row.input.count))], "tc counter: \(row)")
        }
    }

    static func encapFixtures() -> [EncapFixture] {
        let pod = PacketLab.podPacket()
        let peerNode = (node: PacketLab.peer, vtep: PacketLab.peerVTEP, outerDst: Optional(PacketLab.peerUnderlayMAC))
        var ihl4 = PacketLab.overlayFrame(pod)
        ihl4[14] = 0x44
        var version6 = PacketLab.overlayFrame(pod)
        version6[14] = 0x65
        let tcpPod = PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7), proto: IPProto.tcp,
                                        payload: PacketBuilder.tcp(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                   srcPort: 40000, dstPort: 5201, payload: Array(repeating: 0x62, count: 1000)))
        let udpPod = PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7), proto: IPProto.udp,
                                        payload: PacketBuilder.udp(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                   srcPort: 53, dstPort: 53, payload: [1, 2, 3]))
        return [
            EncapFixture(description: "ICMP to a peer's pod", input: PacketLab.overlayFrame(pod), verdict: "TC_ACT_REDIRECT",
                         encapsulatedTo: peerNode, counter: .encapOK),
            EncapFixture(description: "TCP to a peer's pod", input: PacketLab.overlayFrame(tcpPod), verdict: "TC_ACT_REDIRECT",
                         encapsulatedTo: peerNode, counter: .encapOK),
            EncapFixture(description: "UDP to a peer's pod", input: PacketLab.overlayFrame(udpPod), verdict: "TC_ACT_REDIRECT",
                         encapsulatedTo: peerNode, counter: .encapOK),
            EncapFixture(description: "exactly the overlay MTU (1450)", input: PacketLab.overlayFrame(PacketLab.podPacket(size: 1450 - 28)),
                         verdict: "TC_ACT_REDIRECT", encapsulatedTo: peerNode, counter: .encapOK),
            EncapFixture(description: "peer node without a neighbour entry: left to the kernel, which resolves it",
                         input: PacketLab.overlayFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 3, 4))), verdict: "TC_ACT_OK",
                         encapsulatedTo: nil, counter: .encapPassNoNeigh),
            EncapFixture(description: "peer node with no route: left to the kernel", input: PacketLab.overlayFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 9, 4))),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassFIB),
            EncapFixture(description: "destination in no peer subnet", input: PacketLab.overlayFrame(PacketLab.podPacket(dst: IPv4Address(10, 7, 0, 1))),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassNoPeer),
            EncapFixture(description: "our own subnet is no peer", input: PacketLab.overlayFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 1))),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassNoPeer),
            EncapFixture(description: "ARP", input: PacketLab.overlayFrame(Array(repeating: 0, count: 28), type: EtherType.arp),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassNotIPv4),
            EncapFixture(description: "IPv6", input: PacketLab.overlayFrame(Array(repeating: 0x60, count: 60), type: EtherType.ipv6),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassNotIPv4),
            EncapFixture(description: "802.1Q tagged", input: PacketBuilder.ethernet(dst: PacketLab.peerVTEP, src: PacketLab.ourVTEP,
                                                                                        type: EtherType.ipv4, vlan: 5) + pod,
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassNotIPv4),
            // (BPF_PROG_TEST_RUN refuses skbs whose IPv4 header is under 20 bytes, so the shortest
            // truncations are checked through the decap table's XDP runs instead.)
            EncapFixture(description: "IHL 15 but the packet ends after 30 bytes",
                         input: PacketLab.overlayFrame(PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                          proto: IPProto.udp, payload: Array(repeating: 0, count: 10), ihl: 15)),
                         verdict: "TC_ACT_SHOT", encapsulatedTo: nil, counter: .encapDropMalformed),
            EncapFixture(description: "options announced by IHL 8, 24 bytes present",
                         input: PacketLab.overlayFrame(PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                          proto: IPProto.udp, payload: [0, 0, 0, 0], ihl: 8)),
                         verdict: "TC_ACT_SHOT", encapsulatedTo: nil, counter: .encapDropMalformed),
            EncapFixture(description: "total length shorter than the header",
                         input: PacketLab.overlayFrame(PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                          proto: IPProto.udp, payload: Array(repeating: 0, count: 20), totalLength: 12)),
                         verdict: "TC_ACT_SHOT", encapsulatedTo: nil, counter: .encapDropMalformed),
            EncapFixture(description: "IHL 4", input: ihl4, verdict: "TC_ACT_SHOT", encapsulatedTo: nil, counter: .encapDropMalformed),
            EncapFixture(description: "version 6 in an IPv4 frame", input: version6, verdict: "TC_ACT_SHOT", encapsulatedTo: nil,
                         counter: .encapDropMalformed),
            EncapFixture(description: "non-GSO packet over the overlay MTU", input: PacketLab.overlayFrame(PacketLab.podPacket(size: 1500)),
                         verdict: "TC_ACT_OK", encapsulatedTo: nil, counter: .encapPassTooBig),
        ]
    }

    @Test func encapFixtureTable() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        for row in PacketFixtureTests.encapFixtures() {
            let r = try lab.run(.encap, row.input)
            #expect(r.verdict == row.verdict, "\(row)")
            #expect(r.moved == [row.counter: FXDPCount(packets: 1, bytes: UInt64(row.input.count))], "counter: \(row)")
            if let to = row.encapsulatedTo {
                checkEncapsulated(r.output, original: row.input, node: to.node, vtep: to.vtep, outerDst: to.outerDst,
                                  outerSrc: to.outerDst == nil ? nil : lab.underlayMAC, row: row.description)
            } else {
                #expect(r.output == row.input, "output unchanged: \(row)")
            }
        }
    }

    @Test func outerECNFollowsTheInnerPacket() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        for (inner, outer) in [(UInt8(0x00), UInt8(0x00)), (0xb8, 0x00), (0x01, 0x01), (0x02, 0x02), (0x03, 0x02), (0xbb, 0x02)] {
            let r = try lab.run(.encap, PacketLab.overlayFrame(PacketLab.podPacket(tos: inner)))
            #expect(r.verdict == "TC_ACT_REDIRECT")
            #expect(ParsedFrame(r.output)?.ipv4?.tos == outer, "inner TOS \(inner) → outer \(outer)")
        }
    }

    /// What `udp_flow_src_port` gives a receiver: distinct inner flows get distinct outer source
    /// ports, spread across 32768...60999 (RSS on the receiving NIC hashes them to queues).
    /// nil when `ports` (one per distinct flow) look so, else what is wrong.
    static func sourcePortSpreadProblem(_ ports: [UInt16]) -> String? {
        let range = 32768...60999
        if let outside = ports.first(where: { !range.contains(Int($0)) }) { return "port \(outside) outside \(range)" }
        let distinct = Set(ports).count
        if distinct * 10 < ports.count * 9 { return "\(distinct) distinct ports for \(ports.count) flows" }
        var buckets = [Int](repeating: 0, count: 8)
        for port in ports { buckets[(Int(port) - range.lowerBound) * 8 / range.count] += 1 }
        let expected = ports.count / 8
        if buckets.contains(where: { $0 < expected / 3 || $0 > expected * 3 }) { return "uneven across the range: \(buckets)" }
        return nil
    }

    @Test func outerSourcePortSpreadsFlows() throws {
        // The check itself must refuse a constant port and a port that merely counts up.
        #expect(PacketFixtureTests.sourcePortSpreadProblem([UInt16](repeating: 40000, count: 256)) != nil)
        #expect(PacketFixtureTests.sourcePortSpreadProblem((0..<256).map { UInt16(32768 + $0) }) != nil)
        let lab = try PacketLab()
        defer { lab.close() }
        var ports: [UInt16] = []
        for flow in 0..<256 {
            let udp = PacketBuilder.ipv4(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7), proto: IPProto.udp,
                                         payload: PacketBuilder.udp(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7),
                                                                    srcPort: UInt16(20000 + flow), dstPort: 53, payload: [1, 2, 3]))
            let r = try lab.run(.encap, PacketLab.overlayFrame(udp))
            #expect(r.verdict == "TC_ACT_REDIRECT")
            ports.append(r.output.be16(at: 34))
        }
        #expect(PacketFixtureTests.sourcePortSpreadProblem(ports) == nil, "\(ports.prefix(32))")
        // The same flow always gets the same port (a flow stays on one receive queue, in order).
        let again = try lab.run(.encap, PacketLab.overlayFrame(PacketBuilder.ipv4(
            src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7), proto: IPProto.udp,
            payload: PacketBuilder.udp(src: IPv4Address(10, 5, 2, 9), dst: IPv4Address(10, 5, 1, 7), srcPort: 20000, dstPort: 53, payload: [1, 2, 3]))))
        #expect(again.output.be16(at: 34) == ports[0])
    }

    @Test func outerTTLIsTheConfiguredOne() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        var config = lab.config
        config.outerTTL = 99
        try lab.bpf.writeConfig(config)
        let r = try lab.run(.encap, PacketLab.overlayFrame(PacketLab.podPacket()))
        #expect(r.verdict == "TC_ACT_REDIRECT" && ParsedFrame(r.output)?.ipv4?.ttl == 99)
        #expect(ParsedFrame(r.output)?.ipv4?.headerChecksumValid == true)
        try lab.bpf.setOuterTTL(0)
        #expect(ParsedFrame(try lab.run(.encap, PacketLab.overlayFrame(PacketLab.podPacket())).output)?.ipv4?.ttl == 64)
    }

    @Test func vxlanToTheLeasesPublicIPIsOursWhenItIsLocal() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let publicIP = IPv4Address(192, 168, 60, 200)
        let toPublic = PacketBuilder.vxlanFrame(outerDst: lab.underlayMAC, outerSrc: PacketLab.peerUnderlayMAC, src: PacketLab.peer,
                                                dst: publicIP, inner: Array(lab.vxlanFromPeer()[50...]))
        #expect(try lab.run(.decapCheck, toPublic).moved[.decapPassOtherHost]?.packets == 1, "not ours without --public-ip")
        var config = lab.config
        config.publicIP = publicIP
        try lab.bpf.writeConfig(config)
        #expect(try lab.bpf.readConfig()?.publicIP == publicIP)
        #expect(try lab.run(.decapCheck, toPublic).moved[.decapCheckOK]?.packets == 1)
        let x = try lab.run(.decapXDP, toPublic)
        #expect(x.verdict == "XDP_PASS" && x.moved[.decapOK]?.packets == 1)
        #expect(try lab.run(.decapCheck, lab.vxlanFromPeer()).moved[.decapCheckOK]?.packets == 1, "the node IP still is")
    }

    @Test func innerSourceCheckCanBeSwitchedOff() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let spoofed = lab.vxlanFromPeer(inner: PacketLab.innerFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 3, 4))))
        #expect(try lab.run(.decapCheck, spoofed).moved[.decapDropInnerSource]?.packets == 1)
        var config = lab.config
        config.innerSourceCheck = false
        try lab.bpf.writeConfig(config)
        #expect(try lab.run(.decapCheck, spoofed).moved[.decapCheckOK]?.packets == 1)
        #expect(try lab.run(.decapXDP, spoofed).moved[.decapOK]?.packets == 1)
        // The source check on the outer address stays.
        #expect(try lab.run(.decapCheck, lab.vxlanFromPeer(src: PacketLab.stranger)).moved[.decapDropNotPeer]?.packets == 1)
    }

    @Test func forwardingOffLeavesEncapToTheKernel() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        // bpf_fib_lookup answers FWD_DISABLED when the underlay does not forward; every flannel node
        // forwards, but if one does not, the kernel device must still carry the traffic.
        try lab.ns.sh(["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"])
        let input = PacketLab.overlayFrame(PacketLab.podPacket())
        let r = try lab.run(.encap, input)
        #expect(r.verdict == "TC_ACT_OK" && r.output == input)
        #expect(r.moved == [.encapPassFIB: FXDPCount(packets: 1, bytes: UInt64(input.count))])
    }

    @Test func driverIsReadInTheNamespace() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let (veth, lo) = try lab.ns.run { (InterfaceDriver.name(ifindex: lab.config.underlayIfindex), InterfaceDriver.name(ifindex: 1)) }
        #expect(veth == "veth")
        #expect(lo == nil || lo == "")
        #expect(try lab.ns.run { DecapMode.defaultMode(ifindex: lab.config.underlayIfindex) } == .tc)
        #expect(InterfaceDriver.name(interface: "no-such-if0") == nil)
    }

    @Test func disabledConfigPassesEverything() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        try lab.bpf.setEnabled(false)
        let encapIn = PacketLab.overlayFrame(PacketLab.podPacket())
        let e = try lab.run(.encap, encapIn)
        #expect(e.verdict == "TC_ACT_OK" && e.output == encapIn)
        #expect(e.moved == [.encapPassDisabled: FXDPCount(packets: 1, bytes: UInt64(encapIn.count))])
        let decapIn = lab.vxlanFromPeer(src: PacketLab.stranger)
        let x = try lab.run(.decapXDP, decapIn)
        #expect(x.verdict == "XDP_PASS" && x.output == decapIn)
        #expect(x.moved == [.decapPassDisabled: FXDPCount(packets: 1, bytes: UInt64(decapIn.count))])
        let t = try lab.run(.decapCheck, decapIn)
        #expect(t.verdict == "TC_ACT_OK" && t.output == decapIn)
        #expect(t.moved == [.decapPassDisabled: FXDPCount(packets: 1, bytes: UInt64(decapIn.count))])
        try lab.bpf.setEnabled(true)
        #expect(try lab.run(.encap, encapIn).moved[.encapOK]?.packets == 1)
    }
}

/// Checks an encapsulated frame field by field: outer Ethernet (when known), outer IPv4 (valid
/// checksum, no DF, TTL 64, UDP), UDP (port 8472, source port in the kernel's range, length,
/// checksum 0 or valid), VXLAN (I flag, VNI), inner Ethernet (peer VtepMAC, ours) and the original
/// IP packet byte for byte.
func checkEncapsulated(_ out: [UInt8], original: [UInt8], node: IPv4Address, vtep: MACAddress,
                       outerDst: MACAddress?, outerSrc: MACAddress?, row: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
    guard let f = ParsedFrame(out), let ip = f.ipv4, let udp = f.udp, let inner = f.innerOffset else {
        Issue.record("not a VXLAN frame: \(row): \(out.hex)", sourceLocation: sourceLocation)
        return
    }
    #expect(out.count == original.count + 50, "\(row)", sourceLocation: sourceLocation)
    if let outerDst { #expect(f.dst == outerDst, "\(row)", sourceLocation: sourceLocation) }
    if let outerSrc { #expect(f.src == outerSrc, "\(row)", sourceLocation: sourceLocation) }
    #expect(f.etherType == EtherType.ipv4)
    #expect(ip.version == 4 && ip.ihl == 5 && ip.headerChecksumValid, "\(row)", sourceLocation: sourceLocation)
    #expect(!ip.dontFragment && !ip.moreFragments && ip.fragmentOffset == 0 && ip.ttl == 64 && ip.proto == IPProto.udp,
            "\(row)", sourceLocation: sourceLocation)
    #expect(Int(ip.totalLength) == out.count - 14, "\(row)", sourceLocation: sourceLocation)
    #expect(ip.src == PacketLab.us && ip.dst == node, "\(row)", sourceLocation: sourceLocation)
    #expect(udp.dstPort == 8472 && (32768..<61000).contains(udp.srcPort), "\(row)", sourceLocation: sourceLocation)
    #expect(Int(udp.length) == out.count - 34 && udp.checksumValidOrZero, "\(row)", sourceLocation: sourceLocation)
    #expect(f.vxlanFlags == 0x08 && f.vxlanVNI == 1 && Array(out[43..<46]) == [0, 0, 0] && out[49] == 0,
            "\(row)", sourceLocation: sourceLocation)
    #expect(Array(out[inner..<(inner + 6)]) == vtep.bytes, "\(row)", sourceLocation: sourceLocation)
    #expect(Array(out[(inner + 6)..<(inner + 12)]) == PacketLab.ourVTEP.bytes, "\(row)", sourceLocation: sourceLocation)
    #expect(out.be16(at: inner + 12) == EtherType.ipv4, "\(row)", sourceLocation: sourceLocation)
    #expect(Array(out[(inner + 14)...]) == Array(original[14...]), "inner IP packet identical: \(row)", sourceLocation: sourceLocation)
}
