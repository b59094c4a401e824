// ICMP errors the userspace path writes back into the TUN, as a router would: destination net
// unreachable (type 3 code 0) for a destination no peer subnet holds — flannel's udp backend does
// the same — and fragmentation needed (type 3 code 4, with the overlay MTU) for a DF packet longer
// than the MTU, so the sender learns the path MTU.
//
// Rules followed from RFC 1812 / the kernel's icmp_send: never answer an ICMP error, a non-first
// fragment, or a packet from 0.0.0.0, multicast or broadcast; quote the offender's IP header and
// first 8 bytes of payload. The reply's source is the TUN's address (`icmpSourceIP`, flannel uses
// the TUN address too), TTL 64. A token bucket per worker limits replies (the kernel's
// icmp_ratelimit idea); suppressed replies are counted.
//
// The reply leaves through a raw IPv4 socket (IPPROTO_RAW, header included), not through the TUN
// as flannel's proxy.c writes it: a packet entering from the TUN with the TUN's own address as
// source is a "martian" to the kernel (accept_local=0) and silently dropped, which is what happens
// to flannel's replies. Sent from a local socket, the reply is routed like any local packet.
import Glibc

struct ICMPResponder: ~Copyable {
    private let buffer: UnsafeMutableRawPointer
    private let capacity = 256
    private let source: UInt32
    private let ratePerSecond: Int
    private var tokens: Int
    private var lastRefillNanos: UInt64 = 0

    init(source: UInt32, ratePerSecond: Int) {
        buffer = .allocate(byteCount: capacity, alignment: 8)
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
        self.source = source
        self.ratePerSecond = ratePerSecond
        tokens = ratePerSecond
    }

    deinit { buffer.deallocate() }

    static let destinationUnreachable: UInt8 = 3
    static let codeNetUnreachable: UInt8 = 0
    static let codeFragmentationNeeded: UInt8 = 4

    /// The last reply composed.
    var lastReply: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: buffer, count: Int(Wire.load16(buffer, 2)))
    }

    /// Sends an ICMP error about `packet` (an IPv4 packet whose header `checkIPv4` accepted) from
    /// the raw socket `rawFD` (-1: count it as rate-limited, nothing can be sent).
    mutating func reply(
        to packet: UnsafeRawPointer, headerLength: Int, totalLength: Int, code: UInt8, mtu: UInt16,
        rawFD: Int32, tally: inout Tally
    ) {
        guard let length = compose(
            to: packet, headerLength: headerLength, totalLength: totalLength, code: code, mtu: mtu, tally: &tally)
        else { return }
        guard rawFD >= 0 else {
            tally.bump(Counter.icmpRateLimited)
            return
        }
        var destination = sockaddr_in()
        destination.sin_family = sa_family_t(AF_INET)
        destination.sin_addr.s_addr = buffer.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
        let sent = withUnsafePointer(to: &destination) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(rawFD, buffer, length, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if sent == length {
            tally.bump(Counter.icmpSent)
        } else {
            tally.bump(Counter.icmpRateLimited)
        }
    }

    /// Writes the ICMP error into the scratch buffer; nil when none is due (rules above, rate limit).
    mutating func compose(
        to packet: UnsafeRawPointer, headerLength: Int, totalLength: Int, code: UInt8, mtu: UInt16,
        tally: inout Tally
    ) -> Int? {
        let protocolNumber = packet.load(fromByteOffset: 9, as: UInt8.self)
        let fragmentOffset = Wire.load16(packet, 6) & 0x1fff
        let offenderSource = Wire.load32(packet, 12)
        let offenderDestination = Wire.load32(packet, 16)
        if fragmentOffset != 0 || offenderSource == 0 || offenderSource >> 28 == 0xe
            || offenderDestination >> 28 >= 0xe || offenderDestination == 0xffff_ffff
        {
            return nil
        }
        if protocolNumber == 1 {  // ICMP: never about an ICMP error (types 3, 4, 5, 11, 12)
            guard totalLength >= headerLength + 1 else { return nil }
            switch packet.load(fromByteOffset: headerLength, as: UInt8.self) {
            case 3, 4, 5, 11, 12: return nil
            default: break
            }
        }
        guard takeToken() else {
            tally.bump(Counter.icmpRateLimited)
            return nil
        }
        let quoted = min(totalLength, headerLength + 8)
        let icmpLength = 8 + quoted
        let ipLength = 20 + icmpLength
        guard ipLength <= capacity else { return nil }
        let ip = buffer
        // IPv4 header
        Wire.store16(ip, 0, 0x4500)
        Wire.store16(ip, 2, UInt16(ipLength))
        Wire.store32(ip, 4, 0)  // id 0, no DF: the reply is small
        Wire.store16(ip, 8, 64 << 8 | 1)  // TTL 64, protocol ICMP
        Wire.store16(ip, 10, 0)
        Wire.store32(ip, 12, source)
        Wire.store32(ip, 16, offenderSource)
        Wire.store16(ip, 10, Wire.finish(Wire.sum(ip, 20)))
        // ICMP header + quote
        let icmp = ip + 20
        Wire.store16(icmp, 0, UInt16(ICMPResponder.destinationUnreachable) << 8 | UInt16(code))
        Wire.store16(icmp, 2, 0)
        Wire.store16(icmp, 4, 0)
        Wire.store16(icmp, 6, code == ICMPResponder.codeFragmentationNeeded ? mtu : 0)
        (icmp + 8).copyMemory(from: packet, byteCount: quoted)
        Wire.store16(icmp, 2, Wire.finish(Wire.sum(icmp, icmpLength)))
        return ipLength
    }

    private mutating func takeToken() -> Bool {
        guard ratePerSecond > 0 else { return false }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
        let nanos = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
        let elapsed = nanos &- lastRefillNanos
        if elapsed >= 1_000_000_000 / UInt64(ratePerSecond) {
            let earned = Int(min(elapsed / (1_000_000_000 / UInt64(ratePerSecond)), UInt64(ratePerSecond)))
            tokens = min(ratePerSecond, tokens + earned)
            lastRefillNanos = nanos
        }
        guard tokens > 0 else { return false }
        tokens -= 1
        return true
    }
}
