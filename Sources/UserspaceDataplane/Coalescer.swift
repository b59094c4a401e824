// Receive-side TCP coalescing for a TUN opened with IFF_VNET_HDR (config.offloads): consecutive
// in-order segments of one TCP flow found in a receive batch are glued into one super-packet and
// written into the TUN with a virtio_net_hdr (TCPv4, gso_size = the segment size, checksum partial),
// so the kernel forwards one GSO packet to the pod instead of up to 44 small ones — the same idea as
// the kernel's GRO, and as userspace WireGuard's TUN GRO. Everything that is not a plain data
// segment (SYN/FIN/RST/URG, IP options, fragments, a different flow, a gap in the sequence, changed
// options) first flushes what is pending, so per-flow order is kept.
//
// Integrity: the merged packet's L4 checksum is left partial for the kernel to complete; the bytes
// were covered by the outer UDP checksum the kernel verified on receive (kernel vxlan and this
// path always send one).
import Glibc
import Logging

final class Coalescer {
    private let tunFD: Int32
    private let vnet: Int
    private let buffer: UnsafeMutableRawPointer
    private static let capacity = 65_535

    /// The pending packet: headers of its first segment, then the payloads appended so far.
    private var pendingLength = 0  // bytes after the vnet header
    private var segments = 0
    private var headerLength = 0  // IPv4 + TCP
    private var segmentSize = 0  // payload of the first segment
    private var nextSequence: UInt32 = 0
    private var closed = false  // a shorter segment (or PSH) ended the run

    init(tunFD: Int32, vnetHeaderLength: Int) {
        self.tunFD = tunFD
        vnet = vnetHeaderLength
        buffer = .allocate(byteCount: vnetHeaderLength + Coalescer.capacity, alignment: 64)
    }

    deinit { buffer.deallocate() }

    private var pending: UnsafeMutableRawPointer { buffer + vnet }

    /// Takes one inner IPv4 packet (already validated: `totalLength` bytes, header sane). Writes it
    /// or keeps it to merge with what follows. `packet - vnet` must be writable scratch.
    func offer(_ packet: UnsafeMutableRawPointer, totalLength: Int, tally: inout Tally, errors: inout ErrorOnce, logger: Logger) {
        guard let (tcpHeaderLength, payload) = mergeable(packet, totalLength) else {
            flush(tally: &tally, errors: &errors, logger: logger)
            writeSingle(packet, totalLength, tally: &tally, errors: &errors, logger: logger)
            return
        }
        let headers = 20 + tcpHeaderLength
        if segments > 0 && !closed && extends(packet, headers: headers, payload: payload) {
            (pending + pendingLength).copyMemory(from: packet + headers, byteCount: payload)
            pendingLength += payload
            segments += 1
            nextSequence &+= UInt32(payload)
            // The newest ACK, flags (PSH) and window are what the receiver should see.
            (pending + 28).copyMemory(from: packet + 28, byteCount: 8)
            // PSH or a short segment ends the run, as in the kernel's GRO.
            if payload < segmentSize || packet.load(fromByteOffset: 33, as: UInt8.self) & 0x08 != 0 { closed = true }
            return
        }
        flush(tally: &tally, errors: &errors, logger: logger)
        pending.copyMemory(from: packet, byteCount: totalLength)
        pendingLength = totalLength
        segments = 1
        headerLength = headers
        segmentSize = payload
        nextSequence = Wire.load32(packet, 24) &+ UInt32(payload)
        closed = packet.load(fromByteOffset: 33, as: UInt8.self) & 0x08 != 0
    }

    /// A plain TCP data segment without IP options or fragmenting: (TCP header length, payload).
    private func mergeable(_ p: UnsafeMutableRawPointer, _ totalLength: Int) -> (Int, Int)? {
        guard totalLength >= 40, p.load(as: UInt8.self) == 0x45, p.load(fromByteOffset: 9, as: UInt8.self) == 6,
              Wire.load16(p, 6) & 0x3fff == 0
        else { return nil }
        let tcpHeaderLength = Int(p.load(fromByteOffset: 32, as: UInt8.self) >> 4) * 4
        let flags = p.load(fromByteOffset: 33, as: UInt8.self)
        guard tcpHeaderLength >= 20, 20 + tcpHeaderLength < totalLength, flags & ~0x18 == 0, flags & 0x10 != 0 else {
            return nil  // only ACK or ACK|PSH with data
        }
        return (tcpHeaderLength, totalLength - 20 - tcpHeaderLength)
    }

    /// Same flow, next in sequence, same headers where it matters, and room left.
    private func extends(_ p: UnsafeMutableRawPointer, headers: Int, payload: Int) -> Bool {
        guard headers == headerLength, payload <= segmentSize, pendingLength + payload <= Coalescer.capacity,
              segments < 64,
              Wire.load32(p, 24) == nextSequence,
              memcmp(p + 12, pending + 12, 12) == 0,  // addresses, ports
              p.load(fromByteOffset: 1, as: UInt8.self) == pending.load(fromByteOffset: 1, as: UInt8.self),  // TOS
              p.load(fromByteOffset: 8, as: UInt8.self) == pending.load(fromByteOffset: 8, as: UInt8.self),  // TTL
              Wire.load16(p, 6) == Wire.load16(pending, 6),  // DF
              headers == 40 || memcmp(p + 40, pending + 40, headers - 40) == 0  // TCP options
        else { return false }
        return true
    }

    /// Writes what is pending: as it came for one segment, as one GSO packet for several.
    func flush(tally: inout Tally, errors: inout ErrorOnce, logger: Logger) {
        guard segments > 0 else { return }
        defer { segments = 0 }
        if segments == 1 {
            writeSingle(pending, pendingLength, tally: &tally, errors: &errors, logger: logger)
            return
        }
        Wire.store16(pending, 2, UInt16(pendingLength))
        Wire.store16(pending, 10, 0)
        Wire.store16(pending, 10, Wire.finish(Wire.sum(pending, 20)))
        let l4Length = pendingLength - 20
        var pseudo = Wire.sum(pending + 12, 8) + 6 + UInt64(l4Length)
        while pseudo >> 16 != 0 { pseudo = (pseudo & 0xffff) + (pseudo >> 16) }
        Wire.store16(pending, 36, UInt16(pseudo))
        buffer.storeBytes(of: VirtioNetHeader.flagNeedsChecksum, toByteOffset: 0, as: UInt8.self)
        buffer.storeBytes(of: VirtioNetHeader.gsoTCPv4, toByteOffset: 1, as: UInt8.self)
        buffer.storeBytes(of: UInt16(headerLength).littleEndian, toByteOffset: 2, as: UInt16.self)
        buffer.storeBytes(of: UInt16(segmentSize).littleEndian, toByteOffset: 4, as: UInt16.self)
        buffer.storeBytes(of: UInt16(20).littleEndian, toByteOffset: 6, as: UInt16.self)
        buffer.storeBytes(of: UInt16(16).littleEndian, toByteOffset: 8, as: UInt16.self)
        let written = write(tunFD, buffer, vnet + pendingLength)
        if written == vnet + pendingLength {
            tally.bump(Counter.rxPackets, by: UInt64(segments))
            tally.bump(Counter.rxBytes, by: UInt64(pendingLength + (segments - 1) * headerLength))
            tally.bump(Counter.groPackets)
            tally.bump(Counter.groSegments, by: UInt64(segments))
        } else {
            if written < 0 { errors.log(logger, "write of a coalesced packet into the TUN", errno: errno) }
            tally.drop(.tunWriteError)
        }
    }

    private func writeSingle(_ packet: UnsafeMutableRawPointer, _ length: Int, tally: inout Tally, errors: inout ErrorOnce, logger: Logger) {
        writeIntoTUN(tunFD, packet: packet, length: length, vnet: vnet, tally: &tally, errors: &errors, logger: logger)
    }
}

/// Writes one inner packet into the TUN and counts it. With a vnet header (`vnet` bytes) a zeroed
/// virtio_net_hdr goes in front — no offload, checksum already complete — overwriting what lies
/// before the packet (headroom, or an inner Ethernet header already checked).
func writeIntoTUN(_ fd: Int32, packet: UnsafeMutableRawPointer, length: Int, vnet: Int,
                  tally: inout Tally, errors: inout ErrorOnce, logger: Logger) {
    let start = packet - vnet
    start.initializeMemory(as: UInt8.self, repeating: 0, count: vnet)
    writeToTUN(fd, start, vnet: vnet, length: length, tally: &tally, errors: &errors, logger: logger, what: "write into the TUN")
}

/// Writes `vnet + length` bytes at `start` (header already in place) into the TUN and counts the packet.
func writeToTUN(_ fd: Int32, _ start: UnsafeRawPointer, vnet: Int, length: Int, tally: inout Tally, errors: inout ErrorOnce,
                logger: Logger, what: String) {
    let written = write(fd, start, vnet + length)
    if written == vnet + length {
        tally.bump(Counter.rxPackets)
        tally.bump(Counter.rxBytes, by: UInt64(length))
    } else {
        if written < 0 { errors.log(logger, what, errno: errno) }
        tally.drop(.tunWriteError)
    }
}
