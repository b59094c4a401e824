// TUN offloads (config.offloads): with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4) the
// kernel hands the TUN whole TCP super-packets (up to 64 KB, one virtio_net_hdr in front saying
// "TCPv4, cut at gso_size") and packets whose L4 checksum is still partial. This file finishes
// those in userspace:
//  - a partial checksum (NEEDS_CSUM) is completed: the field already holds the pseudo-header sum,
//    so the one's-complement sum from csum_start to the end is folded, inverted and stored;
//  - a TCP super-packet is cut into segments of min(gso_size, MTU − headers) bytes of payload, each
//    with its own IPv4 header (total length, id + i, checksum) and TCP header (seq + offset, FIN/PSH
//    only on the last, CWR only on the first, full checksum), each prefixed with the encapsulation;
//    the segments are laid out back to back and sent with UDP GSO (UDP_SEGMENT), at most 64
//    segments and 65 000 bytes per send, so the kernel cuts one sendmmsg entry into many datagrams.
// The ideas are those of the Linux GSO code and of userspace WireGuard's TUN offload support.
import CSystemShims

/// The 10-byte struct virtio_net_hdr (native endian, as TUN uses by default).
struct VirtioNetHeader {
    var flags: UInt8
    var gsoType: UInt8
    var headerLength: UInt16
    var gsoSize: UInt16
    var checksumStart: UInt16
    var checksumOffset: UInt16

    static let length = 10
    static let none = VirtioNetHeader(flags: 0, gsoType: 0, headerLength: 0, gsoSize: 0, checksumStart: 0, checksumOffset: 0)
    static let flagNeedsChecksum: UInt8 = 1
    static let gsoTCPv4: UInt8 = 1
    static let gsoECN: UInt8 = 0x80

    init(flags: UInt8, gsoType: UInt8, headerLength: UInt16, gsoSize: UInt16, checksumStart: UInt16, checksumOffset: UInt16) {
        self.flags = flags
        self.gsoType = gsoType
        self.headerLength = headerLength
        self.gsoSize = gsoSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
    }

    init(_ p: UnsafeRawPointer) {
        flags = p.load(fromByteOffset: 0, as: UInt8.self)
        gsoType = p.load(fromByteOffset: 1, as: UInt8.self)
        headerLength = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        gsoSize = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        checksumStart = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        checksumOffset = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
    }

    var isSegmented: Bool { gsoType & ~VirtioNetHeader.gsoECN != 0 }
    var needsChecksum: Bool { flags & VirtioNetHeader.flagNeedsChecksum != 0 }

    /// Completes a partial L4 checksum in place; ignores a header pointing outside the packet.
    static func completeChecksum(_ packet: UnsafeMutableRawPointer, length: Int, header: VirtioNetHeader) {
        let start = Int(header.checksumStart)
        let field = start + Int(header.checksumOffset)
        guard start < length, field + 2 <= length else { return }
        let sum = Wire.sum(packet + start, length - start)
        Wire.store16(packet, field, Wire.finish(sum))
    }
}

/// Cuts TCP super-packets into encapsulated segments in a buffer of its own. Owned by one worker.
final class Segmenter {
    static let maxSendsPerPacket = 16
    static let maxSegmentsPerSend = 64
    static let maxBytesPerSend = 65_000
    /// Room for the worst case of one 64 KB super-packet (64-byte segments) per batch entry.
    private static let perPacketRoom = 160 << 10
    private let capacity: Int

    private let framing: Framing
    private let mtu: Int
    private let buffer: UnsafeMutableRawPointer
    private var used = 0

    init(framing: Framing, mtu: Int, batch: Int) {
        self.framing = framing
        self.mtu = mtu
        capacity = max(batch, 2) * Segmenter.perPacketRoom
        buffer = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { buffer.deallocate() }

    /// Forgets the segments of the previous batch (call after it was sent).
    func reset() { used = 0 }

    /// Whether a super-packet of `length` bytes fits in what is left of the buffer.
    func hasRoom(for length: Int) -> Bool {
        // Worst case: 64 KB / 64-byte segments, each with 22 + 120 bytes of headers.
        used + length + (length / 64 + 1) * (framing.encapLength + 120) <= capacity
    }

    /// Writes the segments of the TCPv4 super-packet at `packet` and fills `out` with the sends;
    /// returns how many entries it filled (0 when the packet was dropped and counted).
    func segment(
        packet: UnsafeMutableRawPointer, length: Int, header: VirtioNetHeader, target: PeerTarget,
        into out: UnsafeMutablePointer<shim_dgram>, tally: inout Tally
    ) -> Int {
        var cursor = ByteCursor(packet, end: length)
        guard let ip = cursor.take(20) else { tally.drop(.malformed); return 0 }
        let ipHeaderLength = Int(cursor.u8(ip) & 0x0f) * 4
        guard cursor.u8(ip + 9) == 6, header.gsoType & ~VirtioNetHeader.gsoECN == VirtioNetHeader.gsoTCPv4,
              cursor.take(ipHeaderLength - 20) != nil, let tcp = cursor.take(20)
        else { tally.drop(.malformed); return 0 }
        let tcpHeaderLength = Int(cursor.u8(tcp + 12) >> 4) * 4
        guard tcpHeaderLength >= 20, cursor.take(tcpHeaderLength - 20) != nil else { tally.drop(.malformed); return 0 }
        let headersLength = ipHeaderLength + tcpHeaderLength
        let payloadLength = length - headersLength
        let mss = min(Int(header.gsoSize), mtu - headersLength)
        guard mss >= 64, payloadLength > 0,
              (payloadLength + mss - 1) / mss <= Segmenter.maxSendsPerPacket * Segmenter.maxSegmentsPerSend,
              hasRoom(for: length)
        else { tally.drop(.malformed); return 0 }

        let encap = framing.encapLength
        let fullSegment = encap + headersLength + mss
        let perSend = max(1, min(Segmenter.maxSegmentsPerSend, Segmenter.maxBytesPerSend / fullSegment))
        let ipID = Wire.load16(packet, 4)
        let sequence = Wire.load32(packet, ipHeaderLength + 4)
        let tcpFlags = packet.load(fromByteOffset: ipHeaderLength + 13, as: UInt8.self)
        let source = Wire.load32(packet, 12)
        let destination = Wire.load32(packet, 16)
        let pseudo = UInt64(source >> 16) + UInt64(source & 0xffff) + UInt64(destination >> 16)
            + UInt64(destination & 0xffff) + 6

        var sends = 0
        var segmentsInSend = 0
        var sendStart = buffer + used
        var payloadOffset = 0
        var index = 0
        while payloadOffset < payloadLength {
            let chunk = min(mss, payloadLength - payloadOffset)
            let isLast = payloadOffset + chunk == payloadLength
            let out_ = buffer + used
            framing.writeEncap(out_, peerMAC: target.vtepMAC)
            let seg = out_ + encap
            seg.copyMemory(from: packet, byteCount: headersLength)
            (seg + headersLength).copyMemory(from: packet + headersLength + payloadOffset, byteCount: chunk)
            // IPv4: length, id, checksum.
            Wire.store16(seg, 2, UInt16(headersLength + chunk))
            Wire.store16(seg, 4, ipID &+ UInt16(truncatingIfNeeded: index))
            Wire.store16(seg, 10, 0)
            Wire.store16(seg, 10, Wire.finish(Wire.sum(seg, ipHeaderLength)))
            // TCP: sequence, flags, checksum.
            let tcpStart = seg + ipHeaderLength
            Wire.store32(tcpStart, 4, sequence &+ UInt32(payloadOffset))
            var flags = tcpFlags
            if !isLast { flags &= ~0x09 }  // FIN, PSH only on the last segment
            if index > 0 { flags &= ~0x80 }  // CWR only on the first
            tcpStart.storeBytes(of: flags, toByteOffset: 13, as: UInt8.self)
            Wire.store16(tcpStart, 16, 0)
            let tcpLength = tcpHeaderLength + chunk
            let sum = Wire.sum(tcpStart, tcpLength, into: pseudo + UInt64(tcpLength))
            Wire.store16(tcpStart, 16, Wire.finish(sum))

            used += encap + headersLength + chunk
            payloadOffset += chunk
            index += 1
            segmentsInSend += 1
            if segmentsInSend == perSend || isLast {
                out[sends] = shim_dgram(
                    data: sendStart.assumingMemoryBound(to: UInt8.self),
                    len: UInt32(buffer + used - sendStart), addr: target.nodeAddressRaw, port: framing.port,
                    segment: segmentsInSend > 1 ? UInt16(fullSegment) : 0, truncated: 0, tos: Wire.outerTOS(packet), _pad: 0)
                sends += 1
                segmentsInSend = 0
                sendStart = buffer + used
            }
        }
        tally.bump(Counter.gsoPackets)
        tally.bump(Counter.gsoSegments, by: UInt64(index))
        return sends
    }
}
