// The bench's SVG charts: well-formed XML (parsed with an XML parser, not matched as text), one
// bar and one min–max whisker per path and metric in the ratio chart, one point per measured peer
// count in the others, and the Markdown embedding exactly the charts that were drawn.

import Foundation
import FoundationXML
import Testing
@testable import BenchKit

/// Counts elements by name; fails on anything that is not well-formed XML.
final class ElementCounter: NSObject, XMLParserDelegate {
    var counts: [String: Int] = [:]
    var texts: [String] = []
    private var inText = false

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        counts[name, default: 0] += 1
        if name == "text" { inText = true; texts.append("") }
    }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { inText = false }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) {
        if inText { texts[texts.count - 1] += string }
    }

    /// nil when `svg` parses; else the parser's error.
    static func parse(_ svg: String) -> (counter: ElementCounter, error: String?) {
        let counter = ElementCounter()
        let parser = XMLParser(data: Data(svg.utf8))
        parser.delegate = counter
        let ok = parser.parse()
        return (counter, ok ? nil : "\(parser.parserError.map { "\($0)" } ?? "unknown") at line \(parser.lineNumber)")
    }
}

@Suite struct BenchChartTests {
    static func path(_ p: BenchPath, _ single: [Double], _ multi: [Double], _ rr: [Double], _ cpu: [Double]) -> PathSummary {
        var s = PathSummary(path: p.rawValue, ratioToKernelVXLAN: [:], ratioToNoOverlay: [:], failures: [])
        s.singleStreamGbps = Spread(single)
        s.fourStreamGbps = Spread(multi)
        s.rrP50Microseconds = Spread(rr)
        s.cpuSecondsPerGbit = Spread(cpu)
        return s
    }

    static var report: BenchReport {
        let paths = [
            path(.hostGW, [14, 15, 15.1], [16, 22, 30], [69, 70, 81], [0.06, 0.06, 0.07]),
            path(.kernelVXLAN, [11.7, 12.1, 12.4], [14, 21, 24.7], [72, 75, 88], [0.07, 0.08, 0.09]),
            path(.bpfTC, [11.8, 12.0, 12.3], [20, 22, 23], [71, 75, 87], [0.08, 0.08, 0.09]),
            path(.userspaceVXLAN, [9.9, 11.3, 12.5], [10, 11, 12], [104, 106, 130], [0.15, 0.16, 0.18]),
        ]
        let cp = [100, 1000, 5000].map { n in
            ConvergenceResult(peers: n, leaseWriteSeconds: 1, listSeconds: 0.001 * Double(n) / 50, bpfReconcileSeconds: 0.0001 * Double(n) / 10,
                              bpfTotalSeconds: 0.03 * Double(n) / 1000, bpfEntries: n, kernelReconcileSeconds: 0.08 * Double(n) / 1000,
                              kernelEntries: n, watchP50Milliseconds: 2, watchP99Milliseconds: 6, watchSamples: 20,
                              processRSSKiB: 38000 + n, processHWMKiB: 40000 + n, rssGrowthKiB: n, failures: [])
        }
        let daemon = [100, 1000, 5000].map { n in
            DaemonResult(peers: n, startToFullMapSeconds: 0.05 + Double(n) / 12000, startToReadySeconds: 0.1 + Double(n) / 6000,
                         watchP50Milliseconds: 1, watchP99Milliseconds: 2, watchSamples: 10, rssKiB: 22000 + n / 2, hwmKiB: 23000 + n,
                         failures: [])
        }
        return BenchReport(machine: MachineInfo(kernel: "6.18", cpuModel: "cpu <&> \"quoted\"", cpus: 2, date: "now"), quick: true,
                           rounds: 3, secondsPerRun: 1, rrTransactions: 1, offloads: [:], attachments: [:], datapath: paths,
                           packetCosts: [], controlPlane: cp, daemon: daemon, notes: [])
    }

    @Test func everyChartIsWellFormedXML() throws {
        let charts = BenchCharts.all(Self.report)
        #expect(charts.map(\.fileName) == ["bench-ratios.svg", "bench-convergence.svg", "bench-memory.svg", "bench-memory-per-peer.svg"])
        for chart in charts {
            let (counter, error) = ElementCounter.parse(chart.svg)
            #expect(error == nil, "\(chart.fileName): \(error ?? "")")
            #expect(counter.counts["svg"] == 1 && counter.counts["title"] == 1, "\(chart.fileName)")
            #expect(chart.svg.hasPrefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\""))
            #expect(!chart.svg.contains("<script") && !chart.svg.contains("href"), "no scripts, no external references")
        }
    }

    @Test func ratioChartHasABarAndAWhiskerPerPathAndMetric() throws {
        let chart = try #require(BenchCharts.ratioChart(Self.report.datapath))
        let (counter, error) = ElementCounter.parse(chart.svg)
        #expect(error == nil)
        // 4 paths × 4 metrics bars, plus the background rectangle.
        #expect(counter.counts["rect"] == 4 * 4 + 1)
        // Each whisker is 3 lines; the grid has a line per 0.5 and the kernel line per panel.
        let whiskers = 4 * 4 * 3
        #expect((counter.counts["line"] ?? 0) > whiskers)
        // The kernel path is exactly 1 in every panel; the BPF path's 4-stream median 22/21.
        #expect(counter.texts.filter { $0 == "1.00" }.count >= 4, "\(counter.texts)")
        #expect(counter.texts.contains(BenchFormat.number(22.0 / 21.0, 2)))
        for p in Self.report.datapath { #expect(counter.texts.filter { $0 == p.path }.count == 4, "\(p.path)") }
        // Without the kernel vxlan path there is nothing to divide by.
        #expect(BenchCharts.ratioChart(Self.report.datapath.filter { $0.path != BenchPath.kernelVXLAN.rawValue }) == nil)
    }

    @Test func peerChartsHaveAPointPerMeasurement() throws {
        let convergence = try #require(BenchCharts.convergenceChart(Self.report.controlPlane, daemon: Self.report.daemon))
        let (c, e) = ElementCounter.parse(convergence.svg)
        #expect(e == nil)
        #expect(c.counts["circle"] == 4 * 3 && c.counts["polyline"] == 4)
        let memory = try #require(BenchCharts.memoryChart(Self.report.controlPlane, daemon: Self.report.daemon))
        let (m, me) = ElementCounter.parse(memory.svg)
        #expect(me == nil)
        #expect(m.counts["circle"] == 3 * 3 && m.texts.contains("peers (log scale)") && m.texts.contains("MiB"))
        #expect(BenchCharts.convergenceChart([], daemon: []) == nil)
        // The per-peer chart: a linear axis and each series' bytes per peer in its legend
        // (22000 KiB + n/2 KiB → 512 B per peer).
        let perPeer = try #require(BenchCharts.perPeerMemoryChart(Self.report.daemon))
        let (p, pe) = ElementCounter.parse(perPeer.svg)
        #expect(pe == nil)
        #expect(p.texts.contains("peers") && p.texts.contains { $0.hasPrefix("daemon VmRSS ≈ 512 B per peer") }, "\(p.texts)")
    }

    @Test func markdownEmbedsTheChartsThatWereDrawn() {
        let md = BenchReportText.markdown(Self.report, chartPrefix: "docs/bench/")
        #expect(md.contains("![Data paths: ratio to kernel vxlan, min–max whiskers](docs/bench/bench-ratios.svg)"))
        #expect(md.contains("(docs/bench/bench-convergence.svg)") && md.contains("(docs/bench/bench-memory.svg)"))
        #expect(!BenchReportText.markdown(Self.report).contains(".svg)"))
        var noDatapath = Self.report
        noDatapath.datapath = []
        #expect(!BenchReportText.markdown(noDatapath, chartPrefix: "").contains("bench-ratios.svg"))
    }

    @Test func niceAxisBounds() {
        #expect(BenchCharts.niceCeiling(0.7) == 1)
        #expect(BenchCharts.niceCeiling(13) == 20)
        #expect(BenchCharts.niceCeiling(420) == 500)
        #expect(BenchCharts.niceFloor(37) == 30)
    }
}
