// BenchStats — the pure half of `fxdp-bench`: parsing what the tools print (iperf3 -J,
// /proc/stat, /proc/PID/status) and turning rounds of samples into min/median/max, percentiles and
// ratios. No I/O here, so the test suite (Tests/FlannelDaemonTests/BenchStatsTests.swift) checks it
// without running anything timed.
//
// Why ratios: the machine is shared and absolute numbers drift between runs; two paths measured in
// interleaved rounds of the same run drift together, so their ratio is the figure to trust.

import Foundation
import RuntimeSupport

/// min / median / max of one metric over the rounds.
struct Spread: Codable, Equatable, Sendable {
    var min: Double
    var median: Double
    var max: Double
    var count: Int

    init?(_ samples: [Double]) {
        let finite = samples.filter(\.isFinite)
        guard !finite.isEmpty else { return nil }
        let sorted = finite.sorted()
        min = sorted.first!
        max = sorted.last!
        median = BenchMath.median(sorted: sorted)
        count = sorted.count
    }
}

enum BenchMath {
    /// The least-squares slope of y over x; nil with fewer than two distinct x.
    static func slope(_ points: [(x: Double, y: Double)]) -> Double? {
        guard points.count >= 2 else { return nil }
        let n = Double(points.count)
        let mx = points.map(\.x).reduce(0, +) / n, my = points.map(\.y).reduce(0, +) / n
        let sxx = points.map { ($0.x - mx) * ($0.x - mx) }.reduce(0, +)
        guard sxx > 0 else { return nil }
        return points.map { ($0.x - mx) * ($0.y - my) }.reduce(0, +) / sxx
    }

    static func median(sorted: [Double]) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }

    static func median(_ samples: [Double]) -> Double { median(sorted: samples.sorted()) }

    /// Nearest-rank percentile (p in 0...100) of `samples`: the smallest value with at least p% of the
    /// samples at or below it. Nearest-rank never invents a value that was not measured.
    static func percentile(_ samples: [Double], _ p: Double) -> Double {
        guard !samples.isEmpty else { return .nan }
        let sorted = samples.sorted()
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(Swift.max(rank, 1), sorted.count) - 1]
    }

    /// a / b, nil when either is missing or b is zero.
    static func ratio(_ a: Double?, _ b: Double?) -> Double? {
        guard let a, let b, b != 0, a.isFinite, b.isFinite else { return nil }
        return a / b
    }

    /// CPU seconds spent per gigabit carried: busy CPU time / (bits / 1e9).
    static func cpuSecondsPerGigabit(busySeconds: Double, bits: Double) -> Double? {
        guard bits > 0 else { return nil }
        return busySeconds / (bits / 1e9)
    }
}

// MARK: - iperf3 -J

/// The parts of iperf3's JSON report the bench uses.
struct IperfReport: Equatable, Sendable {
    /// Receiver-side goodput, bits per second (sum over streams).
    var receivedBitsPerSecond: Double
    var receivedBytes: Double
    var seconds: Double
    /// TCP retransmits on the sender side (nil when iperf3 did not report them).
    var retransmits: Int?
    var streams: Int
    /// iperf3's own error text, when it ran but failed (e.g. "unable to connect to server").
    var error: String?
}

enum IperfParseError: Error, CustomStringConvertible, Equatable {
    case notJSON(String)
    case iperfError(String)
    case missing(String)
    var description: String {
        switch self {
        case .notJSON(let head): "iperf3 output is not JSON: \(head)"
        case .iperfError(let e): "iperf3 reported: \(e)"
        case .missing(let what): "iperf3 JSON has no \(what)"
        }
    }
}

enum IperfJSON {
    /// Parses `iperf3 -J` client output: the receiver's sums under end.sum_received, the sender's
    /// retransmits under end.sum_sent, the stream count under start.test_start.
    static func parse(_ text: String) throws(IperfParseError) -> IperfReport {
        let root: JSONValue
        do {
            root = try JSONValue.parse(text)
        } catch {
            throw .notJSON(String(text.prefix(200)))
        }
        let received = root["end"]?["sum_received"]
        let error = root["error"]?.stringValue
        let bitsPerSecond = received?["bits_per_second"]?.doubleValue
        if let error, bitsPerSecond == nil { throw .iperfError(error) }
        guard let bitsPerSecond else { throw .missing("end.sum_received.bits_per_second") }
        return IperfReport(receivedBitsPerSecond: bitsPerSecond, receivedBytes: received?["bytes"]?.doubleValue ?? 0,
                           seconds: received?["seconds"]?.doubleValue ?? 0,
                           retransmits: (root["end"]?["sum_sent"]?["retransmits"]?.int64Value).map { Int($0) },
                           streams: (root["start"]?["test_start"]?["num_streams"]?.int64Value).map { Int($0) } ?? 1,
                           error: error)
    }
}

private extension JSONValue {
    /// iperf3 writes rates and byte counts as JSON numbers with fractions and exponents.
    var doubleValue: Double? { if case .number(let text) = self { Double(text) } else { nil } }
}

// MARK: - /proc

/// Aggregate CPU times from the first line of /proc/stat, in clock ticks.
struct CPUTimes: Equatable, Sendable {
    var user: UInt64 = 0, nice: UInt64 = 0, system: UInt64 = 0, idle: UInt64 = 0
    var iowait: UInt64 = 0, irq: UInt64 = 0, softirq: UInt64 = 0, steal: UInt64 = 0

    /// Time the CPUs did work (softirq is where most packet processing lands).
    var busy: UInt64 { user + nice + system + irq + softirq + steal }
    var total: UInt64 { busy + idle + iowait }

    /// Parses the "cpu  …" line of /proc/stat (guest times are already inside user/nice).
    static func parse(procStat text: String) -> CPUTimes? {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return nil }
        let f = line.split(separator: " ").dropFirst().compactMap { UInt64($0) }
        guard f.count >= 4 else { return nil }
        func at(_ i: Int) -> UInt64 { i < f.count ? f[i] : 0 }
        return CPUTimes(user: at(0), nice: at(1), system: at(2), idle: at(3), iowait: at(4), irq: at(5), softirq: at(6), steal: at(7))
    }

    static func - (a: CPUTimes, b: CPUTimes) -> CPUTimes {
        CPUTimes(user: a.user &- b.user, nice: a.nice &- b.nice, system: a.system &- b.system, idle: a.idle &- b.idle,
                 iowait: a.iowait &- b.iowait, irq: a.irq &- b.irq, softirq: a.softirq &- b.softirq, steal: a.steal &- b.steal)
    }
}

/// Memory figures of one process from /proc/PID/status, in KiB.
struct ProcessMemory: Codable, Equatable, Sendable {
    var rssKiB: Int
    var hwmKiB: Int
    /// The anonymous part of VmRSS (heap, stacks): what grows with peers.
    var anonKiB: Int? = nil
    /// The file-backed part of VmRSS (the binary's and libraries' pages in use).
    var fileKiB: Int? = nil

    static func parse(status text: String) -> ProcessMemory? {
        var rss: Int?, hwm: Int?, anon: Int?, file: Int?
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2 else { continue }
            switch parts[0] {
            case "VmRSS:": rss = Int(parts[1])
            case "VmHWM:": hwm = Int(parts[1])
            case "RssAnon:": anon = Int(parts[1])
            case "RssFile:": file = Int(parts[1])
            default: break
            }
        }
        guard let rss, let hwm else { return nil }
        return ProcessMemory(rssKiB: rss, hwmKiB: hwm, anonKiB: anon, fileKiB: file)
    }
}

/// utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in clock ticks.
enum ProcessCPU {
    static func parse(stat text: String) -> UInt64? {
        // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); utime is field 14 → index 11, stime index 12.
        guard fields.count > 12, let u = UInt64(fields[11]), let s = UInt64(fields[12]) else { return nil }
        return u + s
    }
}

// MARK: - Rounds → table

/// One data path's samples over the rounds, per metric.
struct PathSamples: Sendable {
    var path: String
    var single: [Double] = []        // Gbit/s
    var multi: [Double] = []         // Gbit/s, 4 streams
    var rrP50: [Double] = []         // µs
    var rrP99: [Double] = []         // µs
    var rrRate: [Double] = []        // transactions/s
    var cpuPerGbit: [Double] = []    // CPU-s per Gbit (whole machine, 4-stream run)
    var processCPUPerGbit: [Double] = []  // CPU-s per Gbit of this process (the userspace path's threads)
    var failures: [String] = []
}

/// What the JSON and the table hold for one path.
struct PathSummary: Codable, Sendable {
    var path: String
    var singleStreamGbps: Spread?
    var fourStreamGbps: Spread?
    var rrP50Microseconds: Spread?
    var rrP99Microseconds: Spread?
    var rrTransactionsPerSecond: Spread?
    var cpuSecondsPerGbit: Spread?
    /// The bench process's own CPU over the same run: the userspace data path's threads live here
    /// (for the kernel and BPF paths it is ~0: no userspace work per packet).
    var processCPUSecondsPerGbit: Spread?
    /// Median of this path ÷ median of the kernel vxlan path (2), per metric.
    var ratioToKernelVXLAN: [String: Double]
    /// Median of this path ÷ median of the no-overlay path (1), per metric.
    var ratioToNoOverlay: [String: Double]
    var failures: [String]
}

enum BenchSummary {
    static let metricKeys = ["single", "multi4", "rrP50", "rrP99", "cpuPerGbit"]

    static func medians(_ s: PathSamples) -> [String: Double] {
        var m: [String: Double] = [:]
        let pairs: [(String, [Double])] = [("single", s.single), ("multi4", s.multi), ("rrP50", s.rrP50),
                                           ("rrP99", s.rrP99), ("cpuPerGbit", s.cpuPerGbit)]
        for (k, v) in pairs where !v.isEmpty { m[k] = BenchMath.median(v) }
        return m
    }

    /// Summaries with ratios against the paths named `kernel` and `plain` (absent: no ratios).
    static func summarize(_ all: [PathSamples], kernel: String, plain: String) -> [PathSummary] {
        let byName = Dictionary(all.map { ($0.path, medians($0)) }, uniquingKeysWith: { a, _ in a })
        return all.map { s in
            let mine = byName[s.path] ?? [:]
            // An IPv6 path is compared with the kernel's flannel-v6 when that ran.
            let kernel6 = BenchPath.kernelVXLAN6.rawValue
            let reference = BenchPath(rawValue: s.path)?.isIPv6 == true && byName[kernel6] != nil ? kernel6 : kernel
            var toKernel: [String: Double] = [:], toPlain: [String: Double] = [:]
            for k in metricKeys {
                if let r = BenchMath.ratio(mine[k], byName[reference]?[k]) { toKernel[k] = r }
                if let r = BenchMath.ratio(mine[k], byName[plain]?[k]) { toPlain[k] = r }
            }
            return PathSummary(path: s.path, singleStreamGbps: Spread(s.single), fourStreamGbps: Spread(s.multi),
                               rrP50Microseconds: Spread(s.rrP50), rrP99Microseconds: Spread(s.rrP99),
                               rrTransactionsPerSecond: Spread(s.rrRate), cpuSecondsPerGbit: Spread(s.cpuPerGbit),
                               processCPUSecondsPerGbit: Spread(s.processCPUPerGbit),
                               ratioToKernelVXLAN: toKernel, ratioToNoOverlay: toPlain, failures: s.failures)
        }
    }
}

// MARK: - Text formatting

enum BenchFormat {
    /// "1.23" with `digits` decimals; "-" for nil/NaN.
    static func number(_ v: Double?, _ digits: Int = 2) -> String {
        guard let v, v.isFinite else { return "-" }
        return String(format: "%.\(digits)f", v)
    }

    /// "min/median/max".
    static func spread(_ s: Spread?, _ digits: Int = 2) -> String {
        guard let s else { return "-" }
        return "\(number(s.min, digits))/\(number(s.median, digits))/\(number(s.max, digits))"
    }

    /// A Markdown table (also readable as plain text on a terminal).
    static func table(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = Swift.max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            "| " + cells.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: " | ") + " |"
        }
        let rule = "|" + widths.map { String(repeating: "-", count: $0 + 2) }.joined(separator: "|") + "|"
        return ([line(header), rule] + rows.map(line)).joined(separator: "\n")
    }

    static func dataPathTables(_ summaries: [PathSummary]) -> String {
        let absolute = table(
            header: ["path", "1-stream Gbit/s", "4-stream Gbit/s", "RR p50 µs", "RR p99 µs", "CPU-s/Gbit", "of which process"],
            rows: summaries.map { s in
                [s.path, spread(s.singleStreamGbps), spread(s.fourStreamGbps), spread(s.rrP50Microseconds, 0),
                 spread(s.rrP99Microseconds, 0), spread(s.cpuSecondsPerGbit), spread(s.processCPUSecondsPerGbit)]
            })
        func ratios(_ pick: (PathSummary) -> [String: Double]) -> [[String]] {
            summaries.map { s in [s.path] + BenchSummary.metricKeys.map { number(pick(s)[$0]) } }
        }
        let header = ["path", "1-stream", "4-stream", "RR p50", "RR p99", "CPU/Gbit"]
        return "min/median/max over the rounds\n" + absolute
            + "\n\nratio of medians to (2) kernel vxlan as flanneld sets it up\n" + table(header: header, rows: ratios { $0.ratioToKernelVXLAN })
            + "\n\nratio of medians to (1) no overlay (host-gw routes)\n" + table(header: header, rows: ratios { $0.ratioToNoOverlay })
    }
}

/// Open file descriptors of a process: the entries of /proc/PID/fd.
enum ProcessFDs {
    static func count(pid: Int32) -> Int? {
        guard let dir = opendir("/proc/\(pid)/fd") else { return nil }
        defer { closedir(dir) }
        var n = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { n += 1 }
        }
        return n
    }
}
