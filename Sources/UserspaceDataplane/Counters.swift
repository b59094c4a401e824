// Counters of the userspace data path. Workers tally into a private block during a batch and add
// it to the shared atomics once per batch, so the per-packet cost is a plain increment. Drop
// reasons use the BPF path's names where they mean the same thing (decap_drop_not_peer → not_peer,
// decap_drop_bad_vni → bad_vni, decap_drop_malformed → malformed, decap_drop_inner_not_ours →
// inner_not_ours, decap_drop_inner_not_ipv4 → inner_not_ipv4, decap_drop_inner_source →
// inner_source, decap_drop_loop → loop, decap_drop_ecn → ecn, encap_pass_no_peer → no_peer,
// encap_pass_too_big → too_big, encap_pass_not_ipv4 → not_ipv4).
import Atomics

/// Why a packet was not forwarded. Raw values are stable indices; `name` is the metrics label.
public enum UserspaceDropReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// UDP → TUN: the datagram's source is not a known peer node IP.
    case notPeer = 0
    /// UDP → TUN: VXLAN with another VNI, or without the I flag.
    case badVNI
    /// Truncated or inconsistent headers (outer payload, VXLAN, inner IPv4 IHL/total length).
    case malformed
    /// UDP → TUN: inner Ethernet not addressed to our VtepMAC.
    case innerNotOurs
    /// UDP → TUN: inner Ethernet type or IP version not IPv4.
    case innerNotIPv4
    /// TUN → UDP: not an IPv4 packet (e.g. IPv6 the kernel routed into the TUN).
    case notIPv4
    /// TUN → UDP: no peer subnet contains the destination (ICMP net unreachable sent back).
    case noPeer
    /// TUN → UDP: longer than the overlay MTU and not a GSO packet (ICMP frag needed if DF).
    case tooBig
    /// UDP → TUN: datagram larger than the receive buffer.
    case truncated
    /// sendmmsg refused the datagram (no route to the peer node, buffer errors).
    case sendError
    /// write() into the TUN failed.
    case tunWriteError
    /// UDP → TUN: the inner source lies in no subnet of the sending peer and is not its own address.
    case innerSource
    /// UDP → TUN: the inner Ethernet source is our own VtepMAC (a loop).
    case loop
    /// UDP → TUN: outer CE on a not-ECT inner packet (the kernel's decap drops it too).
    case ecn
    /// UDP → TUN: an inner packet of the other family than the underlay's (flannel pairs IPv4 with
    /// flannel.<VNI> over IPv4 and IPv6 with flannel-v6.<VNI> over IPv6).
    case innerWrongFamily

    public var name: String {
        switch self {
        case .notPeer: "not_peer"
        case .badVNI: "bad_vni"
        case .malformed: "malformed"
        case .innerNotOurs: "inner_not_ours"
        case .innerNotIPv4: "inner_not_ipv4"
        case .notIPv4: "not_ipv4"
        case .noPeer: "no_peer"
        case .tooBig: "too_big"
        case .truncated: "truncated"
        case .sendError: "send_error"
        case .tunWriteError: "tun_write_error"
        case .innerSource: "inner_source"
        case .loop: "loop"
        case .ecn: "ecn"
        case .innerWrongFamily: "inner_wrong_family"
        }
    }

    public var description: String { name }
}

/// A snapshot of the counters (summed over all workers).
public struct UserspaceCounters: Sendable, Hashable, CustomStringConvertible {
    /// Packets (and their inner IPv4 bytes) read from the TUN and sent to a peer.
    public var txPackets: UInt64 = 0
    public var txBytes: UInt64 = 0
    /// Packets (and inner IPv4 bytes) received from peers and written into the TUN.
    public var rxPackets: UInt64 = 0
    public var rxBytes: UInt64 = 0
    /// ICMP errors written back into the TUN, and those the rate limit suppressed.
    public var icmpSent: UInt64 = 0
    public var icmpRateLimited: UInt64 = 0
    /// TCP super-packets (GSO) split into segments, and the segments they gave.
    public var gsoPackets: UInt64 = 0
    public var gsoSegments: UInt64 = 0
    /// Received TCP segments glued into GSO packets for the TUN, and the packets written.
    public var groPackets: UInt64 = 0
    public var groSegments: UInt64 = 0
    public var drops: [UserspaceDropReason: UInt64] = [:]

    public init() {}

    public subscript(drop reason: UserspaceDropReason) -> UInt64 { drops[reason] ?? 0 }
    public var totalDrops: UInt64 { drops.values.reduce(0, +) }

    /// Prometheus text exposition of these counters (all drop reasons, zeros included).
    public func prometheusText(prefix: String = "flanneld_xdp_userspace") -> String {
        var out = ""
        func family(_ name: String, _ help: String, _ samples: [(String, UInt64)]) {
            out += "# HELP \(prefix)_\(name) \(help)\n# TYPE \(prefix)_\(name) counter\n"
            for (labels, value) in samples { out += "\(prefix)_\(name)\(labels) \(value)\n" }
        }
        family("packets_total", "Packets carried by the userspace data path.",
               [("{direction=\"tx\"}", txPackets), ("{direction=\"rx\"}", rxPackets)])
        family("bytes_total", "Inner IPv4 bytes carried by the userspace data path.",
               [("{direction=\"tx\"}", txBytes), ("{direction=\"rx\"}", rxBytes)])
        family("drops_total", "Packets and datagrams dropped, by reason.",
               UserspaceDropReason.allCases.map { ("{reason=\"\($0.name)\"}", self[drop: $0]) })
        family("icmp_errors_total", "ICMP errors answered (sent) or suppressed by the rate limit.",
               [("{result=\"sent\"}", icmpSent), ("{result=\"rate_limited\"}", icmpRateLimited)])
        family("offload_packets_total", "TCP super-packets split for sending (gso) or glued on receive (gro).",
               [("{kind=\"gso\"}", gsoPackets), ("{kind=\"gro\"}", groPackets)])
        family("offload_segments_total", "Segments those super-packets held.",
               [("{kind=\"gso\"}", gsoSegments), ("{kind=\"gro\"}", groSegments)])
        return out
    }

    public var description: String {
        var parts = [
            "tx \(txPackets) pkts/\(txBytes) B", "rx \(rxPackets) pkts/\(rxBytes) B",
            "icmp \(icmpSent) (+\(icmpRateLimited) limited)",
        ]
        if gsoPackets > 0 { parts.append("gso \(gsoPackets)→\(gsoSegments)") }
        if groPackets > 0 { parts.append("gro \(groSegments)→\(groPackets)") }
        for reason in UserspaceDropReason.allCases where self[drop: reason] > 0 {
            parts.append("drop \(reason.name) \(self[drop: reason])")
        }
        return parts.joined(separator: ", ")
    }
}

/// Indices into the counter cells.
enum Counter {
    static let txPackets = 0
    static let txBytes = 1
    static let rxPackets = 2
    static let rxBytes = 3
    static let icmpSent = 4
    static let icmpRateLimited = 5
    static let gsoPackets = 6
    static let gsoSegments = 7
    static let groPackets = 8
    static let groSegments = 9
    static let firstDrop = 10
    static let count = firstDrop + UserspaceDropReason.allCases.count

    @inline(__always) static func drop(_ reason: UserspaceDropReason) -> Int { firstDrop + reason.rawValue }
}

/// The shared totals; workers add to them once per batch.
final class CounterCells: Sendable {
    private let cells: [ManagedAtomic<UInt64>] = (0..<Counter.count).map { _ in ManagedAtomic(0) }

    func add(_ tally: borrowing Tally) {
        for index in 0..<Counter.count {
            let value = tally.values[index]
            if value != 0 { cells[index].wrappingIncrement(by: value, ordering: .relaxed) }
        }
    }

    var snapshot: UserspaceCounters {
        var c = UserspaceCounters()
        c.txPackets = cells[Counter.txPackets].load(ordering: .relaxed)
        c.txBytes = cells[Counter.txBytes].load(ordering: .relaxed)
        c.rxPackets = cells[Counter.rxPackets].load(ordering: .relaxed)
        c.rxBytes = cells[Counter.rxBytes].load(ordering: .relaxed)
        c.icmpSent = cells[Counter.icmpSent].load(ordering: .relaxed)
        c.icmpRateLimited = cells[Counter.icmpRateLimited].load(ordering: .relaxed)
        c.gsoPackets = cells[Counter.gsoPackets].load(ordering: .relaxed)
        c.gsoSegments = cells[Counter.gsoSegments].load(ordering: .relaxed)
        c.groPackets = cells[Counter.groPackets].load(ordering: .relaxed)
        c.groSegments = cells[Counter.groSegments].load(ordering: .relaxed)
        for reason in UserspaceDropReason.allCases {
            let v = cells[Counter.drop(reason)].load(ordering: .relaxed)
            if v > 0 { c.drops[reason] = v }
        }
        return c
    }
}

/// A worker's private tally for the current batch (preallocated once, no per-packet allocation).
struct Tally: ~Copyable {
    let values: UnsafeMutablePointer<UInt64>
    private(set) var dirty = false

    init() {
        values = .allocate(capacity: Counter.count)
        values.initialize(repeating: 0, count: Counter.count)
    }

    deinit { values.deallocate() }

    @inline(__always) mutating func bump(_ index: Int, by amount: UInt64 = 1) {
        values[index] &+= amount
        dirty = true
    }

    @inline(__always) mutating func drop(_ reason: UserspaceDropReason) { bump(Counter.drop(reason)) }

    mutating func flush(into cells: CounterCells) {
        guard dirty else { return }
        cells.add(self)
        values.update(repeating: 0, count: Counter.count)
        dirty = false
    }
}
