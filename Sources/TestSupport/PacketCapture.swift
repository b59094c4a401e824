// What arrives on an interface of a lab namespace, and datagrams sent from one: the tools of the
// tests that try every door of a node as an attacker would.
//
// PacketCapture opens an AF_PACKET socket inside the namespace (a socket stays in the namespace it
// was made in), bound to one interface, and counts incoming ICMP echo requests whose data starts
// with a marker (a byte string the test put there). Only echo requests: an ICMP error that quotes
// a datagram carrying the marker (port unreachable, sent back to a sender) is not a delivery. Tests wait for an event — a counter that accounted for the
// datagrams, or the capture reaching a count — and only then read the capture, so an absence is
// asserted after the traffic is known to have been handled, never after a pause.

import CBPF
import Glibc
import NetTypes
import RuntimeSupport
import Synchronization

public final class PacketCapture: @unchecked Sendable {
    // @unchecked: fd and the classifier are immutable; `counts` is behind its mutex.
    private let fd: Int32
    public let namespace: String
    public let ifname: String
    private let counts = Mutex<[String: Int]>([:])
    /// The labels a frame counts under (none: not counted).
    private let classify: @Sendable (ArraySlice<UInt8>) -> [String]

    /// Starts capturing incoming frames on `ifname` in `namespace`, counting ICMP echo requests
    /// whose data starts with one of `markers` (`count(marker)`).
    public convenience init(namespace: String, ifname: String, markers: [[UInt8]]) throws {
        try self.init(namespace: namespace, ifname: ifname) { frame in
            guard let data = PacketCapture.echoRequestData(frame) else { return [] }
            return markers.filter { data.starts(with: $0) }.map(PacketCapture.label)
        }
    }

    /// Starts capturing incoming frames on `ifname` in `namespace`, counting each under the labels
    /// `classify` gives it (`count(label:)`).
    public init(namespace: String, ifname: String, classify: @escaping @Sendable (ArraySlice<UInt8>) -> [String]) throws {
        self.namespace = namespace
        self.ifname = ifname
        self.classify = classify
        fd = try NetnsThread.run(namespace: namespace) { () throws -> Int32 in
            let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                           Int32(UInt16(ETH_P_ALL).bigEndian))
            guard s >= 0 else { throw LabError(command: [], message: "socket(AF_PACKET) in \(namespace): errno \(errno)") }
            let index = if_nametoindex(ifname)
            guard index > 0 else {
                close(s)
                throw LabError(command: [], message: "no interface \(ifname) in \(namespace)")
            }
            var address = sockaddr_ll()
            address.sll_family = UInt16(AF_PACKET)
            address.sll_protocol = UInt16(ETH_P_ALL).bigEndian
            address.sll_ifindex = Int32(index)
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_ll>.size)) }
            }
            guard rc == 0 else {
                close(s)
                throw LabError(command: [], message: "bind(AF_PACKET, \(ifname)) in \(namespace): errno \(errno)")
            }
            return s
        }
    }

    deinit { close(fd) }

    /// Reads everything waiting and updates the counts.
    private func drain() {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            var from = sockaddr_ll()
            var length = socklen_t(MemoryLayout<sockaddr_ll>.size)
            let n = SystemCall.retrying {
                buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) }
                    }
                }
            }
            if n < 0 { return }
            if from.sll_pkttype == UInt8(PACKET_OUTGOING) { continue }
            let labels = classify(buffer[0..<n])
            if !labels.isEmpty { counts.withLock { for label in labels { $0[label, default: 0] += 1 } } }
        }
    }

    static func label(_ marker: [UInt8]) -> String { String(decoding: marker, as: UTF8.self) }

    /// The data of an Ethernet/IPv4 ICMP echo request, nil for any other frame.
    static func echoRequestData(_ frame: ArraySlice<UInt8>) -> ArraySlice<UInt8>? {
        let f = frame.startIndex
        guard frame.count >= 14 + 20 + 8, frame[f + 12] == 0x08, frame[f + 13] == 0x00 else { return nil }
        let ip = f + 14
        let headerLength = Int(frame[ip] & 0x0f) * 4
        guard frame[ip] >> 4 == 4, headerLength >= 20, frame[ip + 9] == 1, frame.count >= 14 + headerLength + 8 else { return nil }
        let icmp = ip + headerLength
        guard frame[icmp] == 8 else { return nil }
        return frame[(icmp + 8)...]
    }

    /// Incoming echo requests seen so far that carry `marker`.
    public func count(_ marker: [UInt8]) -> Int { count(label: PacketCapture.label(marker)) }

    /// Incoming frames seen so far that were counted under `label`.
    public func count(label: String) -> Int {
        drain()
        return counts.withLock { $0[label] ?? 0 }
    }

    /// Waits until `count(marker) >= expected`; returns the count (which is short of `expected`
    /// only when `timeout` seconds passed first: a failure bound, not a pause).
    @discardableResult
    public func wait(for marker: [UInt8], count expected: Int, timeout: Double = 10) -> Int {
        wait(label: PacketCapture.label(marker), count: expected, timeout: timeout)
    }

    /// `wait(for:count:timeout:)` for a label of the classifier.
    @discardableResult
    public func wait(label: String, count expected: Int, timeout: Double = 10) -> Int {
        let deadline = monotonicSeconds() + timeout
        while true {
            let now = count(label: label)
            if now >= expected || monotonicSeconds() >= deadline { return now }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&pfd, 1, 50)
        }
    }
}

public enum UDPSender {
    /// Sends `payload` `count` times as UDP datagrams from a socket in `namespace` (its source
    /// address is whatever the namespace's routing picks, as for any process there) to
    /// `destination`:`port`. `broadcast` allows a broadcast destination.
    public static func send(namespace: String, to destination: IPv4Address, port: UInt16, payload: [UInt8],
                            count: Int, broadcast: Bool = false) throws {
        try NetnsThread.run(namespace: namespace) { () throws in
            let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw LabError(command: [], message: "socket(AF_INET) in \(namespace): errno \(errno)") }
            defer { close(s) }
            var on: Int32 = 1
            if broadcast { setsockopt(s, SOL_SOCKET, SO_BROADCAST, &on, socklen_t(MemoryLayout<Int32>.size)) }
            try sendDatagrams(s, Array(repeating: payload, count: count), to: socketAddress(destination, port: port),
                              what: "sendto \(destination):\(port) from \(namespace)")
        }
    }
}

/// The kernel's UDP statistics of a namespace (/proc/net/snmp, "Udp:" lines), e.g. NoPorts (no
/// socket for a unicast datagram) and IgnoredMulti (a broadcast no socket wanted).
public func udpStatistics(namespace: String) throws -> [String: Int] {
    try NetnsThread.run(namespace: namespace) { () throws -> [String: Int] in
        // thread-self: /proc/net follows /proc/self, the process's first thread, which did not
        // enter the namespace.
        let lines = readFile("/proc/thread-self/net/snmp").split(separator: "\n").filter { $0.hasPrefix("Udp:") }
        guard lines.count >= 2 else { throw LabError(command: [], message: "no Udp lines in /proc/net/snmp of \(namespace)") }
        let names = lines[0].split(separator: " ").dropFirst(), values = lines[1].split(separator: " ").dropFirst()
        return Dictionary(zip(names.map(String.init), values.map { Int($0) ?? 0 }), uniquingKeysWith: { a, _ in a })
    }
}
