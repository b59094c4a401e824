// `fxdp-bench` — side-by-side performance of every data path and of the control plane, in one
// run on this machine. `make bench` runs it in full, `make bench QUICK=1` with --quick.
// Output: tables on stdout, bench-results/latest.json, bench-results/latest.md, and with
// --update-doc the figures section of BENCHMARKS.md (between its bench markers) rewritten.

import ArgumentParser
import Foundation
import Glibc
import TestSupport

public struct Bench: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "fxdp-bench",
        abstract: "Benchmark the data paths (throughput, RR latency, CPU/Gbit), the BPF programs and peer convergence.",
        discussion: "Run as root: it builds network namespaces (named fxbench-<pid>-*) and loads BPF programs; "
            + "everything is removed on exit, on error and on Ctrl-C.")

    @Flag(help: "Everyday mode: fewer rounds, shorter runs, 100 and 1000 peers (< 3 minutes).")
    var quick = false

    @Option(help: ArgumentHelp("Parts to run, comma-separated: \(BenchPart.allCases.map(\.rawValue).joined(separator: ",")) "
            + "(default: all but soak; e.g. --parts daemon --peers 100,50000 for the daemon's memory alone)."))
    var parts: String?

    @Option(help: "Interleaved rounds per data path (default 5, quick 2).")
    var rounds: Int?

    @Option(help: "Seconds per iperf3 run (default 5, quick 2).")
    var seconds: Int?

    @Option(name: .customLong("rr-transactions"), help: "Request/response transactions per round (default 10000, quick 2000).")
    var rrTransactions: Int?

    @Option(help: "Peer counts for the control-plane and daemon parts, comma-separated (default 100,1000,5000,10000,50000; quick 100,1000).")
    var peers: String?

    @Option(name: .customLong("etcd-load-leases"), help: "Leases in etcd for the etcd-load part (default 5000, quick 1000).")
    var etcdLoadLeases: Int?

    @Option(name: .customLong("etcd-load-nodes"), help: "Nodes started at once in the etcd-load part (default 20, quick 8).")
    var etcdLoadNodes: Int?

    @Option(name: .customLong("soak-minutes"), help: "Length of the churn soak (--parts soak) in minutes (default 30).")
    var soakMinutes: Double = 30

    @Option(name: .customLong("soak-rate"), help: "Lease adds, changes and removals per second in the soak (default 20).")
    var soakRate: Double = 20

    @Option(name: .customLong("watch-changes"), help: "Lease changes timed per peer count (default 50, quick 20).")
    var watchChanges: Int?

    @Option(help: ArgumentHelp("Data paths to run, comma-separated ids: \(BenchPath.allCases.map(\.shortID).joined(separator: ",")) (default all)."))
    var paths: String?

    @Flag(name: .customLong("skip-datapath"), help: "Skip the traffic part (as --parts without datapath).")
    var skipDatapath = false

    @Flag(name: .customLong("skip-control-plane"), help: "Skip the in-process etcd/convergence, daemon and etcd-load parts.")
    var skipControlPlane = false

    @Flag(name: .customLong("skip-daemon"), help: "Skip the runs of the flanneld-xdp binary at N peers.")
    var skipDaemon = false

    @Option(help: "The flanneld-xdp binary for the daemon runs (default: next to fxdp-bench).")
    var daemon: String?

    @Option(name: .customLong("daemon-wrapper"),
            help: ArgumentHelp("Run the daemon under this command, which must exec it in place (the bench stops that pid): e.g. "
                + "\"/usr/bin/env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so DUMP_HEAPTRACK_OUTPUT=/tmp/fxdp.raw\" "
                + "to see where its memory goes (timings then include the profiler's cost)."))
    var daemonWrapper: String?

    @Option(name: .customLong("keep-daemon-logs"), help: "Copy each daemon run's log into this folder (daemon-<peers>.log).")
    var keepDaemonLogs: String?

    @Option(help: "Where to write the JSON results.")
    var output = "bench-results/latest.json"

    @Option(name: .customLong("update-doc"), help: "Rewrite the figures section of this Markdown file (e.g. BENCHMARKS.md).")
    var updateDoc: String?

    @Option(name: .customLong("from-json"), help: "Measure nothing: render the report of an earlier run's JSON (with --update-doc to refresh a document).")
    var fromJSON: String?

    public func validate() throws {
        if let rounds, rounds < 1 { throw ValidationError("--rounds must be at least 1") }
        if let seconds, seconds < 1 { throw ValidationError("--seconds must be at least 1") }
        if let p = peers, BenchOptions.parsePeers(p) == nil { throw ValidationError("--peers: comma-separated positive numbers, e.g. 100,1000") }
        if let p = parts, BenchPart.parse(p) == nil {
            throw ValidationError("--parts: names among \(BenchPart.allCases.map(\.rawValue).joined(separator: ","))")
        }
        if soakMinutes <= 0 || soakRate <= 0 { throw ValidationError("--soak-minutes and --soak-rate must be positive") }
        if let n = etcdLoadNodes, n < 1 { throw ValidationError("--etcd-load-nodes must be at least 1") }
        if let n = etcdLoadLeases, n < 1 { throw ValidationError("--etcd-load-leases must be at least 1") }
        if let p = paths, BenchOptions.parsePaths(p) == nil {
            throw ValidationError("--paths: ids among \(BenchPath.allCases.map(\.shortID).joined(separator: ","))")
        }
    }

    public init() {}

    public func run() async throws {
        if let fromJSON {
            let data = try Data(contentsOf: URL(fileURLWithPath: fromJSON))
            let report = try JSONDecoder().decode(BenchReport.self, from: data)
            try publish(report, json: nil)
            return
        }
        guard Privileges.isRoot else {
            throw ValidationError("fxdp-bench needs root (network namespaces, BPF); run it through `sudo make bench`")
        }
        var selected = parts.flatMap(BenchPart.parse) ?? BenchPart.defaultSet
        if skipDatapath { selected.remove(.datapath) }
        if skipControlPlane { selected.subtract([.controlPlane, .daemon, .etcdLoad]) }
        if skipDaemon { selected.remove(.daemon) }
        let options = BenchOptions(
            quick: quick, rounds: rounds ?? (quick ? 2 : 5), seconds: seconds ?? (quick ? 2 : 5),
            rrTransactions: rrTransactions ?? (quick ? 2000 : 10000),
            peers: peers.flatMap(BenchOptions.parsePeers) ?? (quick ? [100, 1000] : [100, 1000, 5000, 10000, 50000]),
            watchChanges: watchChanges ?? (quick ? 20 : 50),
            paths: paths.flatMap(BenchOptions.parsePaths) ?? BenchPath.allCases,
            daemonPath: daemon ?? DaemonBench.defaultDaemonPath(),
            daemonWrapper: daemonWrapper.map { $0.split(separator: " ").map(String.init) } ?? [], keepDaemonLogs: keepDaemonLogs,
            parts: selected,
            etcdLoadLeases: etcdLoadLeases ?? (quick ? 1000 : 5000), etcdLoadNodes: etcdLoadNodes ?? (quick ? 8 : 20),
            soakMinutes: soakMinutes, soakRate: soakRate)
        let cleanup = BenchCleanup()
        cleanup.installSignalHandlers()
        defer { cleanup.run() }
        let report: BenchReport
        do {
            report = try await BenchRunner(options: options, cleanup: cleanup).run()
            try cleanup.checkInterrupted()
        } catch {
            // After a signal the handler owns the exit (130/143); wait for its cleanup, report nothing.
            if cleanup.interrupted { cleanup.run(); throw ExitCode(130) }
            throw error
        }

        try publish(report, json: try BenchReportText.json(report))
        if let soak = report.soak, !soak.passed { throw ExitCode(1) }
    }

    /// Where `--update-doc` puts the charts, relative to the document's folder.
    static let docChartFolder = "docs/bench/"

    /// Prints the report, writes the JSON (when given) with the Markdown and the SVG charts beside
    /// it, and the document with its charts in docs/bench/ next to it.
    private func publish(_ report: BenchReport, json: String?) throws {
        let charts = BenchCharts.all(report)
        let markdown = BenchReportText.markdown(report, chartPrefix: "")
        print("\n" + BenchReportText.markdown(report))
        if let json {
            try writeText(output, json)
            let folder = (output as NSString).deletingLastPathComponent
            let mdPath = (output as NSString).deletingPathExtension + ".md"
            try writeText(mdPath, markdown)
            for chart in charts { try writeText((folder as NSString).appendingPathComponent(chart.fileName), chart.svg) }
            print("wrote \(output), \(mdPath) and \(charts.map(\.fileName).joined(separator: ", "))")
        }
        if let updateDoc {
            let folder = ((updateDoc as NSString).deletingLastPathComponent as NSString).appendingPathComponent(Self.docChartFolder)
            for chart in charts { try writeText((folder as NSString).appendingPathComponent(chart.fileName), chart.svg) }
            let existing = (try? String(contentsOfFile: updateDoc, encoding: .utf8)) ?? ""
            let figures = BenchReportText.markdown(report, chartPrefix: Self.docChartFolder)
            try writeText(updateDoc, BenchReportText.replacingFigures(in: existing, with: figures))
            print("updated the figures in \(updateDoc) and the charts in \(folder)")
        }
    }

    private func writeText(_ path: String, _ text: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }
}

/// The parts of a run; `--parts` picks some.
enum BenchPart: String, CaseIterable, Codable, Sendable {
    case datapath
    case controlPlane = "control-plane"
    case daemon
    case etcdLoad = "etcd-load"
    /// Not in a default run: `make soak`.
    case soak

    static let defaultSet: Set<BenchPart> = Set(allCases).subtracting([.soak])

    static func parse(_ text: String) -> Set<BenchPart>? {
        var result: Set<BenchPart> = []
        for name in text.split(separator: ",") {
            guard let part = BenchPart(rawValue: name.trimmingCharacters(in: .whitespaces)) else { return nil }
            result.insert(part)
        }
        return result.isEmpty ? nil : result
    }
}

struct BenchOptions: Sendable {
    var quick: Bool
    var rounds: Int
    var seconds: Int
    var rrTransactions: Int
    var peers: [Int]
    var watchChanges: Int
    var paths: [BenchPath]
    /// The flanneld-xdp binary of the daemon and soak parts.
    var daemonPath: String? = nil
    /// A command the daemon runs under (a profiler), empty for none.
    var daemonWrapper: [String] = []
    /// A folder the daemon runs' logs are copied into, nil to keep none.
    var keepDaemonLogs: String? = nil
    var parts: Set<BenchPart> = BenchPart.defaultSet
    var etcdLoadLeases = 5000
    var etcdLoadNodes = 20
    var soakMinutes = 30.0
    var soakRate = 20.0

    static func parsePeers(_ text: String) -> [Int]? {
        let values = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 && ($0 ?? 0) <= 60000 }) else { return nil }
        return values.compactMap { $0 }
    }

    static func parsePaths(_ text: String) -> [BenchPath]? {
        var result: [BenchPath] = []
        for id in text.split(separator: ",") {
            guard let p = BenchPath.allCases.first(where: { $0.shortID == id.trimmingCharacters(in: .whitespaces) }) else { return nil }
            result.append(p)
        }
        return result.isEmpty ? nil : result
    }

    /// Round r visits the paths rotated by r, so no path is always first (or always right after
    /// the same neighbour) when the machine's load changes during the run.
    static func order(_ paths: [BenchPath], round: Int) -> [BenchPath] {
        guard !paths.isEmpty else { return [] }
        let k = round % paths.count
        return Array(paths[k...] + paths[..<k])
    }
}

/// The machine the figures came from.
struct MachineInfo: Codable, Sendable {
    var kernel: String
    var cpuModel: String
    var cpus: Int
    var date: String

    static func current() -> MachineInfo {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let cpuinfo = readFile("/proc/cpuinfo")
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown"
        let formatter = ISO8601DateFormatter()
        return MachineInfo(kernel: release, cpuModel: model, cpus: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                           date: formatter.string(from: Date()))
    }
}

struct BenchReport: Codable, Sendable {
    var machine: MachineInfo
    var quick: Bool
    var rounds: Int
    var secondsPerRun: Int
    var rrTransactions: Int
    var offloads: [String: [String: String]]
    var attachments: [String: [String]]
    var datapath: [PathSummary]
    var packetCosts: [PacketCost]
    var controlPlane: [ConvergenceResult]
    var daemon: [DaemonResult] = []
    /// Size of the daemon binary measured, in bytes.
    var daemonBinaryBytes: Int?
    var etcdLoad: EtcdLoadReport?
    var soak: SoakReport?
    var notes: [String]
}

struct BenchRunner {
    var options: BenchOptions
    var cleanup: BenchCleanup

    func log(_ s: String) {
        print(s)
        fflush(nil)
    }

    func run() async throws -> BenchReport {
        let parts = options.parts
        let machine = MachineInfo.current()
        log("fxdp-bench\(options.quick ? " --quick" : ""): kernel \(machine.kernel), \(machine.cpuModel), \(machine.cpus) CPUs")
        var report = BenchReport(machine: machine, quick: options.quick, rounds: options.rounds, secondsPerRun: options.seconds,
                                 rrTransactions: options.rrTransactions, offloads: [:], attachments: [:], datapath: [],
                                 packetCosts: [], controlPlane: [], notes: [])
        if parts.contains(.datapath) {
            var labs: [PathLab] = []
            var samples: [BenchPath: PathSamples] = [:]
            for path in options.paths {
                try cleanup.checkInterrupted()
                log("setting up \(path.rawValue) …")
                do {
                    let pl = try PathLab(path: path, registry: cleanup)
                    try cleanup.checkInterrupted()
                    if try !pl.lab.waitForPing(from: pl.nodes[0].podNamespace, to: pl.nodes[1].podIP, timeout: 5) {
                        report.notes.append("\(path.rawValue): pod 1 cannot ping pod 2 after set-up; path skipped")
                        pl.close()
                        continue
                    }
                    labs.append(pl)
                    samples[path] = PathSamples(path: path.rawValue)
                    report.offloads[path.rawValue] = pl.offloads
                    if !pl.notes.isEmpty { report.attachments[path.rawValue] = pl.notes }
                } catch {
                    try cleanup.checkInterrupted()
                    report.notes.append("\(path.rawValue): set-up failed: \(error)")
                    log("  set-up failed: \(error)")
                }
            }
            let runner = DatapathRunner(seconds: options.seconds, rrTransactions: options.rrTransactions)
            for round in 0..<options.rounds {
                for path in BenchOptions.order(labs.map(\.path), round: round) {
                    try cleanup.checkInterrupted()
                    guard let pl = labs.first(where: { $0.path == path }) else { continue }
                    var s = samples[path]!
                    runner.round(pl, into: &s)
                    samples[path] = s
                    log("round \(round + 1)/\(options.rounds) \(path.rawValue): 1-stream \(BenchFormat.number(s.single.last)) Gbit/s, "
                        + "4-stream \(BenchFormat.number(s.multi.last)) Gbit/s, RR p50 \(BenchFormat.number(s.rrP50.last, 0)) µs "
                        + "p99 \(BenchFormat.number(s.rrP99.last, 0)) µs, \(BenchFormat.number(s.cpuPerGbit.last)) CPU-s/Gbit"
                        + (s.failures.isEmpty ? "" : " [failures: \(s.failures.count)]"))
                }
            }
            // Which way the BPF paths' packets went over all rounds: the counters that moved.
            for pl in labs where !pl.bpf.isEmpty {
                report.attachments[pl.path.rawValue, default: []].append(pl.countersMoved())
            }
            let ordered = options.paths.compactMap { samples[$0] }
            report.datapath = BenchSummary.summarize(ordered, kernel: BenchPath.kernelVXLAN.rawValue, plain: BenchPath.hostGW.rawValue)

            if let bpfLab = labs.first(where: { $0.path == .bpfXDP }) {
                log("per-packet cost (BPF_PROG_TEST_RUN) …")
                do {
                    report.packetCosts = try PacketBench.run(on: bpfLab, runs: options.quick ? 2000 : 20000,
                                                             repeatCount: options.quick ? 10000 : 100_000)
                } catch {
                    report.notes.append("per-packet cost failed: \(error)")
                }
            }
            if let fastLab = labs.first(where: { $0.path == .bpfFast }) {
                log("per-packet cost of the fast path (BPF_PROG_TEST_RUN) …")
                do {
                    report.packetCosts += try PacketBench.runFast(on: fastLab, runs: options.quick ? 2000 : 20000)
                } catch {
                    report.notes.append("fast-path per-packet cost failed: \(error)")
                }
            }
            for pl in labs { pl.close() }
        }
        if parts.contains(.controlPlane) {
            try cleanup.checkInterrupted()
            log("control plane: etcd + \(options.peers.map(String.init).joined(separator: ", ")) leases …")
            do {
                report.controlPlane = try await ControlPlaneBench.run(sizes: options.peers, watchChanges: options.watchChanges,
                                                                      cleanup: cleanup, log: log)
            } catch {
                report.notes.append("control-plane bench failed: \(error)")
                log("control plane failed: \(error)")
            }
        }
        let daemonPath = options.daemonPath ?? DaemonBench.defaultDaemonPath()
        let daemonUsable = access(daemonPath, X_OK) == 0
        if daemonUsable, parts.contains(.daemon) || parts.contains(.soak) {
            var st = stat()
            if stat(daemonPath, &st) == 0 { report.daemonBinaryBytes = Int(st.st_size) }
        }
        if parts.contains(.daemon) {
            try cleanup.checkInterrupted()
            if daemonUsable {
                log("daemon: \(daemonPath) at \(options.peers.map(String.init).joined(separator: ", ")) peers …")
                report.daemon = DaemonBench.run(daemonPath: daemonPath, wrapper: options.daemonWrapper, keepLogs: options.keepDaemonLogs,
                                                sizes: options.peers, watchChanges: options.quick ? 10 : 30, cleanup: cleanup, log: log)
            } else {
                report.notes.append("daemon runs skipped: no executable at \(daemonPath)")
            }
        }
        if parts.contains(.etcdLoad) {
            try cleanup.checkInterrupted()
            log("etcd load: \(options.etcdLoadNodes) nodes, \(options.etcdLoadLeases) leases, through counting proxies …")
            do {
                report.etcdLoad = try await EtcdLoadBench.run(leases: options.etcdLoadLeases, nodes: options.etcdLoadNodes,
                                                              cleanup: cleanup, log: log)
            } catch {
                try cleanup.checkInterrupted()
                report.notes.append("etcd-load bench failed: \(error)")
                log("etcd load failed: \(error)")
            }
        }
        if parts.contains(.soak) {
            try cleanup.checkInterrupted()
            if daemonUsable {
                log("soak: \(BenchFormat.number(options.soakMinutes, 1)) min of lease churn at \(BenchFormat.number(options.soakRate, 0))/s …")
                report.soak = SoakBench.run(daemonPath: daemonPath, minutes: options.soakMinutes, rate: options.soakRate,
                                            cleanup: cleanup, log: log)
            } else {
                report.notes.append("soak skipped: no executable at \(daemonPath)")
            }
        }
        report.notes.append("CPU-s/Gbit: busy time of the whole machine (/proc/stat: user+nice+system+irq+softirq+steal) over the "
            + "4-stream run, divided by the gigabits received; other work on the machine counts too.")
        report.notes.append("Control-plane RSS columns are the bench process's own (it holds etcd clients, labs and all); "
            + "the daemon's own memory is in the flanneld-xdp table.")
        return report
    }
}
