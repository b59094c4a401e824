// `flanneld-xdp monitor` — dropped packets as they happen, one line (or JSON object) each. The
// samples are BPFDataplane's, so reading and rendering them both live here; the daemon's command
// only passes the flags and a writer.
//
// Design: the programs write drop samples to a ring buffer only while someone listens; this verb is
// that someone. It renews the programs' deadline every second (so a monitor killed with SIGKILL
// stops the sampling within seconds, with nothing to clean up) and prints each event with the time
// converted from the kernel's monotonic clock, the interface name, and what the sample shows.

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import RuntimeSupport

public enum DropMonitor {
    /// How long one heartbeat keeps the programs writing: a few missed beats, not more.
    static let deadlineSeconds = 3.0

    /// Prints drops until `count` were printed (0: no limit) or `duration` seconds passed (nil: no
    /// limit). Returns the number printed.
    @discardableResult
    public static func run(bpffs: String, json: Bool, eventsPerSecond: UInt32, count: Int, duration: Double?,
                           write: @escaping (String) -> Void) throws(OperationsError) -> Int {
        let folder = PinnedDataplane.folder(bpffs: bpffs)
        let ringPath = folder + "/" + FXDP_MAP_DROPS
        guard access(folder, F_OK) == 0 else { throw PinnedDataplane.noPins(bpffs) }
        guard access(ringPath, F_OK) == 0 else {
            throw OperationsError(operation: "open \(ringPath)", detail: "no drop ring buffer pinned",
                                  hint: "the programs attached here come from a version without `monitor`: restart the daemon with this version")
        }
        let ring = try opening(folder) { () throws(BPFError) in try BPFRingBuffer.openPinned(path: ringPath) }
        let monitorSwitch = try opening(folder) { () throws(BPFError) in try DropMonitorSwitch(pinDirectory: folder) }
        let suppressedAtStart = (try? monitorSwitch.suppressed()) ?? 0
        let start = DropMonitorSwitch.monotonicNanoseconds()
        var lastBeat: UInt64 = 0
        var printed = 0
        var names: [UInt32: String] = [:]
        while count == 0 || printed < count {
            let now = DropMonitorSwitch.monotonicNanoseconds()
            if let duration, Double(now - start) / 1e9 >= duration { break }
            if now - lastBeat >= 1_000_000_000 {
                do {
                    try monitorSwitch.listen(forSeconds: deadlineSeconds, eventsPerSecond: eventsPerSecond)
                } catch {
                    throw OperationsError(operation: "update \(FXDP_MAP_MONITOR)", detail: "\(error)", errno: error.errno,
                                          hint: "run as root")
                }
                lastBeat = now
            }
            var batch: [DropEvent] = []
            do {
                try ring.poll(timeoutMilliseconds: 200) { record in
                    if let event = DropEvent(record: record) { batch.append(event) }
                }
            } catch {
                throw OperationsError(operation: "read \(ringPath)", detail: "\(error)", errno: error.errno, hint: "run as root")
            }
            for event in batch where count == 0 || printed < count {
                let name = names[event.ifindex] ?? interfaceName(event.ifindex)
                names[event.ifindex] = name
                write(json ? jsonLine(event, interface: name) + "\n" : textLine(event, interface: name) + "\n")
                printed += 1
            }
        }
        let suppressed = ((try? monitorSwitch.suppressed()) ?? suppressedAtStart) - suppressedAtStart
        if suppressed > 0 && !json {
            write("(\(suppressed) more drop(s) not shown: over --rate per CPU, or read too slowly; `flanneld-xdp stats` counts every one)\n")
        }
        return printed
    }

    private static func opening<T: ~Copyable>(_ folder: String, _ body: () throws(BPFError) -> T) throws(OperationsError) -> T {
        do {
            return try body()
        } catch {
            throw OperationsError(operation: "open the drop monitor maps in \(folder)", detail: "\(error)", errno: error.errno,
                                  hint: "run as root (reading pinned BPF maps needs CAP_BPF)")
        }
    }

    static func interfaceName(_ index: UInt32) -> String {
        guard index != 0 else { return "-" }
        return Interfaces.name(Int32(bitPattern: index)) ?? "#\(index)"
    }

    /// Wall-clock time of a monotonic timestamp, "2026-12-03T13:20:01.123456Z".
    static func wallClock(_ monotonic: UInt64) -> String {
        var real = timespec()
        clock_gettime(CLOCK_REALTIME, &real)
        let nowMonotonic = DropMonitorSwitch.monotonicNanoseconds()
        let realNanoseconds = Int64(real.tv_sec) * 1_000_000_000 + Int64(real.tv_nsec)
        let at = realNanoseconds - (Int64(bitPattern: nowMonotonic) - Int64(bitPattern: monotonic))
        var seconds = time_t(at / 1_000_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let micro = (at % 1_000_000_000) / 1000
        let fraction = String(micro)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            + "." + String(repeating: "0", count: max(0, 6 - fraction.count)) + fraction + "Z"
    }

    static func protocolName(_ number: UInt8) -> String {
        switch number {
        case 1: "icmp"
        case 6: "tcp"
        case 17: "udp"
        default: "proto \(number)"
        }
    }

    static func endpoint(_ address: IPv4Address?, _ port: UInt16?) -> String {
        guard let address else { return "?" }
        return port.map { "\(address):\($0)" } ?? "\(address)"
    }

    /// "2026-12-03T13:20:01.123456Z decap_drop_not_peer eth0 192.168.77.9:40000 → 192.168.77.1:8472 udp
    /// vni 1 inner 10.5.9.2 → 10.5.1.2 icmp, 148 bytes"
    public static func textLine(_ event: DropEvent, interface: String) -> String {
        var line = "\(wallClock(event.monotonicNanoseconds)) \(event.reasonName) \(interface)"
        if event.source != nil {
            line += " \(endpoint(event.source, event.sourcePort)) → \(endpoint(event.destination, event.destinationPort))"
            if let p = event.ipProtocol { line += " \(protocolName(p))" }
        } else {
            line += " (not IPv4)"
        }
        if let vni = event.vni { line += " vni \(vni)" }
        if let s = event.innerSource, let d = event.innerDestination {
            line += " inner \(s) → \(d)"
            if let p = event.innerProtocol { line += " \(protocolName(p))" }
        } else if let mac = event.innerDestinationMAC {
            line += " inner to \(mac)"
        }
        return line + ", \(event.packetLength) bytes"
    }

    public static func jsonLine(_ event: DropEvent, interface: String) -> String {
        var members: [(String, JSONValue)] = [
            ("time", .string(wallClock(event.monotonicNanoseconds))),
            ("reason", .string(event.reasonName)),
            ("interface", .string(interface)),
            ("ifindex", .int(UInt64(event.ifindex))),
            ("length", .int(UInt64(event.packetLength))),
        ]
        func add(_ key: String, _ value: JSONValue?) { if let value { members.append((key, value)) } }
        add("source", event.source.map { .string("\($0)") })
        add("destination", event.destination.map { .string("\($0)") })
        add("protocol", event.ipProtocol.map { .int(UInt64($0)) })
        add("sourcePort", event.sourcePort.map { .int(UInt64($0)) })
        add("destinationPort", event.destinationPort.map { .int(UInt64($0)) })
        add("vni", event.vni.map { .int(UInt64($0)) })
        add("innerSourceMAC", event.innerSourceMAC.map { .string("\($0)") })
        add("innerDestinationMAC", event.innerDestinationMAC.map { .string("\($0)") })
        add("innerSource", event.innerSource.map { .string("\($0)") })
        add("innerDestination", event.innerDestination.map { .string("\($0)") })
        add("innerProtocol", event.innerProtocol.map { .int(UInt64($0)) })
        return JSONValue.members(members).text
    }
}
