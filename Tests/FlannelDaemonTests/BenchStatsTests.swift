// The pure half of `fxdp-bench`: parsing tool output and aggregating rounds. Nothing timed runs
// here; the inputs are fixed texts shaped like what iperf3 3.12 and Linux print.

import Testing
@testable import BenchKit

@Suite struct BenchStatsTests {
    @Test func medianPercentileAndRatio() {
        #expect(BenchMath.median([3, 1, 2]) == 2)
        #expect(BenchMath.median([4, 1, 3, 2]) == 2.5)
        #expect(BenchMath.median([]).isNaN)
        let samples = (1...100).map(Double.init)
        #expect(BenchMath.percentile(samples, 50) == 50)
        #expect(BenchMath.percentile(samples, 99) == 99)
        #expect(BenchMath.percentile(samples, 100) == 100)
        #expect(BenchMath.percentile([7], 99) == 7)
        #expect(BenchMath.percentile([5, 1, 9], 0) == 1)
        #expect(BenchMath.ratio(3, 2) == 1.5)
        #expect(BenchMath.ratio(3, 0) == nil)
        #expect(BenchMath.ratio(nil, 2) == nil)
        #expect(BenchMath.cpuSecondsPerGigabit(busySeconds: 2, bits: 4e9) == 0.5)
        #expect(BenchMath.cpuSecondsPerGigabit(busySeconds: 2, bits: 0) == nil)
        let s = Spread([2, .nan, 9, 4])
        #expect(s == Spread([2, 4, 9]))
        #expect(s?.min == 2 && s?.median == 4 && s?.max == 9 && s?.count == 3)
        #expect(Spread([]) == nil)
    }

    static let iperfOK = #"""
    {
        "start": { "connected": [], "test_start": { "protocol": "TCP", "num_streams": 4, "duration": 2 } },
        "intervals": [],
        "end": {
            "streams": [],
            "sum_sent": { "start": 0, "end": 2.0, "seconds": 2.0, "bytes": 750000000, "bits_per_second": 3.0e9, "retransmits": 12, "sender": true },
            "sum_received": { "start": 0, "end": 2.04, "seconds": 2.04, "bytes": 749000000, "bits_per_second": 2937254901.96, "sender": true },
            "cpu_utilization_percent": { "host_total": 51.2, "remote_total": 40.1 }
        }
    }
    """#

    @Test func iperfJSONIsParsed() throws {
        let r = try IperfJSON.parse(Self.iperfOK)
        #expect(r.receivedBitsPerSecond == 2937254901.96)
        #expect(r.receivedBytes == 749000000)
        #expect(r.seconds == 2.04)
        #expect(r.retransmits == 12)
        #expect(r.streams == 4)
        #expect(r.error == nil)
    }

    @Test func iperfFailuresAreTypedErrors() {
        #expect(throws: IperfParseError.iperfError("unable to connect to server: Connection refused")) {
            try IperfJSON.parse(#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#)
        }
        #expect(throws: IperfParseError.missing("end.sum_received.bits_per_second")) {
            try IperfJSON.parse(#"{"start": {}, "end": {"sum_sent": {"bits_per_second": 1}}}"#)
        }
        #expect(throws: IperfParseError.self) { try IperfJSON.parse("iperf3: error - the server is busy") }
    }

    @Test func procFilesAreParsed() {
        let stat = """
        cpu  4705 150 1120 16250 520 0 310 7 0 0
        cpu0 2000 50 500 8000 260 0 150 3 0 0
        intr 123
        """
        let t = CPUTimes.parse(procStat: stat)
        #expect(t == CPUTimes(user: 4705, nice: 150, system: 1120, idle: 16250, iowait: 520, irq: 0, softirq: 310, steal: 7))
        #expect(t?.busy == 4705 + 150 + 1120 + 310 + 7)
        let later = CPUTimes(user: 4805, nice: 150, system: 1220, idle: 16300, iowait: 520, irq: 0, softirq: 410, steal: 7)
        #expect((later - t!).busy == 300)
        #expect((later - t!).total == 350)
        #expect(CPUTimes.parse(procStat: "intr 1\n") == nil)

        let status = "Name:\tflanneld-xdp\nVmPeak:\t  300000 kB\nVmHWM:\t   21000 kB\nVmRSS:\t   19876 kB\nThreads:\t4\n"
        #expect(ProcessMemory.parse(status: status) == ProcessMemory(rssKiB: 19876, hwmKiB: 21000))
        #expect(ProcessMemory.parse(status: "Name:\tx\n") == nil)

        // The command name may hold spaces and parentheses; utime/stime are fields 14 and 15.
        let pidStat = "4242 (fx (lab) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 5 0 100 0 0"
        #expect(ProcessCPU.parse(stat: pidStat) == 168)
        #expect(ProcessCPU.parse(stat: "garbage") == nil)
    }

    @Test func summariesCarryRatiosToBothReferences() {
        var plain = PathSamples(path: "1 plain")
        plain.single = [4, 5, 6]; plain.multi = [8]; plain.rrP50 = [20]; plain.rrP99 = [40]; plain.cpuPerGbit = [1]
        var kernel = PathSamples(path: "2 kernel")
        kernel.single = [2, 2.5, 3]; kernel.multi = [4]; kernel.rrP50 = [25]; kernel.rrP99 = [50]; kernel.cpuPerGbit = [2]
        var bpf = PathSamples(path: "3a bpf")
        bpf.single = [2.5]; bpf.multi = []; bpf.rrP50 = [30]; bpf.rrP99 = [60]; bpf.cpuPerGbit = [1.5]
        bpf.failures = ["4-stream: boom"]
        let out = BenchSummary.summarize([plain, kernel, bpf], kernel: "2 kernel", plain: "1 plain")
        #expect(out.map(\.path) == ["1 plain", "2 kernel", "3a bpf"])
        let b = out[2]
        #expect(b.ratioToKernelVXLAN["single"] == 1)
        #expect(b.ratioToKernelVXLAN["multi4"] == nil, "no samples: no ratio")
        #expect(b.ratioToKernelVXLAN["rrP50"] == 1.2)
        #expect(b.ratioToKernelVXLAN["cpuPerGbit"] == 0.75)
        #expect(b.ratioToNoOverlay["single"] == 0.5)
        #expect(b.ratioToNoOverlay["cpuPerGbit"] == 1.5)
        #expect(out[1].ratioToKernelVXLAN["single"] == 1)
        #expect(b.fourStreamGbps == nil && b.failures == ["4-stream: boom"])

        let text = BenchFormat.dataPathTables(out)
        #expect(text.contains("| 3a bpf "))
        #expect(text.contains("2.50/2.50/2.50"))
        #expect(text.contains("ratio of medians to (2)"))
    }

    @Test func optionsAndOrdering() {
        #expect(BenchOptions.parsePeers("100, 1000,5000") == [100, 1000, 5000])
        #expect(BenchOptions.parsePeers("100,x") == nil)
        #expect(BenchOptions.parsePeers("0") == nil)
        #expect(BenchOptions.parsePaths("kvx,bxd") == [.kernelVXLAN, .bpfXDP])
        #expect(BenchOptions.parsePaths("kvx,nope") == nil)
        let all = BenchPath.allCases
        #expect(BenchOptions.order(all, round: 0) == all)
        #expect(BenchOptions.order(all, round: 1).first == all[1])
        #expect(BenchOptions.order(all, round: all.count) == all)
        #expect(Set(BenchOptions.order(all, round: 3)) == Set(all))
    }

    @Test func partsAndSlope() {
        #expect(BenchPart.parse("daemon, etcd-load") == [.daemon, .etcdLoad])
        #expect(BenchPart.parse("daemon,nope") == nil)
        #expect(!BenchPart.defaultSet.contains(.soak) && BenchPart.defaultSet.contains(.datapath))
        #expect(BenchMath.slope([(100, 20), (5100, 25), (50100, 70)]).map { ($0 * 1e6).rounded() } == 1000)
        #expect(BenchMath.slope([(100, 20)]) == nil)
    }

    /// The proxy tells requests apart by their first bytes, as the client sends them.
    @Test func etcdRequestsAreClassified() {
        func kind(_ text: String) -> CountingProxy.Kind { CountingProxy.classify(Array(text.utf8)) }
        #expect(kind("POST /v3/watch HTTP/1.1\r\nHost: x\r\n\r\n{}") == .watch)
        #expect(kind("GET /v2/keys/coreos.com/network/subnets?wait=true&recursive=true&waitIndex=9 HTTP/1.1\r\n") == .watch)
        #expect(kind("POST /v3/kv/range HTTP/1.1\r\n\r\n{\"key\":\"a\",\"range_end\":\"b\"}") == .list)
        #expect(kind("POST /v3/kv/range HTTP/1.1\r\n\r\n{\"key\":\"a\"}") == .get)
        #expect(kind("GET /v2/keys/coreos.com/network/subnets?recursive=true HTTP/1.1\r\n") == .list)
        #expect(kind("GET /v2/keys/coreos.com/network/config HTTP/1.1\r\n") == .get)
        #expect(kind("POST /v3/kv/txn HTTP/1.1\r\n") == .write && kind("PUT /v2/keys/x?prevIndex=3 HTTP/1.1\r\n") == .write)
        #expect(kind("POST /v3/lease/grant HTTP/1.1\r\n") == .lease && kind("garbage") == .other)
    }

    /// The steady state and restart at 5000 nodes follow from the per-node costs and the schedule.
    @Test func etcdLoadModel() {
        func cost(_ r: Double, _ b: Double) -> EtcdLoadCost { EtcdLoadCost(requests: r, bytesToEtcd: 0, bytesFromEtcd: b) }
        let v3 = EtcdLoadAPI(api: "v3", leases: 1000, nodes: 4, start: cost(7, 1_300_000), startByKind: ["list": cost(3, 1_200_000)],
                             startSeconds: 1, perEvent: cost(0, 500), perRenewal: cost(3, 2000), perListing: cost(1, 400_000),
                             idlePerSecond: cost(0, 0), watchesPerNode: 1, historyRelists: 0, failures: [])
        var v2 = v3
        v2.api = "v2"
        v2.perEvent = cost(1, 700)
        v2.perRenewal = cost(1, 900)
        v2.startByKind["get"] = cost(1, 500)
        let report = EtcdLoadReport(apis: [v3, v2], clusterNodes: 5000, renewIntervalSeconds: 82800, relistIntervalSeconds: 300)
        let rows = EtcdLoadModel.rows(report)
        #expect(rows.map(\.who) == ["flanneld-xdp, etcd v3", "flanneld-xdp, etcd v2", "flannel 0.17 (v2)"])
        // v3 steady: 3 requests per 23 h, a 5-page listing (1000 → 5000 leases) per 300 s, 5000/82800 events/s.
        #expect(abs(rows[0].steady.requests - (3.0 / 82800 + 5.0 / 300)) < 1e-9)
        #expect(abs(rows[0].steady.bytesFromEtcd - (2000.0 / 82800 + 2_000_000.0 / 300 + 500 * 5000 / 82800)) < 1e-6)
        // Restart: the start without its 3 listings, 3 listings at 5000 leases, 4999 events.
        #expect(abs(rows[0].restart.bytesFromEtcd - (100_000 + 3 * 2_000_000 + 500 * 4999)) < 1e-3)
        // flannel: 2 listings, a config GET and a PUT, then an event per request; no periodic re-list.
        #expect(abs(rows[2].restart.requests - (1 + 2 * 5 + 1 + 4999)) < 1e-9)
        #expect(abs(rows[2].steady.requests - (1.0 / 82800 + 5000.0 / 82800)) < 1e-9)
        let md = BenchReportText.etcdLoadText(report)
        #expect(md.contains("flannel 0.17 (v2)") && md.contains("| v3 "))
    }

    @Test func figuresSectionIsReplacedBetweenMarkers() {
        let doc = "# Benchmarks\n\nintro\n\n" + BenchReportText.beginMarker + "\nold figures\n" + BenchReportText.endMarker + "\n\ntail\n"
        let updated = BenchReportText.replacingFigures(in: doc, with: "new figures")
        #expect(updated.contains("new figures") && !updated.contains("old figures"))
        #expect(updated.hasPrefix("# Benchmarks\n\nintro\n\n") && updated.hasSuffix("\n\ntail\n"))
        #expect(BenchReportText.replacingFigures(in: updated, with: "new figures") == updated, "idempotent")
        let appended = BenchReportText.replacingFigures(in: "# B", with: "x")
        #expect(appended.hasPrefix("# B\n\n" + BenchReportText.beginMarker + "\nx\n"))
    }

    @Test func httpHeaderEndIsFound() {
        #expect(GatewayConnection.headerEnd(Array("HTTP/1.0 200 OK\r\nA: b\r\n\r\n{}".utf8)) == 21)
        #expect(GatewayConnection.headerEnd(Array("HTTP/1.0 200 OK\r\n".utf8)) == nil)
        #expect(GatewayConnection.headerEnd([]) == nil)
    }

    @Test func overlappingSpreadsAreCalledNoise() {
        var kernel = PathSummary(path: "2 kernel", ratioToKernelVXLAN: [:], ratioToNoOverlay: [:], failures: [])
        kernel.singleStreamGbps = Spread([5, 6, 7])
        kernel.fourStreamGbps = Spread([5, 6, 7])
        var bpf = PathSummary(path: "3b bpf", ratioToKernelVXLAN: [:], ratioToNoOverlay: [:], failures: [])
        bpf.singleStreamGbps = Spread([6.5, 8, 9])   // overlaps 5...7
        bpf.fourStreamGbps = Spread([2, 3])          // does not
        #expect(BenchReportText.overlapNote(bpf, kernel) == " Within noise (min–max over the rounds overlaps with (2)): 1-stream.")
        #expect(BenchReportText.overlapNote(bpf, nil) == "")
    }

    @Test func targetsAreReportedPlainly() {
        var bpf = PathSummary(path: "3a BPF", ratioToKernelVXLAN: ["single": 0.8, "multi4": 1.1, "rrP50": 0.9, "cpuPerGbit": 1.2],
                              ratioToNoOverlay: [:], failures: [])
        bpf.singleStreamGbps = Spread([1])
        let us = PathSummary(path: "4a userspace", ratioToKernelVXLAN: ["single": 0.3, "multi4": 0.6], ratioToNoOverlay: [:], failures: [])
        let cp = ConvergenceResult(peers: 5000, leaseWriteSeconds: 1, listSeconds: 0.2, bpfReconcileSeconds: 0.1, bpfTotalSeconds: 0.3,
                                   bpfEntries: 5000, kernelReconcileSeconds: 2, kernelEntries: 5000, watchP50Milliseconds: 3,
                                   watchP99Milliseconds: 9, watchSamples: 20, processRSSKiB: 40960, processHWMKiB: 41000,
                                   rssGrowthKiB: 2048, failures: [])
        let report = BenchReport(machine: MachineInfo(kernel: "6.18", cpuModel: "cpu", cpus: 2, date: "now"), quick: true, rounds: 1,
                                 secondsPerRun: 1, rrTransactions: 1, offloads: [:], attachments: [:], datapath: [bpf, us],
                                 packetCosts: [], controlPlane: [cp], notes: [])
        let lines = BenchReportText.targets(report)
        #expect(lines[0].contains("1-stream 0.80× (NOT met)") && lines[0].contains("4-stream 1.10× (met)"))
        #expect(lines[0].contains("RR p50 0.90× (met)") && lines[0].contains("CPU/Gbit 1.20× (NOT met)"))
        #expect(lines[1].contains("1-stream 0.30× (NOT met)") && lines[1].contains("4-stream 0.60× (met)"))
        #expect(lines[2].contains("300 ms (met)"))
        #expect(lines[3].contains("40.0 MiB"))
        let md = BenchReportText.markdown(report)
        #expect(md.contains("### Gap to the targets") && md.contains("| 5000 "))

        var withDaemon = report
        withDaemon.daemon = [DaemonResult(peers: 5000, startToFullMapSeconds: 0.5, startToReadySeconds: 2, watchP50Milliseconds: 4,
                                          watchP99Milliseconds: 8, watchSamples: 10, rssKiB: 20000, hwmKiB: 21000, failures: [])]
        let daemonLines = BenchReportText.targets(withDaemon)
        #expect(daemonLines[3].contains("20.5 MB (met)") && daemonLines[3].contains("500 ms"))
        #expect(BenchReportText.markdown(withDaemon).contains("start → full BPF map ms"))
    }
}
