// Pure tests of the parsing, lookup, ICMP and segmentation code (no root needed).
import CBPF
import CSystemShims
import Glibc
import Logging
import NetTypes
import Testing
@testable import UserspaceDataplane

@Suite struct PacketFormatTests {
    let ourMAC = MACAddress("02:00:00:00:00:01")!
    let peerMAC = MACAddress("02:00:00:00:00:02")!
    var framing: Framing { .init(.vxlan(vni: 1, port: 8472, localVTEPMAC: ourMAC)) }

    func decap(_ bytes: [UInt8], _ f: Framing) -> Framing.Decap {
        bytes.withUnsafeBytes { raw in
            f.decapsulate(raw.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, length: raw.count)
        }
    }

    func reason(_ d: Framing.Decap) -> UserspaceDropReason? {
        if case .drop(let r) = d { return r }
        return nil
    }

    @Test func longestPrefixWins() {
        let wide = Peer(subnet: IPv4Subnet(cidr: "10.5.0.0/16")!, publicIP: IPv4Address("192.168.1.1")!, vtepMAC: peerMAC)
        let narrow = Peer(subnet: IPv4Subnet(cidr: "10.5.3.0/24")!, publicIP: IPv4Address("192.168.1.2")!, vtepMAC: ourMAC)
        let other = Peer(subnet: IPv4Subnet(cidr: "10.5.9.0/24")!, publicIP: IPv4Address("192.168.1.3")!, vtepMAC: ourMAC)
        let s = PeerSnapshot(peers: [wide.subnet: wide, narrow.subnet: narrow, other.subnet: other])
        #expect(s.lookup(IPv4Address("10.5.3.7")!.value)?.nodeAddressRaw == UInt32(bigEndian: IPv4Address("192.168.1.2")!.value))
        #expect(s.lookup(IPv4Address("10.5.9.250")!.value)?.nodeAddressRaw == UInt32(bigEndian: IPv4Address("192.168.1.3")!.value))
        #expect(s.lookup(IPv4Address("10.5.4.1")!.value)?.nodeAddressRaw == UInt32(bigEndian: IPv4Address("192.168.1.1")!.value))
        #expect(s.lookup(IPv4Address("10.5.4.1")!.value)?.vtepMAC == 0x0200_0000_0002)
        #expect(s.lookup(IPv4Address("10.6.0.1")!.value) == nil)
        #expect(s.isPeerNode(IPv4Address("192.168.1.3")!.value))
        #expect(!s.isPeerNode(IPv4Address("192.168.1.4")!.value))
        #expect(PeerSnapshot(peers: [:]).lookup(1) == nil)
    }

    @Test func decapsulationVerdicts() {
        let inner = ipv4Packet(source: IPv4Address("10.5.2.2")!, destination: IPv4Address("10.5.1.2")!)
        let good = vxlanPayload(vni: 1, destinationMAC: ourMAC, sourceMAC: peerMAC, inner: inner)
        guard case .deliver(let offset, let length) = decap(good, framing) else {
            Issue.record("valid datagram not delivered")
            return
        }
        #expect(offset == 22 && length == inner.count)
        // Ethernet padding after the IPv4 packet is cut at the total length.
        if case .deliver(_, let padded) = decap(good + [0, 0, 0, 0], framing) { #expect(padded == inner.count) }

        #expect(reason(decap([], framing)) == .malformed)
        #expect(reason(decap(Array(good.prefix(7)), framing)) == .malformed)
        #expect(reason(decap(Array(good.prefix(20)), framing)) == .malformed)
        #expect(reason(decap(Array(good.prefix(30)), framing)) == .malformed)
        #expect(reason(decap(vxlanPayload(vni: 2, destinationMAC: ourMAC, sourceMAC: peerMAC, inner: inner), framing)) == .badVNI)
        #expect(reason(decap(vxlanPayload(vni: 1, destinationMAC: ourMAC, sourceMAC: peerMAC, inner: inner, flags: 0), framing)) == .badVNI)
        #expect(reason(decap(vxlanPayload(vni: 1, destinationMAC: peerMAC, sourceMAC: peerMAC, inner: inner), framing)) == .innerNotOurs)
        var ipv6 = good
        ipv6[20] = 0x86; ipv6[21] = 0xdd
        #expect(reason(decap(ipv6, framing)) == .innerNotIPv4)
        var badIHL = good
        badIHL[22] = 0x44
        #expect(reason(decap(badIHL, framing)) == .malformed)
        var longTotal = good
        longTotal[24] = 0x05  // total length 1280+ > bytes present
        #expect(reason(decap(longTotal, framing)) == .malformed)
        var version6 = good
        version6[22] = 0x65
        #expect(reason(decap(version6, framing)) == .innerNotIPv4)

        let udp = Framing(.udp(port: 8285))
        if case .deliver(let o, let l) = decap(inner, udp) { #expect(o == 0 && l == inner.count) } else { Issue.record("udp framing") }
        #expect(reason(decap([1, 2, 3], udp)) == .malformed)
        #expect(reason(decap(good, udp)) == .malformed)
    }

    @Test func randomBytesNeverTrap() {
        var generator = SystemRandomNumberGenerator()
        let udp = Framing(.udp(port: 8285))
        var delivered = 0
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...120, using: &generator)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if length > 22, Bool.random() {  // make some get past the first checks
                bytes.replaceSubrange(0..<22, with: vxlanPayload(vni: 1, destinationMAC: ourMAC, sourceMAC: peerMAC, inner: []))
                bytes[22] = 0x45
            }
            if case .deliver(let o, let l) = decap(bytes, framing) { delivered += 1; #expect(o + l <= length) }
            if case .deliver(let o, let l) = decap(bytes, udp) { #expect(o + l <= length) }
        }
        #expect(delivered < 20_000)
    }

    @Test func icmpNetUnreachableIsWellFormedAndLimited() {
        var responder = ICMPResponder(source: IPv4Address("10.5.1.0")!.value, ratePerSecond: 3)
        var tally = Tally()
        let offender = ipv4Packet(source: IPv4Address("10.5.1.2")!, destination: IPv4Address("10.5.99.2")!, payloadLength: 40)
        var composed = 0
        for _ in 0..<10 {
            offender.withUnsafeBytes { raw in
                if responder.compose(to: raw.baseAddress!, headerLength: 20, totalLength: offender.count,
                                     code: ICMPResponder.codeNetUnreachable, mtu: 0, tally: &tally) != nil { composed += 1 }
            }
        }
        #expect(composed == 3)
        #expect(tally.values[Counter.icmpRateLimited] == 7)
        let reply = Array(responder.lastReply)
        #expect(reply.count == 56)  // 20 + 8 + 20 + 8
        #expect(Array(reply[12..<16]) == [10, 5, 1, 0])
        #expect(Array(reply[16..<20]) == [10, 5, 1, 2])
        #expect(reply[9] == 1 && reply[20] == 3 && reply[21] == 0)
        #expect(Wire.finish(Wire.sum(reply, 20)) == 0)
        #expect(Wire.finish(Wire.sum(Array(reply[20..<56]), 36)) == 0)
        #expect(Array(reply[28..<56]) == Array(offender[0..<28]))

        // Never an error about an ICMP error.
        var errorOffender = offender
        errorOffender[20] = 3
        var quiet = ICMPResponder(source: 1, ratePerSecond: 100)
        var tally2 = Tally()
        let none = errorOffender.withUnsafeBytes { raw in
            quiet.compose(to: raw.baseAddress!, headerLength: 20, totalLength: errorOffender.count,
                          code: ICMPResponder.codeNetUnreachable, mtu: 0, tally: &tally2)
        }
        #expect(none == nil)
    }

    /// A TCP super-packet cut by the segmenter comes back as MTU-size segments with valid
    /// checksums, contiguous sequence numbers and the original payload.
    @Test func segmenterCutsTCPSuperPackets() throws {
        let payloadLength = 64_000
        let mss = 1_400
        let mtu = 1_450
        var packet: [UInt8] = [0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 5, 1, 2, 10, 5, 2, 2]
        let total = 20 + 32 + payloadLength
        packet[2] = UInt8(total >> 8); packet[3] = UInt8(total & 0xff)
        // TCP: ports, seq 0xfffff000 (wraps), ack, data offset 8 (32 bytes), flags PSH|ACK|FIN
        packet += [0x30, 0x39, 0x14, 0x51, 0xff, 0xff, 0xf0, 0x00, 0, 0, 0, 1, 0x80, 0x19, 0x01, 0xf6, 0, 0, 0, 0]
        packet += [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]  // NOP NOP timestamps
        let payload = (0..<payloadLength).map { UInt8(truncatingIfNeeded: $0 * 7) }
        packet += payload
        let f = Framing(.vxlan(vni: 1, port: 8472, localVTEPMAC: ourMAC))
        let segmenter = Segmenter(framing: f, mtu: mtu, batch: 4)
        var tally = Tally()
        let dgrams = UnsafeMutablePointer<shim_dgram>.allocate(capacity: Segmenter.maxSendsPerPacket)
        defer { dgrams.deallocate() }
        let header = VirtioNetHeader(flags: 1, gsoType: 1, headerLength: 52, gsoSize: UInt16(mss), checksumStart: 20, checksumOffset: 16)
        let target = PeerTarget(nodeAddressRaw: 0x0100_a8c0, vtepMAC: PeerSnapshot.pack(peerMAC), nodeAddress: 0xc0a8_0001, sourceAddress: 0)
        let sends = packet.withUnsafeMutableBytes { raw in
            segmenter.segment(packet: raw.baseAddress!, length: raw.count, header: header, target: target, into: dgrams, tally: &tally)
        }
        #expect(sends == 2)  // 46 segments of 1472 bytes, at most 44 per 65 000-byte send
        var reassembled: [UInt8] = []
        var expectedSeq: UInt32 = 0xffff_f000
        var segments = 0
        for i in 0..<sends {
            let d = dgrams[i]
            let step = d.segment > 0 ? Int(d.segment) : Int(d.len)
            var offset = 0
            while offset < Int(d.len) {
                let size = min(step, Int(d.len) - offset)
                let seg = UnsafeRawPointer(d.data! + offset)
                offset += size
                segments += 1
                #expect(size <= 22 + mtu)
                #expect(Wire.load32(seg, 0) == 0x0800_0000 && Wire.load32(seg, 4) == 0x100)
                let ip = seg + 22
                #expect(Int(Wire.load16(ip, 2)) == size - 22)
                #expect(Wire.finish(Wire.sum(ip, 20)) == 0)
                let tcpLength = size - 22 - 20
                let pseudo = Wire.sum(ip + 12, 8) + 6 + UInt64(tcpLength)
                #expect(Wire.finish(Wire.sum(ip + 20, tcpLength, into: pseudo)) == 0)
                #expect(Wire.load32(ip + 20, 4) == expectedSeq)
                let flags = ip.load(fromByteOffset: 33, as: UInt8.self)
                let chunk = tcpLength - 32
                expectedSeq &+= UInt32(chunk)
                let last = reassembled.count + chunk == payloadLength
                #expect((flags & 0x09 != 0) == last)
                reassembled += UnsafeRawBufferPointer(start: ip + 52, count: chunk)
            }
        }
        #expect(segments == (payloadLength + (mtu - 52) - 1) / (mtu - 52))
        #expect(reassembled == payload)
        #expect(tally.values[Counter.gsoPackets] == 1)
    }

    @Test func partialChecksumIsCompleted() {
        // UDP packet 10.0.0.1 → 10.0.0.2 with the pseudo-header sum in the checksum field.
        var p: [UInt8] = [0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
        p += [0x04, 0xd2, 0x16, 0x2e, 0, 12, 0, 0, 1, 2, 3, 4]
        let pseudo = Wire.sum(Array(p[12..<20]), 8) + 17 + 12
        var folded = pseudo
        while folded >> 16 != 0 { folded = (folded & 0xffff) + (folded >> 16) }
        p[26] = UInt8(folded >> 8); p[27] = UInt8(folded & 0xff)
        let header = VirtioNetHeader(flags: 1, gsoType: 0, headerLength: 0, gsoSize: 0, checksumStart: 20, checksumOffset: 6)
        p.withUnsafeMutableBytes { VirtioNetHeader.completeChecksum($0.baseAddress!, length: $0.count, header: header) }
        let verify = Wire.sum(Array(p[20..<32]), 12, into: pseudo)
        #expect(Wire.finish(verify) == 0)
    }

    @Test func configValidation() {
        let mac = MACAddress.randomLocal()
        var c = UserspaceConfig(
            encapsulation: .vxlan(vni: 1, port: 8472, localVTEPMAC: mac), localIP: IPv4Address("192.168.1.1")!,
            tunName: "flannel.1", mtu: 1450, icmpSourceIP: IPv4Address("10.5.1.0")!)
        #expect(c.validationProblems().isEmpty)
        c.tunName = "a-name-much-too-long"
        c.encapsulation = .vxlan(vni: 1 << 24, port: 8472, localVTEPMAC: MACAddress("01:00:5e:00:00:01")!)
        c.queues = 0
        #expect(c.validationProblems().count == 4)
        #expect(throws: UserspaceError.self) { try UserspaceDataplane(config: c, logger: .init(label: "t")) }
    }
}

@Suite struct PartialChecksumRepairTests {
    func tcpPacket(partial: Bool) -> [UInt8] {
        var p: [UInt8] = [0x45, 0, 0, 44, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 5, 2, 2, 10, 5, 1, 2]
        p += [0x14, 0x51, 0x30, 0x39, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3, 4]
        let pseudo = Wire.sum(Array(p[12..<20]), 8) + 6 + 24
        var folded = pseudo
        while folded >> 16 != 0 { folded = (folded & 0xffff) + (folded >> 16) }
        if partial {
            p[36] = UInt8(folded >> 8); p[37] = UInt8(folded & 0xff)
        } else {
            let c = Wire.finish(Wire.sum(Array(p[20...]), 24, into: pseudo))
            p[36] = UInt8(c >> 8); p[37] = UInt8(c & 0xff)
        }
        return p
    }

    @Test func partialInnerChecksumIsCompletedAndRealOneKept() {
        var partial = tcpPacket(partial: true)
        let full = tcpPacket(partial: false)
        partial.withUnsafeMutableBytes { Wire.repairPartialChecksum($0.baseAddress!, headerLength: 20, totalLength: 44) }
        #expect(partial == full)
        var untouched = full
        untouched.withUnsafeMutableBytes { Wire.repairPartialChecksum($0.baseAddress!, headerLength: 20, totalLength: 44) }
        #expect(untouched == full)
    }
}

@Suite struct CoalescerTests {
    /// TCP segment 10.5.1.2:5000 → 10.5.2.2:80 with `payload` bytes at `sequence`, timestamps option.
    func segment(sequence: UInt32, payload: [UInt8], flags: UInt8 = 0x10) -> [UInt8] {
        let total = 20 + 32 + payload.count
        var p: [UInt8] = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 1, 0x40, 0, 63, 6, 0, 0, 10, 5, 1, 2, 10, 5, 2, 2]
        p += [0x13, 0x88, 0, 80] + withUnsafeBytes(of: sequence.bigEndian) { Array($0) } + [0, 0, 0, 1, 0x80, flags, 0x01, 0x00, 0, 0, 0, 0]
        p += [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]
        return p + payload
    }

    @Test func consecutiveSegmentsBecomeOneGSOWrite() throws {
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let coalescer = Coalescer(tunFD: fds[1], vnetHeaderLength: 10)
        var tally = Tally()
        var errors = ErrorOnce()
        let logger = Logger(label: "t")
        let chunks = (0..<3).map { i in [UInt8](repeating: UInt8(i + 1), count: 1000) } + [[UInt8](repeating: 9, count: 200)]
        var sequence: UInt32 = 0xffff_ff00
        for (i, chunk) in chunks.enumerated() {
            var packet = [UInt8](repeating: 0, count: 10) + segment(sequence: sequence, payload: chunk, flags: i == 3 ? 0x18 : 0x10)
            sequence &+= UInt32(chunk.count)
            packet.withUnsafeMutableBytes { raw in
                coalescer.offer(raw.baseAddress! + 10, totalLength: raw.count - 10, tally: &tally, errors: &errors, logger: logger)
            }
        }
        // A SYN is never merged: it flushes the pending run first.
        var syn = [UInt8](repeating: 0, count: 10) + segment(sequence: 1, payload: [], flags: 0x02)
        syn.withUnsafeMutableBytes { raw in
            coalescer.offer(raw.baseAddress! + 10, totalLength: raw.count - 10, tally: &tally, errors: &errors, logger: logger)
        }
        coalescer.flush(tally: &tally, errors: &errors, logger: logger)
        var out = [UInt8](repeating: 0, count: 8192)
        let n = read(fds[0], &out, out.count)
        let merged = 10 + 52 + 3200
        #expect(n == merged + 10 + 52)
        #expect(Array(out[0..<10]) == [1, 1, 52, 0, 0xe8, 0x03, 20, 0, 16, 0])  // NEEDS_CSUM, TCPv4, hdr 52, gso 1000
        let ip = Array(out[10..<merged])
        #expect(Int(ip[2]) << 8 | Int(ip[3]) == 3252)
        #expect(Wire.finish(Wire.sum(ip, 20)) == 0)
        #expect(ip[33] == 0x18)  // the PSH of the last segment
        #expect(Array(ip[52...]) == chunks.flatMap { $0 })
        #expect(Array(ip[24..<28]) == [0xff, 0xff, 0xff, 0x00])
        #expect(tally.values[Counter.groPackets] == 1 && tally.values[Counter.groSegments] == 4)
        #expect(tally.values[Counter.rxPackets] == 5)
        #expect(out[merged + 10 + 33] == 0x02)
    }
}

@Suite struct CounterExpositionTests {
    @Test func prometheusTextListsEveryReason() {
        var c = UserspaceCounters()
        c.txPackets = 5
        c.drops[.notPeer] = 2
        let text = c.prometheusText()
        #expect(text.contains("flanneld_xdp_userspace_packets_total{direction=\"tx\"} 5\n"))
        #expect(text.contains("flanneld_xdp_userspace_drops_total{reason=\"not_peer\"} 2\n"))
        #expect(text.contains("flanneld_xdp_userspace_drops_total{reason=\"inner_not_ours\"} 0\n"))
        #expect(UserspaceDropReason.allCases.count == Set(UserspaceDropReason.allCases.map(\.name)).count)
    }
}
