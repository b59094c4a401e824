// The inspection verbs — `status`, `peers`, `stats` — as functions from what the node holds (the
// state file, the pinned maps, the attached programs, the masquerade table) to text or JSON. The
// reading and the rendering are separate so tests check the rendering of real kernel state without
// parsing a terminal, and the argument-parser commands in Commands.swift stay one line each.

import Dataplane
import Glibc
import NetTypes
import RuntimeSupport

/// JSON output for scripts: nested, written without Foundation.

public enum TimeText {
    public static func now() -> Int64 { Int64(time(nil)) }

    /// "2026-11-29 16:20:01 UTC".
    static func utc(_ unix: Int64) -> String {
        var t = time_t(unix)
        var parts = tm()
        gmtime_r(&t, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// "1d2h", "23h59m", "4m10s", "7s".
    static func span(_ seconds: Int64) -> String {
        let s = abs(seconds)
        if s >= 86_400 { return "\(s / 86_400)d\(s % 86_400 / 3600)h" }
        if s >= 3600 { return "\(s / 3600)h\(s % 3600 / 60)m" }
        if s >= 60 { return "\(s / 60)m\(s % 60)s" }
        return "\(s)s"
    }
}

/// Everything `status` shows, gathered once.
public struct StatusReport: Sendable {
    public var statePath: String
    public var state: NodeState?
    public var stateError: String?
    public var daemonRunning: Bool
    public var bpffs: String
    public var pinFolder: String?
    public var nodeConfig: BPFNodeSettings?
    public var maps: [PinnedMapSummary] = []
    public var programs: [AttachedProgram] = []
    public var peerCount: Int?
    /// IPv6 peers in fxdp_peers6 (nil without an IPv6 half).
    public var ipv6PeerCount: Int?
    public var masquerade: MasqueradeStatus?
    public var forwardRules: ForwardRulesStatus?
    public var problems: [String] = []

    /// Reads the state file, the pins and the attachments of the calling thread's network namespace.
    public static func gather(bpffs: String, stateFile: String, now: Int64 = TimeText.now()) -> StatusReport {
        var report = StatusReport(statePath: stateFile, daemonRunning: false, bpffs: bpffs)
        do {
            report.state = try NodeState.read(from: stateFile)
            report.daemonRunning = report.state?.writerIsRunning ?? false
        } catch {
            report.stateError = "\(error)"
        }
        do {
            if let pinned = try PinnedDataplane.open(bpffs: bpffs) {
                report.pinFolder = pinned.folder
                report.nodeConfig = try pinned.nodeConfig()
                report.maps = pinned.mapSummaries()
                report.programs = pinned.attachedPrograms(config: report.nodeConfig)
                report.peerCount = try pinned.peerList().count
                let ipv6 = try pinned.ipv6PeerList()
                if !ipv6.isEmpty || report.state?.ipv6Network.isEmpty == false { report.ipv6PeerCount = ipv6.count }
                if let underlay = report.state.flatMap({ IPv4Subnet(cidr: $0.underlaySubnet) }),
                   let warning = Stranger.underlayWarning(try pinned.strangerList(), underlay: underlay) {
                    report.problems.append(warning)
                }
            }
        } catch {
            report.problems.append("\(error)")
        }
        if report.state?.ipMasq == true {
            report.masquerade = Masquerade.status()
        }
        if let state = report.state, state.forwardRules {
            report.forwardRules = ForwardRules.status(network: IPv4Subnet(cidr: state.network))
        }
        return report
    }

    /// `status`'s exit status, as LSB init scripts' `status` (so monitoring that knows those reads it):
    /// 0 the daemon runs and its last state write said ready; 1 it runs but is not ready (degraded
    /// boot, failing reconcile: `ready:` says why); 3 it does not run (or never ran with this file).
    public var exitStatus: Int32 {
        guard let state, daemonRunning else { return 3 }
        return state.ready == false ? 1 : 0
    }

    public func text(now: Int64 = TimeText.now()) -> String {
        var lines: [String] = []
        func row(_ label: String, _ value: String) {
            lines.append(label.padding(12) + value)
        }
        if let state {
            let since = state.startedAt > 0 ? "since \(TimeText.utc(state.startedAt))" : ""
            row("daemon:", daemonRunning
                ? "running, pid \(state.pid), flanneld-xdp \(state.version) \(since); state written \(TimeText.span(now - state.updatedAt)) ago"
                : "NOT running (pid \(state.pid) is gone); last state written \(TimeText.utc(state.updatedAt)); the data path below stays in place")
            if daemonRunning, let ready = state.ready {
                row("ready:", ready ? "yes" : "NO: \(state.notReadyReason)")
            }
            row("data path:", "\(state.dataplane): \(state.dataplaneDetail)")
            row("interface:", "\(state.interface) (#\(state.interfaceIndex)), public IP \(state.publicIP)")
            row("network:", "\(state.network), backend \(state.backend), VNI \(state.vni), port \(state.port), MTU \(state.mtu)")
            row("subnet:", state.subnet)
            if !state.ipv6Network.isEmpty {
                row("IPv6:", "network \(state.ipv6Network), subnet \(state.ipv6Subnet), public IPv6 \(state.publicIPv6); "
                    + "\(state.ipv6PeerCount) IPv6 peer(s) wanted by the leases" + (ipv6PeerCount.map { ", \($0) in the BPF maps" } ?? ""))
            }
            if state.leaseExpiry > 0 {
                let left = state.leaseExpiry - now
                row("lease:", "expires \(TimeText.utc(state.leaseExpiry)) (\(left >= 0 ? "in \(TimeText.span(left))" : "\(TimeText.span(left)) ago"); renewed before it expires while the daemon runs)")
            } else {
                row("lease:", "reservation (no TTL)")
            }
            let contact = state.etcdLastContact > 0 ? ", last contact \(TimeText.span(now - state.etcdLastContact)) ago" : ""
            row("etcd:", "\(state.etcdState) (API \(state.etcdAPI), \(state.etcdEndpoints))\(contact)")
            if !state.etcdAPIDetail.isEmpty { row("etcd API:", state.etcdAPIDetail) }
            row("peers:", "\(state.peerCount) wanted by the leases" + (peerCount.map { ", \($0) in the BPF maps" } ?? ""))
            if state.ipMasq {
                row("masquerade:", (masquerade.map(\.description) ?? "on") + (state.ipMasqFullyRandom ? "" : " (not fully-random)"))
            } else {
                row("masquerade:", "off (--ip-masq not given)")
            }
            if state.forwardRules {
                row("forward:", forwardRules.map(\.description) ?? "on")
            } else {
                row("forward:", "off (--iptables-forward-rules=false): iptables' FORWARD chain is left alone")
            }
            if state.blackholeRoute { row("blackhole:", "on: a blackhole route for \(state.subnet) is kept (--ip-blackhole-route)") }
            for warning in state.warnings.split(separator: "\n") { row("WARNING:", String(warning)) }
        } else if let stateError {
            row("daemon:", "state file \(statePath) unreadable: \(stateError)")
        } else {
            row("daemon:", "no state file at \(statePath): the daemon has not run with this --subnet-file (give the daemon's --subnet-file)")
        }
        if let pinFolder {
            row("pins:", pinFolder)
            if let nodeConfig {
                row("bpf config:", nodeConfig.description)
            } else {
                row("bpf config:", "not written (the programs pass everything to the kernel)")
            }
            if programs.isEmpty {
                row("programs:", "none attached in our slots")
            } else {
                for (i, p) in programs.enumerated() {
                    row(i == 0 ? "programs:" : "", "\(p.name) id \(p.id) on \(p.interface) \(p.hook)")
                }
            }
            for (i, m) in maps.enumerated() {
                row(i == 0 ? "maps:" : "", "\(m.name) id \(m.id)" + (m.entries.map { ", \($0) of \(m.maxEntries) entries" } ?? ""))
            }
        } else {
            row("pins:", "none under \(PinnedDataplane.folder(bpffs: bpffs)) (no BPF data path on this node, or `cleanup` removed it)")
        }
        for problem in problems { row("problem:", problem) }
        return lines.joined(separator: "\n") + "\n"
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [("stateFile", .string(statePath)), ("daemonRunning", .bool(daemonRunning))]
        if let state {
            members.append(("state", .members(state.fields.map { ($0.0, $0.1.json) })))
        } else {
            members.append(("state", .null))
        }
        members.append(("pinFolder", pinFolder.map(JSONValue.string) ?? .null))
        members.append(("bpfConfig", nodeConfig.map { c in
            .members([("nodeIP", .string("\(c.nodeIP)")), ("vtepMAC", .string("\(c.vtepMAC)")), ("vni", .int(Int64(c.vni))),
                     ("udpPort", .int(Int64(c.udpPort))), ("underlayIfindex", .int(Int64(c.underlayIfindex))),
                     ("overlayIfindex", .int(Int64(c.overlayIfindex))), ("overlayMTU", .int(Int64(c.overlayMTU))),
                     ("enabled", .bool(c.enabled))])
        } ?? .null))
        members.append(("programs", .array(programs.map {
            .members([("name", .string($0.name)), ("id", .int(Int64($0.id))), ("hook", .string($0.hook)), ("interface", .string($0.interface))])
        })))
        members.append(("maps", .array(maps.map {
            .members([("name", .string($0.name)), ("id", .int(Int64($0.id))), ("path", .string($0.path)),
                     ("entries", $0.entries.map { .int(Int64($0)) } ?? .null), ("maxEntries", .int(Int64($0.maxEntries)))])
        })))
        members.append(("masquerade", masquerade.map { .string($0.description) } ?? .null))
        members.append(("forwardRules", forwardRules.map { .string($0.description) } ?? .null))
        members.append(("problems", .array(problems.map(JSONValue.string))))
        return .members(members)
    }
}

/// `peers`: one line per peer from the pinned maps.
public enum PeersReport {
    /// Said when the pins predate the per-peer map (a daemon older than per-peer counters made them).
    public static let perPeerNote = "per-peer packet/byte counters are not collected by the programs that made these pins (restart with this version's daemon)"
    public static let trafficNote = "TX: encapsulated to the node by BPF (inner bytes); RX: accepted from it by decap (outer bytes); per node, kernel-path packets not included"

    /// IPv6 peers (fxdp_peers6), when there are any, follow the IPv4 ones with the same columns.
    public static func text(_ peers: [PinnedPeer], ipv6: [PinnedIPv6Peer] = []) -> String {
        let rows = peers.map(Row.init) + ipv6.map(Row.init)
        let withTraffic = rows.contains { $0.traffic != nil } || rows.isEmpty
        let subnetWidth = ipv6.isEmpty ? 20 : 26, ipWidth = ipv6.isEmpty ? 17 : 26
        var header = "SUBNET".padding(subnetWidth) + "NODE IP".padding(ipWidth) + "VTEP MAC".padding(19) + "DECAP".padding(7)
        if !withTraffic {
            header += "MODE"
        } else {
            header += "MODE".padding(7) + "TX PKTS".leftPadding(10) + "TX BYTES".leftPadding(14) + "RX PKTS".leftPadding(10) + "RX BYTES".leftPadding(14)
        }
        var lines = [header]
        for p in rows {
            var line = p.subnet.padding(subnetWidth) + p.nodeIP.padding(ipWidth) + "\(p.vtepMAC)".padding(19)
                + (p.decapAccepted ? "yes" : "NO").padding(7)
            if let t = p.traffic {
                line += (p.direct ? "direct" : "vxlan").padding(7) + "\(t.txPackets)".leftPadding(10) + "\(t.txBytes)".leftPadding(14)
                    + "\(t.rxPackets)".leftPadding(10) + "\(t.rxBytes)".leftPadding(14)
            } else {
                line += p.direct ? "direct" : "vxlan"
            }
            lines.append(line)
        }
        let count = ipv6.isEmpty ? "\(peers.count) peer(s)" : "\(peers.count) IPv4 and \(ipv6.count) IPv6 peer(s)"
        lines.append("\(count); " + (withTraffic ? trafficNote : perPeerNote))
        return lines.joined(separator: "\n") + "\n"
    }

    /// One line of either family.
    struct Row {
        var subnet: String
        var nodeIP: String
        var vtepMAC: MACAddress
        var direct: Bool
        var decapAccepted: Bool
        var traffic: PeerTraffic?

        init<S>(_ p: PinnedFamilyPeer<S>) {
            (subnet, nodeIP, vtepMAC, direct, decapAccepted, traffic) = ("\(p.subnet)", "\(p.nodeIP)", p.vtepMAC, p.direct, p.decapAccepted, p.traffic)
        }
    }

    /// `ipv6Peers` is there only when the maps hold IPv6 peers.
    public static func json(_ peers: [PinnedPeer], ipv6: [PinnedIPv6Peer] = []) -> JSONValue {
        func rows(_ rows: [Row]) -> JSONValue {
            .array(rows.map { p in
                .members([("subnet", .string(p.subnet)), ("nodeIP", .string(p.nodeIP)),
                         ("vtepMAC", .string("\(p.vtepMAC)")), ("direct", .bool(p.direct)),
                         ("decapAccepted", .bool(p.decapAccepted)),
                         ("txPackets", p.traffic.map { .int($0.txPackets) } ?? .null),
                         ("txBytes", p.traffic.map { .int($0.txBytes) } ?? .null),
                         ("rxPackets", p.traffic.map { .int($0.rxPackets) } ?? .null),
                         ("rxBytes", p.traffic.map { .int($0.rxBytes) } ?? .null)])
            })
        }
        var members: [(String, JSONValue)] = [("peers", rows(peers.map(Row.init)))]
        if !ipv6.isEmpty { members.append(("ipv6Peers", rows(ipv6.map(Row.init)))) }
        members.append(("perPeerCounters", .bool(peers.contains { $0.traffic != nil } || ipv6.contains { $0.traffic != nil })))
        return .members(members)
    }
}

/// `stats`: the counters with names, drops marked, and rates between two readings.
public enum StatsReport {
    public static func text(_ values: [(BPFCounter, PacketCount)], previous: [BPFCounter: PacketCount]? = nil,
                            interval: Double = 1, showZero: Bool = true) -> String {
        var lines = ["COUNTER".padding(28) + "PACKETS".leftPadding(16) + "BYTES".leftPadding(18)
                     + (previous == nil ? "" : "PKT/S".leftPadding(12) + "BIT/S".leftPadding(14)) + "  VERDICT"]
        var totalDrops: UInt64 = 0
        for (counter, count) in values where showZero || count.packets > 0 {
            var line = counter.name.padding(28) + "\(count.packets)".leftPadding(16) + "\(count.bytes)".leftPadding(18)
            if let previous {
                let before = previous[counter] ?? PacketCount()
                let pps = Double(count.packets &- before.packets) / max(interval, 0.001)
                let bps = Double(count.bytes &- before.bytes) * 8 / max(interval, 0.001)
                line += rate(pps).leftPadding(12) + rate(bps).leftPadding(14)
            }
            line += "  " + verdict(counter)
            lines.append(line)
            if counter.isDrop { totalDrops &+= count.packets }
        }
        let encap = values.filter { $0.0.isEncapsulated }.reduce(UInt64(0)) { $0 &+ $1.1.packets }
        let decap = values.filter { $0.0.isDecapAccepted }.reduce(UInt64(0)) { $0 &+ $1.1.packets }
        lines.append("encapsulated \(encap), decapsulated/accepted \(decap), dropped \(totalDrops) packet(s)")
        return lines.joined(separator: "\n") + "\n"
    }

    static func verdict(_ counter: BPFCounter) -> String {
        switch counter.verdict {
        case .drop: "DROP"
        case .pass: "pass to kernel"
        case .ok: "ok"
        }
    }

    static func rate(_ value: Double) -> String {
        switch value {
        case 1e9...: "\(Int(value / 1e8) / 10).\(Int(value / 1e8) % 10)G"
        case 1e6...: "\(Int(value / 1e5) / 10).\(Int(value / 1e5) % 10)M"
        case 1e3...: "\(Int(value / 1e2) / 10).\(Int(value / 1e2) % 10)k"
        default: "\(Int(value))"
        }
    }

    public static func json(_ values: [(BPFCounter, PacketCount)]) -> JSONValue {
        .members([("counters", .array(values.map { counter, count in
            .members([("code", .int(Int64(counter.code))), ("name", .string(counter.name)),
                     ("drop", .bool(counter.isDrop)), ("packets", .int(count.packets)), ("bytes", .int(count.bytes))])
        }))])
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }

    func leftPadding(_ width: Int) -> String {
        count >= width ? " " + self : String(repeating: " ", count: width - count) + self
    }
}

/// The verbs' bodies, called from the argument-parser commands.
public enum InspectionCommands {
    public static func status(bpffs: String, subnetFile: String, stateFile: String?, json: Bool) -> String {
        statusWithExitStatus(bpffs: bpffs, subnetFile: subnetFile, stateFile: stateFile, json: json).text
    }

    /// The report and `status`'s exit status (StatusReport.exitStatus).
    public static func statusWithExitStatus(bpffs: String, subnetFile: String, stateFile: String?, json: Bool) -> (text: String, exitStatus: Int32) {
        let report = StatusReport.gather(bpffs: bpffs, stateFile: stateFile ?? NodeState.path(forSubnetFile: subnetFile))
        return (json ? report.json.text + "\n" : report.text(), report.exitStatus)
    }

    public static func peers(bpffs: String, json: Bool) throws(OperationsError) -> String {
        guard let pinned = try PinnedDataplane.open(bpffs: bpffs) else { throw PinnedDataplane.noPins(bpffs) }
        let peers = try pinned.peerList(), ipv6 = try pinned.ipv6PeerList()
        return json ? PeersReport.json(peers, ipv6: ipv6).text + "\n" : PeersReport.text(peers, ipv6: ipv6)
    }

    public static func stats(bpffs: String, json: Bool) throws(OperationsError) -> String {
        guard let pinned = try PinnedDataplane.open(bpffs: bpffs) else { throw PinnedDataplane.noPins(bpffs) }
        let values = try pinned.counterValues()
        return json ? StatsReport.json(values).text + "\n" : StatsReport.text(values)
    }

    /// `stats --watch`: redraws every `interval` seconds like top, with rates; `count` 0 runs until interrupted.
    public static func watchStats(bpffs: String, interval: Double, count: Int, write: (String) -> Void) throws(OperationsError) {
        guard let pinned = try PinnedDataplane.open(bpffs: bpffs) else { throw PinnedDataplane.noPins(bpffs) }
        var previous: [BPFCounter: PacketCount]?
        var round = 0
        while count == 0 || round < count {
            let values = try pinned.counterValues()
            let header = "flanneld-xdp stats — \(TimeText.utc(TimeText.now())) — every \(interval) s, Ctrl-C to stop\n\n"
            // Home + clear screen, as top does.
            write("\u{1B}[H\u{1B}[2J" + header + StatsReport.text(values, previous: previous, interval: interval, showZero: false))
            previous = Dictionary(uniqueKeysWithValues: values.map { ($0.0, $0.1) })
            round += 1
            if count != 0 && round >= count { break }
            SystemCall.sleep(seconds: interval)
        }
    }
}
