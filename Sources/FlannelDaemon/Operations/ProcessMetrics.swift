// The standard process_* series of Prometheus client libraries (the names Go's and Python's
// clients export, so existing dashboards and alerts work), read from /proc at each scrape:
//
//   process_resident_memory_bytes   VmRSS: /proc/self/statm's resident pages × page size
//   process_virtual_memory_bytes    /proc/self/statm's size × page size
//   process_cpu_seconds_total       utime + stime of /proc/self/stat, in clock ticks
//   process_open_fds                entries of /proc/self/fd
//   process_max_fds                 RLIMIT_NOFILE's soft limit
//   process_start_time_seconds      boot time (/proc/stat btime) + starttime of /proc/self/stat
//
// A value that cannot be read is left out of the exposition rather than reported as 0.

import Glibc
import RuntimeSupport

public struct ProcessMetrics: Sendable, Equatable {
    public var residentMemoryBytes: UInt64?
    public var virtualMemoryBytes: UInt64?
    public var cpuSeconds: Double?
    public var openFDs: Int?
    public var maxFDs: UInt64?
    public var startTimeSeconds: Double?

    public init() {}

    /// This process, now.
    public static func read() -> ProcessMetrics {
        var m = ProcessMetrics()
        let pageSize = UInt64(getpagesize())
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        if let statm = readSmallFile("/proc/self/statm") {
            let fields = statm.split(separator: " ")
            if fields.count >= 2, let size = UInt64(fields[0]), let resident = UInt64(fields[1]) {
                m.virtualMemoryBytes = size * pageSize
                m.residentMemoryBytes = resident * pageSize
            }
        }
        if let stat = readSmallFile("/proc/self/stat"), let fields = statFields(stat), fields.count > 19, ticks > 0 {
            // After the ")" that ends the command name: field 3 is index 0, utime (14) index 11,
            // stime (15) index 12, starttime (22) index 19.
            if let utime = Double(fields[11]), let stime = Double(fields[12]) { m.cpuSeconds = (utime + stime) / ticks }
            if let start = Double(fields[19]), let boot = bootTime() { m.startTimeSeconds = Double(boot) + start / ticks }
        }
        // The directory handle itself is one of the entries while we read it.
        m.openFDs = countEntries("/proc/self/fd").map { max(0, $0 - 1) }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 { m.maxFDs = UInt64(limit.rlim_cur) }
        return m
    }

    /// The Prometheus text exposition of the values that could be read.
    public func prometheusText() -> String {
        var text = ""
        func series(_ name: String, _ type: String, _ help: String, _ value: String?) {
            guard let value else { return }
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        series("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", cpuSeconds.map(Self.number))
        series("process_open_fds", "gauge", "Number of open file descriptors.", openFDs.map { "\($0)" })
        series("process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFDs.map { "\($0)" })
        series("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtualMemoryBytes.map { "\($0)" })
        series("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", residentMemoryBytes.map { "\($0)" })
        series("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", startTimeSeconds.map(Self.number))
        return text
    }

    static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
    }

    /// The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses).
    static func statFields(_ stat: String) -> [Substring]? {
        guard let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    static func bootTime() -> Int64? {
        guard let text = readSmallFile("/proc/stat") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Int64(line.dropFirst("btime ".count))
        }
        return nil
    }

    static func countEntries(_ dir: String) -> Int? {
        Directory.entryNames(at: dir)?.count
    }

    /// A /proc file (they report size 0: read until EOF), at most 64 KiB.
    static func readSmallFile(_ path: String) -> String? {
        SystemCall.readSmallFile(path, limit: 65_536)
    }
}
