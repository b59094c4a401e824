// The two packet loops, one pair per TUN queue, each on its own pthread (never Swift concurrency:
// they block in syscalls). Nothing on the per-packet path allocates: buffers, the datagram array,
// the tally and the ICMP scratch are allocated once when the worker starts.
//
// TUN → UDP: read packets from the TUN queue (non-blocking) into slots that leave room in front for
// the VXLAN + inner Ethernet headers, look the destination up in the snapshot loaded once for the
// batch, write the headers in place and hand the batch to one sendmmsg. When the TUN is empty the
// worker sleeps in poll() on the TUN and the stop pipe.
//
// UDP → TUN: one recvmmsg fills up to a batch of datagrams; each is checked (sender is a peer node,
// VXLAN flags/VNI, inner dst MAC = our VtepMAC, inner IPv4 header sane) and its inner packet written
// into the TUN queue with one write() (a TUN takes exactly one packet per write).
//
// With offloads (IFF_VNET_HDR) both directions move 64 KB at a time: TUN reads return TCP
// super-packets that Segmenter cuts into MTU-size datagrams sent with UDP GSO (one sendmmsg entry,
// many datagrams); on receive UDP_GRO hands over runs of datagrams in one buffer and Coalescer
// glues consecutive TCP segments back into one GSO write. Per-packet syscalls then become
// per-64 KB ones, which is where a userspace path spends its time.
//
// TTL: the kernel already decremented it when it routed the packet into the TUN (a TUN is a link
// like flannel.1), and decrements it again when it routes the packet out of the peer's TUN, so the
// userspace path leaves TTL alone and a pod-to-pod ping shows TTL 62 as over kernel vxlan.
// flannel's udp backend (proxy.c) decrements once more on each side (TTL 60 end to end); that
// difference is invisible to peers and not copied.
//
// MTU: the kernel enforces the TUN MTU before a packet reaches us (frag-needed for DF packets, IP
// fragmentation otherwise), so `tooBig` only catches packets that slipped past it (an MTU changed
// behind our back); DF ones get an ICMP frag-needed with the configured MTU.
import Atomics
import CSystemShims
import Glibc
import Logging
import RuntimeSupport

/// What every worker shares (all Sendable, read-only or atomic).
struct WorkerContext: Sendable {
    let table: ManagedAtomic<PeerSnapshot>
    let counters: CounterCells
    let stopping: ManagedAtomic<Bool>
    let stopFD: Int32
    let framing: Framing
    let mtu: Int
    let batch: Int
    let icmpSource: UInt32
    let icmpRate: Int
    /// Raw IPv4 socket the ICMP errors leave by (-1 when it could not be opened).
    let icmpFD: Int32
    /// sizeof(virtio_net_hdr) when the TUN was opened with IFF_VNET_HDR, else 0.
    let vnetHeaderLength: Int
    /// UserspaceConfig.innerSourceCheck.
    let innerSourceCheck: Bool
    let logger: Logger
    /// The IPv6 side, when the path carries IPv6 (IPv6Path.swift).
    var ipv6: IPv6Context? = nil

    /// Largest packet a TUN read or a UDP datagram can hold (64 KB).
    static let maxPacket = 65_536

    /// Set when the TUN stopped working under us (deleted: reads fail with EBADFD).
    let tunBroken: ManagedAtomic<Bool>

    /// Waits `milliseconds` (or until stop() is called) after an unexpected error, so a descriptor
    /// that fails for good (a deleted TUN keeps polling readable) cannot turn the loop into a spin.
    func backOff(milliseconds: Int32 = 100) {
        var fd = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&fd, 1, milliseconds)
    }

    /// Writes one packet (`vnet` header included) into the TUN and counts it as received, or as a
    /// `tunWriteError` (the errno logged once per worker).
    @inline(__always)
    func deliver(_ tunFD: Int32, _ start: UnsafeRawPointer, vnet: Int, length: Int, tally: inout Tally, errors: inout ErrorOnce,
                 what: String = "write into the TUN") {
        writeToTUN(tunFD, start, vnet: vnet, length: length, tally: &tally, errors: &errors, logger: logger, what: what)
    }

    /// Sleeps until `fd` is readable or stop() was called. Returns false when stopping.
    func waitReadable(_ fd: Int32) -> Bool {
        var fds = (pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0))
        while !stopping.load(ordering: .relaxed) {
            let rc = SystemCall.retrying {
                withUnsafeMutableBytes(of: &fds) { raw in poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, -1) }
            }
            if rc > 0 { return fds.1.revents == 0 }
            if rc < 0 { return false }
        }
        return false
    }
}

/// Logs an unexpected errno once per worker and kind, so a persistent failure cannot flood the log.
struct ErrorOnce {
    private var seen: UInt64 = 0
    mutating func log(_ logger: Logger, _ what: String, errno e: Int32) {
        let bit = UInt64(1) << UInt64(min(max(e, 0), 63))
        guard seen & bit == 0 else { return }
        seen |= bit
        logger.warning("userspace data path: \(what) failed: \(errnoText(e)) (logged once per worker)")
    }
}

/// TUN queue → encapsulate → UDP socket.
final class TunToUDPWorker: @unchecked Sendable {
    // @unchecked: after start() hands it to its thread, only that thread touches it.
    private let context: WorkerContext
    private let tunFD: Int32
    private let udpFD: Int32
    /// Each slot's headroom holds the encapsulation and the vnet header.
    private let memory: WorkerBuffers
    private let segmenter: Segmenter?

    init(context: WorkerContext, tunFD: Int32, udpFD: Int32) {
        self.context = context
        self.tunFD = tunFD
        self.udpFD = udpFD
        // With offloads one TUN read may become several GSO sends.
        memory = WorkerBuffers(headroom: max(context.framing.encapLength, context.vnetHeaderLength), batch: context.batch,
                               dgramCapacity: context.vnetHeaderLength > 0 ? context.batch * Segmenter.maxSendsPerPacket : context.batch)
        segmenter = context.vnetHeaderLength > 0 ? Segmenter(framing: context.framing, mtu: context.mtu, batch: context.batch) : nil
    }

    func run() {
        var tally = Tally()
        var icmp = ICMPResponder(source: context.icmpSource, ratePerSecond: context.icmpRate)
        var errors = ErrorOnce()
        let framing = context.framing
        let vnet = context.vnetHeaderLength
        let batch = context.batch
        segmenter?.reset()

        while !context.stopping.load(ordering: .relaxed) {
            let snapshot = context.table.load(ordering: .acquiring)
            var ready = 0  // datagrams prepared in memory.dgrams[0..<ready]
            var slot = 0  // next free read slot
            var reads = 0
            var tunEmpty = false
            while slot < batch && reads < 2 * batch {
                let packet = memory.packet(slot)
                let n = SystemCall.retrying { read(tunFD, packet - vnet, vnet + WorkerContext.maxPacket) }
                if n < 0 {
                    let e = errno
                    tunEmpty = true
                    if e != EAGAIN && e != EWOULDBLOCK {
                        errors.log(context.logger, "read from the TUN", errno: e)
                        if e == EBADFD || e == EIO || e == EBADF { context.tunBroken.store(true, ordering: .relaxed) }
                        context.backOff()
                        reads = -1  // do not poll: poll reports the broken fd readable at once
                    }
                    break
                }
                reads += 1
                let length = n - vnet
                guard length > 0 else { continue }
                var gso = VirtioNetHeader.none
                if vnet > 0 {
                    gso = VirtioNetHeader(packet - vnet)
                }
                if let ipv6 = context.ipv6, packet.load(as: UInt8.self) >> 4 == 6 {
                    // Sent at once (one sendto): the slot is free again for the next read.
                    if gso.isSegmented {
                        tally.drop(.tooBig)
                        continue
                    }
                    if vnet > 0 && gso.needsChecksum { VirtioNetHeader.completeChecksum(packet, length: length, header: gso) }
                    ipv6.send(packet, length: length, tally: &tally, errors: &errors, context: context)
                    continue
                }
                let check = Wire.checkIPv4(ByteCursor(packet, end: length), notIPv4: .notIPv4)
                guard case .ok(let headerLength, let totalLength) = check else {
                    if case .drop(let reason) = check { tally.drop(reason) }
                    continue
                }
                let destination = Wire.load32(packet, 16)
                guard let target = snapshot.lookup(destination) else {
                    tally.drop(.noPeer)
                    icmp.reply(
                        to: packet, headerLength: headerLength, totalLength: totalLength,
                        code: ICMPResponder.codeNetUnreachable, mtu: 0, rawFD: context.icmpFD, tally: &tally)
                    continue
                }
                if gso.isSegmented, let segmenter {
                    // A TCP super-packet: cut it into MTU-size segments in the segmenter's own buffer.
                    if ready + Segmenter.maxSendsPerPacket > memory.dgramCapacity || !segmenter.hasRoom(for: totalLength) {
                        sendBatch(ready, tally: &tally, errors: &errors)
                        ready = 0
                        segmenter.reset()
                    }
                    let added = segmenter.segment(
                        packet: packet, length: totalLength, header: gso, target: target,
                        into: memory.dgrams + ready, tally: &tally)
                    ready += added
                    continue
                }
                if vnet > 0 && gso.needsChecksum {
                    VirtioNetHeader.completeChecksum(packet, length: totalLength, header: gso)
                }
                if totalLength > context.mtu {
                    tally.drop(.tooBig)
                    if Wire.load16(packet, 6) & 0x4000 != 0 {
                        icmp.reply(
                            to: packet, headerLength: headerLength, totalLength: totalLength,
                            code: ICMPResponder.codeFragmentationNeeded, mtu: UInt16(clamping: context.mtu),
                            rawFD: context.icmpFD, tally: &tally)
                    }
                    continue
                }
                if ready == memory.dgramCapacity {  // only reachable after many multi-send super-packets
                    sendBatch(ready, tally: &tally, errors: &errors)
                    ready = 0
                    segmenter?.reset()
                }
                let start = packet - framing.encapLength
                framing.writeEncap(start, peerMAC: target.vtepMAC)
                memory.dgrams[ready] = shim_dgram(
                    data: start.assumingMemoryBound(to: UInt8.self),
                    len: UInt32(framing.encapLength + totalLength), addr: target.nodeAddressRaw,
                    port: framing.port, segment: 0, truncated: 0, tos: Wire.outerTOS(packet), _pad: 0)
                ready += 1
                slot += 1
            }
            if ready > 0 {
                sendBatch(ready, tally: &tally, errors: &errors)
                segmenter?.reset()
            }
            tally.flush(into: context.counters)
            if tunEmpty && reads == 0 && !context.stopping.load(ordering: .relaxed) {
                if !context.waitReadable(tunFD) { break }
            }
        }
        tally.flush(into: context.counters)
    }

    /// sendmmsg of dgrams[0..<count], resuming after partial sends; a datagram the kernel refuses is
    /// counted and skipped.
    private func sendBatch(_ count: Int, tally: inout Tally, errors: inout ErrorOnce) {
        var offset = 0
        let encap = context.framing.encapLength
        while offset < count {
            let sent = Int(SystemCall.retryingNegativeErrno { shim_udp_send_batch(udpFD, memory.dgrams + offset, UInt32(count - offset)) })
            if sent > 0 {
                for i in offset..<(offset + sent) {
                    let d = memory.dgrams[i]
                    if d.segment > 0 {
                        let segments = (Int(d.len) + Int(d.segment) - 1) / Int(d.segment)
                        tally.bump(Counter.txPackets, by: UInt64(segments))
                        tally.bump(Counter.txBytes, by: UInt64(Int(d.len) - segments * encap))
                    } else {
                        tally.bump(Counter.txPackets)
                        tally.bump(Counter.txBytes, by: UInt64(Int(d.len) - encap))
                    }
                }
                offset += sent
            } else {
                errors.log(context.logger, "sendmmsg to a peer", errno: Int32(-sent))
                tally.drop(.sendError)
                offset += 1
            }
        }
    }
}

/// UDP socket → decapsulate → TUN queue.
final class UDPToTunWorker: @unchecked Sendable {
    // @unchecked: after start() hands it to its thread, only that thread touches it.
    private let context: WorkerContext
    private let tunFD: Int32
    private let udpFD: Int32
    private let memory: WorkerBuffers

    /// Cuts inner TCP super-packets into MTU-size packets when the TUN takes no GSO (see below).
    private let segmenter: Segmenter
    private let segments: UnsafeMutablePointer<shim_dgram>
    /// Glues TCP segments of a batch into GSO packets (only with IFF_VNET_HDR).
    private let coalescer: Coalescer?

    init(context: WorkerContext, tunFD: Int32, udpFD: Int32) {
        self.context = context
        self.tunFD = tunFD
        self.udpFD = udpFD
        segmenter = Segmenter(framing: Framing(.udp(port: 0)), mtu: context.mtu, batch: 1)
        segments = .allocate(capacity: Segmenter.maxSendsPerPacket)
        segments.initialize(repeating: shim_dgram(), count: Segmenter.maxSendsPerPacket)
        coalescer = context.vnetHeaderLength > 0 ? Coalescer(tunFD: tunFD, vnetHeaderLength: context.vnetHeaderLength) : nil
        // Room to put a zeroed virtio_net_hdr in front of a udp-framed packet (vxlan has 22 bytes).
        memory = WorkerBuffers(headroom: (context.vnetHeaderLength + 15) & ~15, batch: context.batch, dgramCapacity: context.batch)
    }

    deinit {
        segments.deallocate()
    }

    /// An inner packet longer than the MTU: a kernel vxlan sender whose underlay is a veth (kind,
    /// this lab) hands the whole TCP super-packet (GSO, up to 64 KB, checksum partial) to the
    /// receiver unsegmented, and a UDP socket receives it as one datagram. With IFF_VNET_HDR the
    /// TUN takes it as it is (virtio_net_hdr: TCPv4, gso_size = MTU − headers, checksum partial),
    /// else it is cut here into MTU-size packets with complete checksums. Anything else too long
    /// is dropped as `tooBig`.
    private func deliverSuperPacket(_ inner: UnsafeMutableRawPointer, length: Int, tally: inout Tally, errors: inout ErrorOnce) {
        var cursor = ByteCursor(inner, end: length)
        guard let ip = cursor.take(20), cursor.u8(ip + 9) == 6, Wire.load16(inner, 6) & 0x3fff == 0 else {
            tally.drop(.tooBig)
            return
        }
        let ipHeaderLength = Int(cursor.u8(ip) & 0x0f) * 4
        guard cursor.take(ipHeaderLength - 20) != nil, let tcp = cursor.take(20) else { tally.drop(.malformed); return }
        let tcpHeaderLength = Int(cursor.u8(tcp + 12) >> 4) * 4
        guard tcpHeaderLength >= 20, cursor.take(tcpHeaderLength - 20) != nil,
              context.mtu - ipHeaderLength - tcpHeaderLength >= 64
        else { tally.drop(.malformed); return }
        let vnet = context.vnetHeaderLength
        if vnet > 0 {
            let l4Length = length - ipHeaderLength
            var pseudo = UInt64(Wire.load16(inner, 12)) + UInt64(Wire.load16(inner, 14)) + UInt64(Wire.load16(inner, 16))
                + UInt64(Wire.load16(inner, 18)) + 6 + UInt64(l4Length)
            while pseudo >> 16 != 0 { pseudo = (pseudo & 0xffff) + (pseudo >> 16) }
            Wire.store16(inner + ipHeaderLength, 16, UInt16(pseudo))
            let header = inner - vnet
            header.storeBytes(of: VirtioNetHeader.flagNeedsChecksum, toByteOffset: 0, as: UInt8.self)
            header.storeBytes(of: VirtioNetHeader.gsoTCPv4, toByteOffset: 1, as: UInt8.self)
            header.storeBytes(of: UInt16(ipHeaderLength + tcpHeaderLength).littleEndian, toByteOffset: 2, as: UInt16.self)
            header.storeBytes(of: UInt16(context.mtu - ipHeaderLength - tcpHeaderLength).littleEndian, toByteOffset: 4, as: UInt16.self)
            header.storeBytes(of: UInt16(ipHeaderLength).littleEndian, toByteOffset: 6, as: UInt16.self)
            header.storeBytes(of: UInt16(16).littleEndian, toByteOffset: 8, as: UInt16.self)
            context.deliver(tunFD, header, vnet: vnet, length: length, tally: &tally, errors: &errors,
                            what: "write of a GSO packet into the TUN")
            return
        }
        let gso = VirtioNetHeader(flags: 1, gsoType: VirtioNetHeader.gsoTCPv4, headerLength: 0, gsoSize: UInt16.max, checksumStart: 0, checksumOffset: 0)
        segmenter.reset()
        let sends = segmenter.segment(
            packet: inner, length: length, header: gso, target: PeerTarget(nodeAddressRaw: 0, vtepMAC: 0, nodeAddress: 0, sourceAddress: 0),
            into: segments, tally: &tally)
        for i in 0..<sends {
            let d = segments[i]
            let base = UnsafeMutableRawPointer(d.data!)
            let step = d.segment > 0 ? Int(d.segment) : Int(d.len)
            var offset = 0
            while offset < Int(d.len) {
                let size = min(step, Int(d.len) - offset)
                let written = write(tunFD, base + offset, size)
                offset += size
                if written == size {
                    tally.bump(Counter.rxPackets)
                    tally.bump(Counter.rxBytes, by: UInt64(size))
                } else {
                    if written < 0 { errors.log(context.logger, "write into the TUN", errno: errno) }
                    tally.drop(.tunWriteError)
                }
            }
        }
    }

    func run() {
        var tally = Tally()
        var errors = ErrorOnce()
        let framing = context.framing
        let vnet = context.vnetHeaderLength
        let batch = context.batch

        while !context.stopping.load(ordering: .relaxed) {
            for i in 0..<batch {
                memory.dgrams[i].data = memory.packet(i).assumingMemoryBound(to: UInt8.self)
                memory.dgrams[i].len = UInt32(WorkerContext.maxPacket)
            }
            let got = Int(SystemCall.retryingNegativeErrno { shim_udp_recv_batch(udpFD, memory.dgrams, UInt32(batch)) })
            if got <= 0 {
                let e = Int32(-got)
                if got == 0 || e == EAGAIN || e == EWOULDBLOCK {
                    if !context.waitReadable(udpFD) { break }
                } else {
                    errors.log(context.logger, "recvmmsg", errno: e)
                    context.backOff()
                }
                continue
            }
            let snapshot = context.table.load(ordering: .acquiring)
            for i in 0..<got {
                let d = memory.dgrams[i]
                let base = UnsafeMutableRawPointer(d.data!)
                let length = Int(d.len)
                if d.truncated != 0 {
                    tally.drop(.truncated)
                    continue
                }
                let outerSource = UInt32(bigEndian: d.addr)
                guard snapshot.isPeerNode(outerSource) else {
                    tally.drop(.notPeer)
                    continue
                }
                if length == 0 {
                    tally.drop(.malformed)
                    continue
                }
                // With UDP_GRO the kernel may hand over several same-size datagrams glued together.
                let segmentSize = d.segment > 0 ? Int(d.segment) : length
                var offset = 0
                while offset < length {
                    let size = min(segmentSize, length - offset)
                    let datagram = base + offset
                    offset += size
                    switch framing.decapsulate(datagram, length: size) {
                    case .drop(let reason):
                        tally.drop(reason)
                    case .deliver(let innerOffset, let innerLength):
                        let inner = datagram + innerOffset
                        if context.innerSourceCheck, !snapshot.mayCarry(innerSource: Wire.load32(inner, 12), from: outerSource) {
                            tally.drop(.innerSource)
                            continue
                        }
                        guard Wire.copyOuterECN(d.tos, into: inner) else {
                            tally.drop(.ecn)
                            continue
                        }
                        if innerLength > context.mtu {
                            coalescer?.flush(tally: &tally, errors: &errors, logger: context.logger)
                            deliverSuperPacket(inner, length: innerLength, tally: &tally, errors: &errors)
                            continue
                        }
                        if innerLength >= 20 {
                            let headerLength = Int(inner.load(as: UInt8.self) & 0x0f) * 4
                            Wire.repairPartialChecksum(inner, headerLength: headerLength, totalLength: innerLength)
                        }
                        if let coalescer {
                            coalescer.offer(inner, totalLength: innerLength, tally: &tally, errors: &errors, logger: context.logger)
                            continue
                        }
                        let start = inner - vnet
                        if vnet > 0 {
                            // A zeroed virtio_net_hdr: no offload, checksum already complete. It may
                            // overwrite the inner Ethernet header (already checked) or the headroom.
                            start.initializeMemory(as: UInt8.self, repeating: 0, count: vnet)
                        }
                        context.deliver(tunFD, start, vnet: vnet, length: innerLength, tally: &tally, errors: &errors)
                    }
                }
            }
            coalescer?.flush(tally: &tally, errors: &errors, logger: context.logger)
            tally.flush(into: context.counters)
        }
        tally.flush(into: context.counters)
    }
}

/// A worker's batch memory, allocated once so that nothing on the per-packet path allocates:
/// `batch` packet slots (64-byte aligned, `slotSize` apart), each with `headroom` bytes in front of
/// the packet, and `dgramCapacity` datagram descriptors for the batch syscalls.
struct WorkerBuffers: ~Copyable {
    let headroom: Int
    let slotSize: Int
    let slots: UnsafeMutableRawPointer
    let dgrams: UnsafeMutablePointer<shim_dgram>
    let dgramCapacity: Int

    init(headroom: Int, batch: Int, dgramCapacity: Int) {
        self.headroom = headroom
        slotSize = (headroom + WorkerContext.maxPacket + 63) & ~63
        slots = .allocate(byteCount: slotSize * batch, alignment: 64)
        self.dgramCapacity = dgramCapacity
        dgrams = .allocate(capacity: dgramCapacity)
        dgrams.initialize(repeating: shim_dgram(), count: dgramCapacity)
    }

    /// Where slot `i`'s packet starts, after its headroom.
    func packet(_ i: Int) -> UnsafeMutableRawPointer { slots + i * slotSize + headroom }

    deinit {
        slots.deallocate()
        dgrams.deallocate()
    }
}
