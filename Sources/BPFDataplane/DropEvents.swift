// DropEvents — what `flanneld-xdp monitor` reads: dropped packets from the fxdp_drops ring buffer,
// decoded, and the switch (fxdp_monitor) that makes the programs write them.
//
// Design: the programs copy a packet's first bytes and leave every interpretation to this side, so
// a sample is parsed here with a bounds-checked cursor, layer by layer, as far as it goes: outer
// IPv4 or IPv6 and UDP, VXLAN, inner Ethernet and IPv4 or IPv6. A truncated or odd sample gives
// fewer fields, never an error: it is a drop, and odd packets are what gets dropped.

import BPFLoader
import CBPF
import Glibc
import NetTypes

/// One dropped packet as the programs reported it.
public struct DropEvent: Sendable, Equatable {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) of the drop.
    public var monotonicNanoseconds: UInt64
    /// The counter it was counted under (its reason).
    public var reason: FXDPCounter?
    public var reasonCode: UInt32
    /// Interface it arrived on (0: unknown).
    public var ifindex: UInt32
    public var packetLength: UInt32
    /// Outer (or only) IPv4 header's addresses and protocol.
    public var source: IPv4Address?
    public var destination: IPv4Address?
    public var ipProtocol: UInt8?
    public var sourcePort: UInt16?
    public var destinationPort: UInt16?
    /// Present when the UDP payload reads as VXLAN (flags byte 0x08 set).
    public var vni: UInt32?
    public var innerSourceMAC: MACAddress?
    public var innerDestinationMAC: MACAddress?
    public var innerSource: IPv4Address?
    public var innerDestination: IPv4Address?
    public var innerProtocol: UInt8?
    /// The same for IPv6 (the other family's fields stay nil): outer addresses, inner addresses;
    /// `ipProtocol` and `innerProtocol` hold the next header after any fragment header.
    public var source6: IPv6Address?
    public var destination6: IPv6Address?
    public var innerSource6: IPv6Address?
    public var innerDestination6: IPv6Address?

    /// Decodes one ring buffer record (a `struct fxdp_drop_event`); nil when it is too short.
    public init?(record: [UInt8]) {
        guard record.count >= MemoryLayout<fxdp_drop_event>.size else { return nil }
        var cursor = DropCursor(record)
        guard let time = cursor.u64le(), let reason = cursor.u32le(), let ifindex = cursor.u32le(),
              let length = cursor.u32le(), let sampleLength = cursor.u16le(), let flags = cursor.u8() else { return nil }
        monotonicNanoseconds = time
        reasonCode = reason
        self.reason = FXDPCounter(rawValue: reason)
        self.ifindex = ifindex
        packetLength = length
        let sampleOffset = MemoryLayout<fxdp_drop_event>.offset(of: \.sample) ?? 24
        let end = min(record.count, sampleOffset + Int(min(sampleLength, UInt16(FXDP_DROP_SAMPLE))))
        decodeSample(Array(record[sampleOffset..<end]), startsAtIPv4: flags & UInt8(FXDP_DROP_F_SAMPLE_L3) != 0)
    }

    public init(monotonicNanoseconds: UInt64, reason: FXDPCounter, ifindex: UInt32, packetLength: UInt32,
                sample: [UInt8], startsAtIPv4: Bool) {
        self.monotonicNanoseconds = monotonicNanoseconds
        self.reason = reason
        reasonCode = reason.rawValue
        self.ifindex = ifindex
        self.packetLength = packetLength
        decodeSample(sample, startsAtIPv4: startsAtIPv4)
    }

    /// `startsAtIPv4`: the sample starts at the IP header (FXDP_DROP_F_SAMPLE_L3), IPv4 or IPv6 as
    /// its version says; else at the Ethernet header.
    private mutating func decodeSample(_ sample: [UInt8], startsAtIPv4: Bool) {
        var cursor = DropCursor(sample)
        var version: UInt8 = 4
        if startsAtIPv4 {
            version = (sample.first ?? 0) >> 4
        } else {
            guard cursor.skip(12), let type = cursor.u16be(), type == 0x0800 || type == 0x86DD else { return }
            version = type == 0x86DD ? 6 : 4
        }
        let proto: UInt8, firstFragment: Bool
        if version == 6 {
            guard let outer = cursor.ipv6() else { return }
            source6 = outer.source
            destination6 = outer.destination
            (proto, firstFragment) = (outer.protocol, outer.isFirstFragment)
        } else {
            guard let outer = cursor.ipv4() else { return }
            source = outer.source
            destination = outer.destination
            (proto, firstFragment) = (outer.protocol, outer.isFirstFragment)
        }
        ipProtocol = proto
        // Only a first fragment (or no fragment) carries the UDP header.
        guard proto == 17, firstFragment, let sport = cursor.u16be(), let dport = cursor.u16be(),
              cursor.skip(4) else { return }
        sourcePort = sport
        destinationPort = dport
        guard let vxlanFlags = cursor.u8(), vxlanFlags & 0x08 != 0, cursor.skip(3),
              let vniAndReserved = cursor.u32be() else { return }
        vni = vniAndReserved >> 8
        guard let dmac = cursor.bytes(6), let smac = cursor.bytes(6), let type = cursor.u16be() else { return }
        innerDestinationMAC = MACAddress(bytes: dmac)
        innerSourceMAC = MACAddress(bytes: smac)
        if type == 0x86DD, let inner = cursor.ipv6() {
            innerSource6 = inner.source
            innerDestination6 = inner.destination
            innerProtocol = inner.protocol
        }
        guard type == 0x0800, let inner = cursor.ipv4() else { return }
        innerSource = inner.source
        innerDestination = inner.destination
        innerProtocol = inner.protocol
    }

    /// The reason's counter name, or the number of a code this build does not know.
    public var reasonName: String { reason?.name ?? "code_\(reasonCode)" }
}

/// A bounds-checked reader over a sample: every read either yields its bytes or nil, and a nil
/// leaves the cursor where it was.
struct DropCursor {
    private let bytes: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func bytes(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, offset + n <= bytes.count else { return nil }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func skip(_ n: Int) -> Bool { bytes(n) != nil }
    mutating func u8() -> UInt8? { bytes(1)?.first }
    mutating func u16be() -> UInt16? { bytes(2).map { UInt16($0.first!) << 8 | UInt16($0.last!) } }
    mutating func u32be() -> UInt32? { bytes(4).map { $0.reduce(0) { $0 << 8 | UInt32($1) } } }
    mutating func u16le() -> UInt16? { bytes(2).map { $0.reversed().reduce(0) { $0 << 8 | UInt16($1) } } }
    mutating func u32le() -> UInt32? { bytes(4).map { $0.reversed().reduce(0) { $0 << 8 | UInt32($1) } } }
    mutating func u64le() -> UInt64? { bytes(8).map { $0.reversed().reduce(0) { $0 << 8 | UInt64($1) } } }

    /// An IPv4 header (options skipped); the cursor ends at its payload.
    mutating func ipv4() -> (source: IPv4Address, destination: IPv4Address, protocol: UInt8, isFirstFragment: Bool)? {
        let start = offset
        guard let versionIHL = u8(), versionIHL >> 4 == 4 else { offset = start; return nil }
        let headerLength = Int(versionIHL & 0x0f) * 4
        guard headerLength >= 20, skip(5), let fragment = u16be(), skip(1), let proto = u8(), skip(2),
              let source = bytes(4), let destination = bytes(4), skip(headerLength - 20) else {
            offset = start
            return nil
        }
        return (IPv4Address(bytes: source), IPv4Address(bytes: destination), proto, fragment & 0x1fff == 0)
    }

    /// An IPv6 header and a fragment header right after it, if any; the cursor ends at what follows.
    mutating func ipv6() -> (source: IPv6Address, destination: IPv6Address, protocol: UInt8, isFirstFragment: Bool)? {
        let start = offset
        guard let version = u8(), version >> 4 == 6, skip(5), var next = u8(), skip(1),
              let source = bytes(16).flatMap({ IPv6Address(bytes: Array($0)) }),
              let destination = bytes(16).flatMap({ IPv6Address(bytes: Array($0)) }) else {
            offset = start
            return nil
        }
        var first = true
        if next == 44 {
            guard let fragmentNext = u8(), skip(1), let fragment = u16be(), skip(4) else {
                offset = start
                return nil
            }
            next = fragmentNext
            first = fragment & 0xfff8 == 0
        }
        return (source, destination, next, first)
    }
}

/// The monitor's side of the programs' switch: keeps fxdp_monitor's deadline ahead while it listens,
/// and reads how many drops the budget left unreported.
public struct DropMonitorSwitch: ~Copyable {
    private let control: BPFMap<UInt32, fxdp_monitor>
    private let budget: PerCPUMap<UInt32, fxdp_monitor_budget>

    public init(pinDirectory: String) throws(BPFError) {
        let control = try BPFMap.openPinned(path: pinDirectory + "/" + FXDP_MAP_MONITOR, key: UInt32.self, value: fxdp_monitor.self)
        let budget = try PerCPUMap.openPinned(path: pinDirectory + "/" + FXDP_MAP_MONITOR_BUDGET,
                                              key: UInt32.self, value: fxdp_monitor_budget.self)
        self.control = control
        self.budget = budget
    }

    /// Asks the programs for events until `seconds` from now, at most `eventsPerSecond` per CPU;
    /// `seconds` ≤ 0 stops them now.
    public func listen(forSeconds seconds: Double, eventsPerSecond: UInt32) throws(BPFError) {
        let until = seconds > 0 ? DropMonitorSwitch.monotonicNanoseconds() + UInt64(seconds * 1e9) : 0
        try control.update(0, fxdp_monitor(listen_until_ns: until, events_per_second: eventsPerSecond, _pad: 0))
    }

    /// Drops that went unreported because a CPU's budget was spent or the ring was full, since the
    /// maps were created.
    public func suppressed() throws(BPFError) -> UInt64 {
        try budget.lookup(0).reduce(0) { $0 + UInt64($1.suppressed) }
    }

    /// The clock bpf_ktime_get_ns() reads.
    public static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }
}
