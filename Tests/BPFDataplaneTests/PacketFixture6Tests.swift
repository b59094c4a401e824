// The IPv6 fixture tables: every verdict of the IPv6 path (fxdp_encap6 on flannel-v6.<VNI>, and the
// IPv6 branch of fxdp_decap_xdp and fxdp_decap_check) on a dual-stack PacketLab, each row with the
// ONE counter that must move. Valid inner packets carry correct checksums, so the outer UDP checksum
// the encap derives from the headers must also be the ordinary checksum of the whole datagram.

import BPFDataplane
import CBPF
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite(.needsRoot, .ownThreads)
struct PacketFixture6Tests {
    static func decapFixtures(_ lab: PacketLab) -> [DecapFixture] {
        let valid = lab.vxlan6FromPeer()
        let eth = { (type: UInt16) in PacketBuilder.ethernet(dst: lab.underlayMAC, src: PacketLab.peerUnderlayMAC, type: type) }
        let innerEth = { (dst: MACAddress, type: UInt16) in PacketBuilder.ethernet(dst: dst, src: PacketLab.peerVTEP6, type: type) }
        let podIP = PacketLab.podPacket6(dst: PacketLab.ourPod6, src: PacketLab.peerPod6)
        let fromPod = { (source: IPv6Address) in PacketLab.innerFrame6(PacketLab.podPacket6(dst: PacketLab.ourPod6, src: source)) }
        let peer = PacketLab.peer6, us = PacketLab.us6
        let udpTo = { (port: UInt16) in
            eth(EtherType.ipv6Ethernet) + PacketBuilder.ipv6(src: peer, dst: us, nextHeader: IPProto.udp,
                                                             payload: PacketBuilder.udp6(src: peer, dst: us, srcPort: 40000, dstPort: port,
                                                                                         payload: Array(valid[62...])))
        }
        let tcpInner = innerEth(PacketLab.ourVTEP6, EtherType.ipv6Ethernet)
            + PacketBuilder.ipv6(src: PacketLab.peerPod6, dst: PacketLab.ourPod6, nextHeader: IPProto.tcp,
                                 payload: PacketBuilder.tcp6(src: PacketLab.peerPod6, dst: PacketLab.ourPod6, srcPort: 5201, dstPort: 40000,
                                                             payload: Array(repeating: 0x61, count: 100)))
        // Hop-by-hop options (PadN) in front of UDP: what flannel never sends.
        let hopByHop: [UInt8] = [IPProto.udp, 0, 1, 4, 0, 0, 0, 0]
        var version4 = valid
        version4[14] = 0x40
        var reservedLow = valid
        reservedLow[69] = 0x01
        var zeroPayloadLength = valid
        zeroPayloadLength[18] = 0
        zeroPayloadLength[19] = 0
        var payloadBeyond = valid
        payloadBeyond.setBE16(UInt16(valid.count - 54 + 8), at: 18)
        let firstFragmentOnlyUDP = eth(EtherType.ipv6Ethernet)
            + PacketBuilder.ipv6(src: peer, dst: us, nextHeader: IPProto.fragment,
                                 payload: PacketBuilder.fragmentHeader6(nextHeader: IPProto.udp, more: true)
                                     + PacketBuilder.udp6(src: peer, dst: us, srcPort: 40000, dstPort: PacketLab.port, payload: []))
        let laterFragment = eth(EtherType.ipv6Ethernet)
            + PacketBuilder.ipv6(src: peer, dst: us, nextHeader: IPProto.fragment,
                                 payload: PacketBuilder.fragmentHeader6(nextHeader: IPProto.udp, offset: 100, more: true) + Array(valid[54...]))
        let inSubnet = { (f: [UInt8]) -> Bool in
            let outer = IPv6Address(bytes: Array(f[22..<38]))!, inner = IPv6Address(bytes: Array(f[92..<108]))!
            return PacketLab.peers6.contains { $0.sourceAddresses.contains(outer) && PacketFixture6Tests.contains($0.subnet, inner) }
        }
        var rows: [DecapFixture] = [
            .accept6("valid IPv6 VXLAN from a peer, inner ICMPv6", valid, sourceInSubnet: inSubnet(valid)),
            .accept6("valid, inner TCP", lab.vxlan6FromPeer(inner: tcpInner), sourceInSubnet: true),
            .pass("IPv6 to another port", udpTo(53), .decapPassNotVXLAN),
            .pass("VXLAN to 4789", udpTo(4789), .decapPassNotVXLAN),
            .pass("ICMPv6 echo to the node", eth(EtherType.ipv6Ethernet) + PacketBuilder.ipv6(
                      src: peer, dst: us, nextHeader: IPProto.icmpv6,
                      payload: PacketBuilder.icmpv6Echo(src: peer, dst: us, id: 1, sequence: 1, payload: [1, 2, 3, 4])), .decapPassNotVXLAN),
            .pass("TCP to port 8472", eth(EtherType.ipv6Ethernet) + PacketBuilder.ipv6(
                      src: peer, dst: us, nextHeader: IPProto.tcp,
                      payload: PacketBuilder.tcp6(src: peer, dst: us, srcPort: 1, dstPort: 8472, payload: [1, 2, 3])), .decapPassNotVXLAN),
            .pass("hop-by-hop options before VXLAN: left to the kernel and the IPv6 door", lab.vxlan6FromPeer(
                      extensionHeaders: hopByHop, extensionNextHeader: IPProto.hopByHop), .decap6PassExtHeaders),
            .pass("a non-first fragment", laterFragment, .decapPassFragment),
            .pass("VXLAN from a peer to another IPv6 host (transit)", lab.vxlan6FromPeer(dst: IPv6Address("fd00:60::50")!), .decapPassOtherHost),
            .pass("VXLAN from a stranger to another host", lab.vxlan6FromPeer(src: PacketLab.stranger6, dst: IPv6Address("fd00:99::1")!),
                  .decapPassOtherHost),
            .pass("first fragment from a peer, every header checked: left to the kernel's reassembly",
                  lab.vxlan6FromPeer(moreFragments: true), .decapFragmentOK),
            .pass("an atomic fragment (offset 0, no M flag), checked: left to the kernel",
                  lab.vxlan6FromPeer(moreFragments: false), .decapFragmentOK),
            .drop("first fragment carrying only the UDP header", firstFragmentOnlyUDP, .decapDropFragment),
            .drop("first fragment from a stranger", lab.vxlan6FromPeer(src: PacketLab.stranger6, moreFragments: true), .decapDropNotPeer),
            .drop("first fragment with a spoofed inner source",
                  lab.vxlan6FromPeer(inner: fromPod(IPv6Address("fd10:5:3::4")!), moreFragments: true), .decapDropInnerSource),
            .drop("IPv6 header truncated at 30 bytes", eth(EtherType.ipv6Ethernet) + Array(valid[14..<44]), .decapDropMalformed),
            .drop("version 4 in an IPv6 frame", version4, .decapDropMalformed),
            .drop("payload length 0 (no jumbogram option)", zeroPayloadLength, .decapDropMalformed),
            .drop("payload length beyond the frame", payloadBeyond, .decapDropMalformed),
            .drop("UDP checksum 0 (flannel-v6's device drops it)", lab.vxlan6FromPeer(udpChecksum: false), .decap6DropUDPZeroCsum),
            .drop("from an address that is not an IPv6 peer", lab.vxlan6FromPeer(src: PacketLab.stranger6), .decapDropNotPeer),
            .drop("from the IPv4 peer's IPv4-mapped address", lab.vxlan6FromPeer(src: IPv6Address("::ffff:192.168.60.1")!), .decapDropNotPeer),
            .drop("wrong VNI", lab.vxlan6FromPeer(vni: 2), .decapDropBadVNI),
            .drop("I flag clear", lab.vxlan6FromPeer(vxlanFlags: 0), .decapDropBadVNI),
            .drop("reserved byte after the VNI set", reservedLow, .decapDropBadVNI),
            .drop("inner destination the IPv4 device's VtepMAC", lab.vxlan6FromPeer(
                      inner: PacketBuilder.ethernet(dst: PacketLab.ourVTEP, src: PacketLab.peerVTEP6, type: EtherType.ipv6Ethernet) + podIP),
                  .decapDropInnerNotOurs),
            .drop("inner source MAC our own IPv6 VtepMAC (a loop)", lab.vxlan6FromPeer(inner: PacketLab.innerFrame6(podIP, from: PacketLab.ourVTEP6)),
                  .decapDropLoop),
            .drop("inner IPv4 on the IPv6 device", lab.vxlan6FromPeer(inner: innerEth(PacketLab.ourVTEP6, EtherType.ipv4)
                      + PacketLab.podPacket(dst: IPv4Address(10, 5, 2, 9), src: IPv4Address(10, 5, 1, 7))), .decap6DropInnerNotIPv6),
            .drop("outer CE on a not-ECT inner packet", lab.vxlan6FromPeer(trafficClass: 0x03), .decapDropECN),
            .accept6("outer CE on an ECT(0) inner packet: CE copied in", lab.vxlan6FromPeer(
                         inner: PacketLab.innerFrame6(PacketLab.podPacket6(dst: PacketLab.ourPod6, src: PacketLab.peerPod6, trafficClass: 0x02)),
                         trafficClass: 0x03), sourceInSubnet: true, copiesCE: true),
            .accept6("outer ECT(0) on a not-ECT inner packet", lab.vxlan6FromPeer(trafficClass: 0x02), sourceInSubnet: true),
            .drop("inner source in another peer's subnet", lab.vxlan6FromPeer(inner: fromPod(IPv6Address("fd10:5:3::4")!)), .decapDropInnerSource),
            .drop("inner source in our own subnet", lab.vxlan6FromPeer(inner: fromPod(IPv6Address("fd10:5:2::77")!)), .decapDropInnerSource),
            .drop("inner source outside the pod network", lab.vxlan6FromPeer(inner: fromPod(IPv6Address("2001:db8::1")!)), .decapDropInnerSource),
            .accept6("inner source the peer's own IPv6 address", lab.vxlan6FromPeer(inner: fromPod(peer)), sourceInSubnet: false),
            .accept6("inner source the peer's flannel-v6 address", lab.vxlan6FromPeer(inner: fromPod(IPv6Address("fd10:5:1::")!)),
                     sourceInSubnet: true),
            .accept6("from a peer's published source address", lab.vxlan6FromPeer(
                         inner: fromPod(IPv6Address("fd10:5:5::7")!), src: PacketLab.multihomedSource6), sourceInSubnet: true),
            .drop("from a peer's source address, inner source of another peer", lab.vxlan6FromPeer(
                      inner: fromPod(PacketLab.peerPod6), src: PacketLab.multihomedSource6), .decapDropInnerSource),
        ]
        // Every truncation point of the valid frame: with the payload length left as it was, the
        // frame ends before the length says (or a header is cut before that is read).
        for cut in 14..<valid.count {
            rows.append(.drop("truncated at \(cut)", Array(valid[0..<cut]), .decapDropMalformed))
        }
        // Every truncation point with a matching payload length: each header the classification
        // reads is cut in turn; once the inner IPv6 header is whole the rest is the stack's.
        for cut in 62..<valid.count {
            var frame = Array(valid[0..<cut])
            frame.setBE16(UInt16(cut - 54), at: 18)
            rows.append(cut < 124 ? .drop("cut at \(cut), payload length matching", frame, .decapDropMalformed)
                : .accept6("cut at \(cut), payload length matching", frame, sourceInSubnet: true))
        }
        return rows
    }

    static func contains(_ subnet: IPv6Subnet, _ address: IPv6Address) -> Bool {
        let a = address.bytes, n = subnet.address.bytes
        return (0..<subnet.prefixLength).allSatisfy { bit in (a[bit / 8] ^ n[bit / 8]) & (0x80 >> UInt8(bit % 8)) == 0 }
    }

    @Test func decapFixtureTable() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let rows = PacketFixture6Tests.decapFixtures(lab)
        for row in rows {
            let xdp = try lab.run(.decapXDP, row.input)
            #expect(xdp.verdict == row.xdpVerdict, "xdp: \(row)")
            switch row.xdpOutput {
            case .unchanged: #expect(xdp.output == row.input, "xdp output: \(row)")
            case .stripped6(let inSubnet, let copiesCE):
                var want = lab.stripped6(row.input, sourceInSubnet: inSubnet)
                if copiesCE { want[8 + 14 + 1] |= 0x30 }
                #expect(xdp.output == want, "xdp output: \(row)\n got \(Array(xdp.output.prefix(40)).hex)\nwant \(Array(want.prefix(40)).hex)")
            case .stripped, .strippedCE: Issue.record("an IPv4 expectation in the IPv6 table: \(row)")
            }
            let counter = row.counter == .decapOK ? FXDPCounter.decap6OK : row.counter
            #expect(xdp.moved == [counter: FXDPCount(packets: 1, bytes: UInt64(row.input.count))], "xdp counter: \(row) moved \(xdp.moved)")

            guard row.runsOnTC6 else { continue }
            let tc = try lab.run(.decapCheck, row.input)
            let tcCounter: FXDPCounter = row.counter == .decapOK ? .decap6CheckOK : row.counter
            #expect(tc.verdict == row.tcVerdict, "tc: \(row)")
            #expect(tc.output == row.input, "tc output (the check never modifies): \(row)")
            #expect(tc.moved == [tcCounter: FXDPCount(packets: 1, bytes: UInt64(row.input.count))], "tc counter: \(row) moved \(tc.moved)")
        }
    }

    @Test func ipv6PassesAsBeforeWhenNotConfigured() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let frame = lab.vxlan6FromPeer()
        #expect(try lab.run(.decapXDP, frame).moved == [.decapPassNotIPv4: FXDPCount(packets: 1, bytes: UInt64(frame.count))])
        #expect(try lab.run(.decapCheck, frame).moved == [.decapPassNotIPv4: FXDPCount(packets: 1, bytes: UInt64(frame.count))])
        let out = PacketLab.overlayFrame6(PacketLab.podPacket6())
        let e = try lab.run(.encap6, out)
        #expect(e.verdict == "TC_ACT_OK" && e.output == out && e.moved == [.encapPassDisabled: FXDPCount(packets: 1, bytes: UInt64(out.count))])
        // The IPv4 encap still leaves IPv6 to the kernel, configured or not.
        #expect(try lab.run(.encap, out).moved[.encapPassNotIPv4]?.packets == 1)
    }

    static func encapFixtures() -> [(String, [UInt8], String, FXDPCounter)] {
        let pod = PacketLab.podPacket6()
        let tcp = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: IPProto.tcp,
                                     payload: PacketBuilder.tcp6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, srcPort: 40000, dstPort: 5201,
                                                                 payload: Array(repeating: 0x62, count: 1000)))
        let udp = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: IPProto.udp,
                                     payload: PacketBuilder.udp6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, srcPort: 53, dstPort: 53,
                                                                 payload: [1, 2, 3]))
        let udpNoChecksum = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: IPProto.udp,
                                               payload: PacketBuilder.udp6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, srcPort: 53, dstPort: 53,
                                                                           payload: [1, 2, 3], checksum: false))
        let fragment = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: IPProto.fragment,
                                          payload: PacketBuilder.fragmentHeader6(nextHeader: IPProto.udp, more: true) + Array(repeating: 9, count: 64))
        let sctp = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: 132, payload: Array(repeating: 1, count: 32))
        var version4 = PacketLab.overlayFrame6(pod)
        version4[14] = 0x45
        let to = { (dst: String) in PacketLab.overlayFrame6(PacketLab.podPacket6(dst: IPv6Address(dst)!)) }
        let mtu = Int(PacketLab.overlayMTU6)
        return [
            ("ICMPv6 to a peer's pod", PacketLab.overlayFrame6(pod), "TC_ACT_REDIRECT", .encap6OK),
            ("TCP to a peer's pod", PacketLab.overlayFrame6(tcp), "TC_ACT_REDIRECT", .encap6OK),
            ("UDP to a peer's pod", PacketLab.overlayFrame6(udp), "TC_ACT_REDIRECT", .encap6OK),
            ("exactly flannel-v6's MTU", PacketLab.overlayFrame6(PacketLab.podPacket6(size: mtu - 48)), "TC_ACT_REDIRECT", .encap6OK),
            ("over flannel-v6's MTU", PacketLab.overlayFrame6(PacketLab.podPacket6(size: mtu - 47)), "TC_ACT_OK", .encapPassTooBig),
            ("peer node without a neighbour entry", to("fd10:5:3::4"), "TC_ACT_OK", .encapPassNoNeigh),
            ("peer node with no route", to("fd10:5:9::4"), "TC_ACT_OK", .encapPassFIB),
            ("destination in no peer subnet", to("fd10:7::1"), "TC_ACT_OK", .encapPassNoPeer),
            ("our own subnet is no peer", to("fd10:5:2::1"), "TC_ACT_OK", .encapPassNoPeer),
            ("UDP without checksum: the outer one cannot be derived", PacketLab.overlayFrame6(udpNoChecksum), "TC_ACT_OK", .encap6PassCsum),
            ("a fragment", PacketLab.overlayFrame6(fragment), "TC_ACT_OK", .encap6PassCsum),
            ("another protocol (SCTP)", PacketLab.overlayFrame6(sctp), "TC_ACT_OK", .encap6PassCsum),
            ("trailing bytes after the payload", PacketLab.overlayFrame6(pod + [0, 0, 0, 0]), "TC_ACT_OK", .encap6PassCsum),
            ("IPv4 on flannel-v6", PacketLab.overlayFrame6(PacketLab.podPacket(), type: EtherType.ipv4), "TC_ACT_OK", .encap6PassNotIPv6),
            ("ARP", PacketLab.overlayFrame6(Array(repeating: 0, count: 28), type: EtherType.arp), "TC_ACT_OK", .encap6PassNotIPv6),
            ("version 4 in an IPv6 frame", version4, "TC_ACT_SHOT", .encapDropMalformed),
        ]
    }

    @Test func encapFixtureTable() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let model = FuzzTests.reference(lab)
        for (description, input, verdict, counter) in PacketFixture6Tests.encapFixtures() {
            let r = try lab.run(.encap6, input)
            #expect(r.verdict == verdict, "\(description)")
            #expect(r.moved == [counter: FXDPCount(packets: 1, bytes: UInt64(input.count))], "counter: \(description) moved \(r.moved)")
            let expected = model.encap6(input)
            #expect(expected.code == counter.rawValue, "the model agrees: \(description)")
            if let problem = ReferenceDatapath.mismatch(expected.output, input: input, actual: r.output) {
                Issue.record("\(description): \(problem)")
            }
            guard counter == .encap6OK else { continue }
            // The inner packet is right, so the derived checksum is the datagram's own.
            let src = IPv6Address(bytes: Array(r.output[22..<38]))!, dst = IPv6Address(bytes: Array(r.output[38..<54]))!
            #expect(Checksum.udp6Valid(r.output[54...], src: src, dst: dst), "UDP checksum over the whole datagram: \(description)")
            #expect(dst == PacketLab.peer6 && src == PacketLab.us6 && Array(r.output[0..<6]) == PacketLab.peerUnderlayMAC.bytes)
            #expect(r.output[21] == 64, "hop limit 64 by default")
        }
    }

    @Test func outerTrafficClassCarriesOnlyTheInnerECN() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        for (inner, outer) in [(UInt8(0x00), UInt8(0x00)), (0xb8, 0x00), (0x01, 0x01), (0x02, 0x02), (0x03, 0x02), (0xbb, 0x02)] {
            let r = try lab.run(.encap6, PacketLab.overlayFrame6(PacketLab.podPacket6(trafficClass: inner)))
            #expect(r.verdict == "TC_ACT_REDIRECT")
            let trafficClass = (r.output[14] & 0x0f) << 4 | r.output[15] >> 4
            #expect(trafficClass == outer && r.output[15] & 0x0f == 0 && r.output[16] == 0 && r.output[17] == 0,
                    "inner traffic class \(inner) → outer \(outer), flow label 0")
        }
    }

    @Test func outerSourcePortSpreadsFlowsAndHopLimitIsTheConfiguredOne() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        var ports: [UInt16] = []
        for flow in 0..<256 {
            let udp = PacketBuilder.ipv6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6, nextHeader: IPProto.udp,
                                         payload: PacketBuilder.udp6(src: PacketLab.ourPod6, dst: PacketLab.peerPod6,
                                                                     srcPort: UInt16(20000 + flow), dstPort: 53, payload: [1, 2, 3]))
            let r = try lab.run(.encap6, PacketLab.overlayFrame6(udp))
            #expect(r.verdict == "TC_ACT_REDIRECT")
            ports.append(r.output.be16(at: 54))
        }
        #expect(PacketFixtureTests.sourcePortSpreadProblem(ports) == nil, "\(ports.prefix(32))")
        try lab.bpf.setOuterHopLimit(99)
        #expect(try lab.run(.encap6, PacketLab.overlayFrame6(PacketLab.podPacket6())).output[21] == 99)
        #expect(try lab.bpf.readConfig6()?.outerHopLimit == 99)
        try lab.bpf.setOuterHopLimit(0)
        #expect(try lab.run(.encap6, PacketLab.overlayFrame6(PacketLab.podPacket6())).output[21] == 64)
    }

    @Test func vxlanToTheLeasesPublicIPv6IsOursWhenItIsLocal() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let publicIP = IPv6Address("fd00:60::200")!
        let toPublic = lab.vxlan6FromPeer(dst: publicIP)
        #expect(try lab.run(.decapCheck, toPublic).moved[.decapPassOtherHost]?.packets == 1)
        var config = lab.config6!
        config.publicIP = publicIP
        try lab.bpf.writeConfig6(config)
        #expect(try lab.bpf.readConfig6() == config)
        #expect(try lab.run(.decapCheck, toPublic).moved[.decap6CheckOK]?.packets == 1)
        #expect(try lab.run(.decapXDP, toPublic).moved[.decap6OK]?.packets == 1)
    }

    @Test func innerSourceCheckSwitchesBothFamilies() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let spoofed = lab.vxlan6FromPeer(inner: PacketLab.innerFrame6(PacketLab.podPacket6(dst: PacketLab.ourPod6, src: IPv6Address("fd10:5:3::4")!)))
        #expect(try lab.run(.decapCheck, spoofed).moved[.decapDropInnerSource]?.packets == 1)
        var config = lab.config
        config.innerSourceCheck = false
        try lab.bpf.writeConfig(config)
        #expect(try lab.run(.decapCheck, spoofed).moved[.decap6CheckOK]?.packets == 1)
        #expect(try lab.run(.decapCheck, lab.vxlan6FromPeer(src: PacketLab.stranger6)).moved[.decapDropNotPeer]?.packets == 1)
    }

    @Test func clearingTheIPv6ConfigPassesIPv6AsBefore() throws {
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        let frame = lab.vxlan6FromPeer()
        #expect(try lab.run(.decapCheck, frame).moved[.decap6CheckOK]?.packets == 1)
        try lab.bpf.writeConfig6(nil)
        #expect(try lab.bpf.readConfig6() == nil)
        #expect(try lab.run(.decapCheck, frame).moved[.decapPassNotIPv4]?.packets == 1)
        #expect(try lab.run(.encap6, PacketLab.overlayFrame6(PacketLab.podPacket6())).moved[.encapPassDisabled]?.packets == 1)
    }

    @Test func ipv6PeerTableKeepsNodeCountsConsistentAndMapsReadWithNames() throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let bpf = try FlannelBPF(bpffs: fs.path)
        let table = try bpf.ipv6PeerTable()
        let nodeA = IPv6Address("fd00:1::1")!, nodeB = IPv6Address("fd00:1::2")!, source = IPv6Address("fd00:2::1")!
        let mac = MACAddress("02:00:00:00:06:0a")!
        let p1 = BPFPeer6(subnet: IPv6Subnet(address: IPv6Address("fd10:5:1::")!, prefixLength: 64)!, publicIP: nodeA, vtepMAC: mac)
        let p2 = BPFPeer6(subnet: IPv6Subnet(address: IPv6Address("fd10:5:2::")!, prefixLength: 64)!, publicIP: nodeA, vtepMAC: mac,
                          sourceIP: source)
        try table.upsert(p1)
        try table.upsert(p2)
        try table.upsert(p2) // idempotent
        #expect(try table.acceptedNodes() == [nodeA: 2, source: 1])
        var moved = p2
        moved.publicIP = nodeB
        moved.sourceIP = nil
        try table.upsert(moved) // the subnet moves to another node, which sends from its PublicIPv6
        #expect(try table.acceptedNodes() == [nodeA: 1, nodeB: 1])
        #expect(try table.currentPeers() == [p1, moved])
        #expect(throws: DataplaneError.self) { try table.upsert(BPFPeer6(subnet: p1.subnet, publicIP: nodeA, vtepMAC: .zero)) }
        #expect(throws: DataplaneError.self) { try table.upsert(BPFPeer6(subnet: p1.subnet, publicIP: IPv6Address("::")!, vtepMAC: mac)) }
        // Drift: a node entry deleted, a stray one added; repair restores the counts from the peers.
        _ = try bpf.nodes6.delete(BPFIPv6PeerTable.nodeKey(nodeB))
        try bpf.nodes6.update(BPFIPv6PeerTable.nodeKey(IPv6Address("fd00:1::99")!), fxdp_node_value(subnets: 5))
        #expect(try table.repairNodes() == 2)
        #expect(try table.acceptedNodes() == [nodeA: 1, nodeB: 1])

        // An operator reads the pinned IPv6 maps with BTF field names.
        try bpf.writeConfig6(NodeConfig6(nodeIP: nodeA, vtepMAC: mac, overlayIfindex: 7, overlayMTU: 1430))
        let pins = fs.path + "/" + FlannelBPF.pinFolderName
        let peers = try sh(["bpftool", "map", "dump", "pinned", pins + "/" + FXDP_MAP_PEERS6])
        #expect(peers.contains("\"node_ip\"") && peers.contains("\"vtep_mac\"") && peers.contains("\"prefixlen\": 64"), "\(peers)")
        let config = try sh(["bpftool", "map", "dump", "pinned", pins + "/" + FXDP_MAP_CONFIG6])
        #expect(config.contains("\"overlay_ifindex\": 7") && config.contains("\"overlay_mtu\": 1430"), "\(config)")
        #expect(try sh(["bpftool", "map", "dump", "pinned", pins + "/" + FXDP_MAP_NODES6]).contains("\"subnets\": 1"))

        try table.remove(p1)
        try table.remove(moved)
        #expect(try table.currentPeers().isEmpty && table.acceptedNodes().isEmpty)
    }

    @Test func ipv6OnlyNodeHasNoIPv4Address() throws {
        // flannel allows IPv6-only networks: the shared settings carry no IPv4 address and no IPv4
        // peer exists; IPv4 VXLAN is then nobody's.
        let lab = try PacketLab(ipv6: true)
        defer { lab.close() }
        var config = lab.config
        config.nodeIP = IPv4Address(0)
        try lab.bpf.writeConfig(config)
        let table = try lab.bpf.peerTable()
        for peer in try table.currentPeers() { try table.remove(peer) }
        #expect(try lab.run(.decapCheck, lab.vxlan6FromPeer()).moved[.decap6CheckOK]?.packets == 1)
        #expect(try lab.run(.encap6, PacketLab.overlayFrame6(PacketLab.podPacket6())).moved[.encap6OK]?.packets == 1)
        #expect(try lab.run(.decapCheck, lab.vxlanFromPeer()).moved[.decapPassOtherHost]?.packets == 1)
    }
}

extension DecapFixture {
    static func accept6(_ d: String, _ input: [UInt8], sourceInSubnet: Bool, copiesCE: Bool = false) -> DecapFixture {
        DecapFixture(description: d, input: input, xdpVerdict: "XDP_PASS", tcVerdict: "TC_ACT_OK",
                     xdpOutput: .stripped6(sourceInSubnet: sourceInSubnet, copiesCE: copiesCE), counter: .decapOK)
    }

    /// BPF_PROG_TEST_RUN refuses skb input whose IPv6 header is shorter than 40 bytes.
    var runsOnTC6: Bool { input.count >= 54 }
}
