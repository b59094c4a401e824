// BenchCharts — the bench's figures as SVG, written beside the Markdown and embedded in it:
//
//   bench-ratios.svg       each data path against the kernel vxlan path: the ratio of medians as a
//                          bar, the min and max of the rounds (each divided by the kernel median)
//                          as a whisker; one panel per metric
//   bench-convergence.svg  milliseconds against peer count (log scale): leases → BPF maps, the
//                          netlink pass over the same peers, the daemon binary from start to a full
//                          map and to ready
//   bench-memory.svg       resident memory against peer count: the bench process, the daemon
//   bench-memory-per-peer.svg  the daemon's memory on a linear peer axis, where the slope is the
//                          cost of one more peer: each series' least-squares bytes per peer
//
// Pure functions of a BenchReport (tested without a run), plain SVG 1.1 text with no scripts,
// fonts or external references, so GitHub and any browser show it as an image.

import Glibc

enum BenchCharts {
    struct Chart: Equatable {
        var fileName: String
        var title: String
        var svg: String
    }

    /// Every chart the report has data for.
    static func all(_ r: BenchReport) -> [Chart] {
        [ratioChart(r.datapath), convergenceChart(r.controlPlane, daemon: r.daemon), memoryChart(r.controlPlane, daemon: r.daemon),
         perPeerMemoryChart(r.daemon)]
            .compactMap { $0 }
    }

    // MARK: ratios to kernel vxlan

    static let ratioMetrics: [(key: String, title: String, better: String, spread: @Sendable (PathSummary) -> Spread?)] = [
        ("single", "1-stream throughput", "higher is better", { $0.singleStreamGbps }),
        ("multi4", "4-stream throughput", "higher is better", { $0.fourStreamGbps }),
        ("rrP50", "request/response p50 latency", "lower is better", { $0.rrP50Microseconds }),
        ("cpuPerGbit", "CPU seconds per Gbit", "lower is better", { $0.cpuSecondsPerGbit }),
    ]

    static func ratioChart(_ summaries: [PathSummary]) -> Chart? {
        guard let reference = summaries.first(where: { $0.path == BenchPath.kernelVXLAN.rawValue }) else { return nil }
        struct Row { var path: String; var ratio: Double; var low: Double; var high: Double }
        var panels: [(title: String, rows: [Row])] = []
        for metric in ratioMetrics {
            guard let base = metric.spread(reference)?.median, base > 0 else { continue }
            let rows = summaries.compactMap { s -> Row? in
                guard let spread = metric.spread(s) else { return nil }
                return Row(path: s.path, ratio: spread.median / base, low: spread.min / base, high: spread.max / base)
            }
            if !rows.isEmpty { panels.append(("\(metric.title) (\(metric.better))", rows)) }
        }
        guard !panels.isEmpty else { return nil }
        let maxRatio = max(1.2, panels.flatMap(\.rows).map(\.high).max() ?? 1)
        let scaleMax = (maxRatio * 2).rounded(.up) / 2
        // The right margin holds the value printed past each whisker's end.
        let width = 820.0, labelWidth = 220.0, plotLeft = labelWidth + 10, plotRight = width - 60
        let rowHeight = 20.0, panelGap = 34.0, top = 76.0
        func x(_ ratio: Double) -> Double { plotLeft + (plotRight - plotLeft) * ratio / scaleMax }
        var body: [String] = []
        var y = top
        for panel in panels {
            body.append(SVG.text(plotLeft, y - 8, panel.title, size: 13, weight: "bold"))
            let height = rowHeight * Double(panel.rows.count)
            // Grid and the kernel vxlan line at 1.
            var tick = 0.0
            while tick <= scaleMax + 1e-9 {
                body.append(SVG.line(x(tick), y, x(tick), y + height, stroke: "#dddddd"))
                body.append(SVG.text(x(tick), y + height + 12, BenchFormat.number(tick, 1), size: 10, anchor: "middle", fill: "#555555"))
                tick += 0.5
            }
            body.append(SVG.line(x(1), y - 2, x(1), y + height + 2, stroke: "#333333", dash: "4 3"))
            for (i, row) in panel.rows.enumerated() {
                let rowY = y + Double(i) * rowHeight
                let color = row.path == BenchPath.kernelVXLAN.rawValue ? "#999999" : row.path.hasPrefix("3") ? "#2a7ab9" : "#8fb8de"
                body.append(SVG.text(labelWidth, rowY + 14, row.path, size: 11, anchor: "end"))
                body.append(SVG.rect(x(0), rowY + 4, max(1, x(row.ratio) - x(0)), rowHeight - 8, fill: color))
                // Whisker: min–max of the rounds.
                let mid = rowY + rowHeight / 2
                body.append(SVG.line(x(row.low), mid, x(row.high), mid, stroke: "#000000"))
                body.append(SVG.line(x(row.low), mid - 4, x(row.low), mid + 4, stroke: "#000000"))
                body.append(SVG.line(x(row.high), mid - 4, x(row.high), mid + 4, stroke: "#000000"))
                body.append(SVG.text(x(row.high) + 4, rowY + 14, BenchFormat.number(row.ratio, 2), size: 10))
            }
            y += height + panelGap
        }
        let height = y - panelGap + 40
        let title = "Data paths as a ratio to kernel vxlan (as flanneld sets it up): median bar, min–max whisker"
        let note = "dashed line: kernel vxlan = 1; each value divided by the kernel vxlan median of the same rounds"
        let svg = SVG.document(width: width, height: height, title: title, body: [
            SVG.text(10, 22, title, size: 14, weight: "bold"), SVG.text(10, 40, note, size: 11, fill: "#555555"),
        ] + body)
        return Chart(fileName: "bench-ratios.svg", title: "Data paths: ratio to kernel vxlan, min–max whiskers", svg: svg)
    }

    // MARK: against peer count

    struct Series { var name: String; var color: String; var points: [(x: Double, y: Double)] }

    static func convergenceChart(_ cp: [ConvergenceResult], daemon: [DaemonResult]) -> Chart? {
        let series = [
            Series(name: "leases → BPF maps (list, decode, one pass)", color: "#2a7ab9",
                   points: cp.map { (Double($0.peers), $0.bpfTotalSeconds * 1000) }),
            Series(name: "the same peers into kernel tables (netlink pass)", color: "#d9822b",
                   points: cp.map { (Double($0.peers), $0.kernelReconcileSeconds * 1000) }),
            Series(name: "daemon: start → full BPF map", color: "#3a9a4a",
                   points: daemon.compactMap { d in d.startToFullMapSeconds.map { (Double(d.peers), $0 * 1000) } }),
            Series(name: "daemon: start → ready (/readyz 200)", color: "#9a3a8a",
                   points: daemon.compactMap { d in d.startToReadySeconds.map { (Double(d.peers), $0 * 1000) } }),
        ].filter { !$0.points.isEmpty }
        guard let svg = lineChart(title: "Convergence against peer count", yLabel: "milliseconds", series: series) else { return nil }
        return Chart(fileName: "bench-convergence.svg", title: "Convergence against peer count", svg: svg)
    }

    static func memoryChart(_ cp: [ConvergenceResult], daemon: [DaemonResult]) -> Chart? {
        let series = [
            Series(name: "daemon VmRSS after start", color: "#2a7ab9",
                   points: daemon.compactMap { d in d.rssKiB.map { (Double(d.peers), Double($0) / 1024) } }),
            Series(name: "daemon VmHWM (peak)", color: "#8fb8de",
                   points: daemon.compactMap { d in d.hwmKiB.map { (Double(d.peers), Double($0) / 1024) } }),
            Series(name: "bench process RSS (library path)", color: "#d9822b",
                   points: cp.compactMap { c in c.processRSSKiB.map { (Double(c.peers), Double($0) / 1024) } }),
        ].filter { !$0.points.isEmpty }
        guard let svg = lineChart(title: "Memory against peer count", yLabel: "MiB", series: series, yFromZero: true) else { return nil }
        return Chart(fileName: "bench-memory.svg", title: "Memory against peer count", svg: svg)
    }

    static func perPeerMemoryChart(_ daemon: [DaemonResult]) -> Chart? {
        func series(_ name: String, _ color: String, _ kib: (DaemonResult) -> Int?) -> Series {
            let points = daemon.compactMap { d in kib(d).map { (Double(d.peers), Double($0) / 1024) } }
            let slope = BenchMath.slope(points).map { " ≈ \(BenchFormat.number($0 * 1024 * 1024, 0)) B per peer" } ?? ""
            return Series(name: name + slope, color: color, points: points)
        }
        let all = [
            series("daemon VmRSS", "#2a7ab9", \.rssKiB),
            series("of which anonymous (heap, stacks)", "#3a9a4a", \.rssAnonKiB),
            series("daemon VmHWM (peak)", "#8fb8de", \.hwmKiB),
        ].filter { $0.points.count >= 2 }
        let title = "Daemon memory against peer count (linear: the slope is the cost per peer)"
        guard let svg = lineChart(title: title, yLabel: "MiB", series: all, logX: false) else { return nil }
        return Chart(fileName: "bench-memory-per-peer.svg", title: "Daemon memory per peer", svg: svg)
    }

    /// Lines over a peer axis (log scale unless `logX` is false); nil without points.
    static func lineChart(title: String, yLabel: String, series: [Series], yFromZero: Bool = true, logX: Bool = true) -> String? {
        let all = series.flatMap(\.points).filter { $0.x > 0 && $0.y.isFinite }
        guard !all.isEmpty else { return nil }
        // The legend goes under the plot, one line per series, so long names are never cut.
        let width = 780.0, left = 70.0, right = width - 30, top = 50.0, bottom = 370.0
        let height = bottom + 60 + 18 * Double(series.count)
        let xs = all.map(\.x), ys = all.map(\.y)
        func scaleX(_ v: Double) -> Double { logX ? log10(v) : v }
        let xMin = logX ? scaleX(xs.min()!) : 0, xMax = max(scaleX(xs.max()!), xMin + 1)
        let yMax = niceCeiling(ys.max()! * 1.1)
        let yMin = yFromZero ? 0 : niceFloor(ys.min()!)
        func px(_ v: Double) -> Double { left + (right - left) * (scaleX(v) - xMin) / (xMax - xMin) }
        func py(_ v: Double) -> Double { bottom - (bottom - top) * (v - yMin) / max(yMax - yMin, 1e-9) }
        var body: [String] = [SVG.text(10, 24, title, size: 14, weight: "bold")]
        for i in 0...5 {
            let v = yMin + (yMax - yMin) * Double(i) / 5
            body.append(SVG.line(left, py(v), right, py(v), stroke: "#dddddd"))
            body.append(SVG.text(left - 6, py(v) + 4, BenchFormat.number(v, v < 10 ? 1 : 0), size: 10, anchor: "end", fill: "#555555"))
        }
        for peers in Set(xs).sorted() {
            body.append(SVG.line(px(peers), top, px(peers), bottom, stroke: "#eeeeee"))
            body.append(SVG.text(px(peers), bottom + 16, "\(Int(peers))", size: 10, anchor: "middle", fill: "#555555"))
        }
        body.append(SVG.line(left, bottom, right, bottom, stroke: "#333333"))
        body.append(SVG.line(left, top, left, bottom, stroke: "#333333"))
        body.append(SVG.text((left + right) / 2, bottom + 34, logX ? "peers (log scale)" : "peers", size: 11, anchor: "middle"))
        body.append(SVG.text(14, (top + bottom) / 2, yLabel, size: 11, anchor: "middle", rotate: true))
        for (i, s) in series.enumerated() {
            let points = s.points.filter { $0.x > 0 }.sorted { $0.x < $1.x }
            body.append(SVG.polyline(points.map { (px($0.x), py($0.y)) }, stroke: s.color))
            for p in points { body.append(SVG.circle(px(p.x), py(p.y), 3, fill: s.color)) }
            let ly = bottom + 58 + Double(i) * 18
            body.append(SVG.rect(left, ly - 6, 14, 4, fill: s.color))
            body.append(SVG.text(left + 20, ly, s.name, size: 11))
        }
        return SVG.document(width: width, height: height, title: title, body: body)
    }

    static func log10(_ v: Double) -> Double { Glibc.log10(v) }

    /// 1, 2, 5 × 10^n at or above `v`.
    static func niceCeiling(_ v: Double) -> Double {
        guard v > 0 else { return 1 }
        let magnitude = Glibc.pow(10, Glibc.log10(v).rounded(.down))
        for step in [1.0, 2, 5, 10] where step * magnitude >= v { return step * magnitude }
        return 10 * magnitude
    }

    static func niceFloor(_ v: Double) -> Double {
        guard v > 0 else { return 0 }
        let magnitude = Glibc.pow(10, Glibc.log10(v).rounded(.down))
        return (v / magnitude).rounded(.down) * magnitude
    }
}

/// The few SVG elements the charts use, with text escaped for XML.
enum SVG {
    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }

    static func f(_ v: Double) -> String { BenchFormat.number(v, 1) }

    static func document(width: Double, height: Double, title: String, body: [String]) -> String {
        """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(f(width))" height="\(f(height))" viewBox="0 0 \(f(width)) \(f(height))" font-family="sans-serif">
        <title>\(escape(title))</title>
        <rect x="0" y="0" width="\(f(width))" height="\(f(height))" fill="#ffffff"/>
        \(body.joined(separator: "\n"))
        </svg>

        """
    }

    static func text(_ x: Double, _ y: Double, _ content: String, size: Double, anchor: String = "start", weight: String = "normal",
                     fill: String = "#000000", rotate: Bool = false) -> String {
        let transform = rotate ? " transform=\"rotate(-90 \(f(x)) \(f(y)))\"" : ""
        return "<text x=\"\(f(x))\" y=\"\(f(y))\" font-size=\"\(f(size))\" text-anchor=\"\(anchor)\" font-weight=\"\(weight)\" fill=\"\(fill)\"\(transform)>\(escape(content))</text>"
    }

    static func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String, dash: String? = nil) -> String {
        "<line x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(stroke)\" stroke-width=\"1\"\(dash.map { " stroke-dasharray=\"\($0)\"" } ?? "")/>"
    }

    static func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String) -> String {
        "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(w))\" height=\"\(f(h))\" fill=\"\(fill)\"/>"
    }

    static func circle(_ x: Double, _ y: Double, _ r: Double, fill: String) -> String {
        "<circle cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"\(f(r))\" fill=\"\(fill)\"/>"
    }

    static func polyline(_ points: [(Double, Double)], stroke: String) -> String {
        "<polyline points=\"\(points.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " "))\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"2\"/>"
    }
}
