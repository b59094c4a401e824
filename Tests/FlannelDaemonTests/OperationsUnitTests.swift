// Operations pieces that need no root: the state file format, the masquerade ruleset text, the
// inspection renderers, the metrics exposition.

import BPFDataplane
import CBPF
@testable import Dataplane
@testable import FlannelDaemon
import Glibc
import Leases
import NetTypes
import Testing

@Suite("Operations: state file, ruleset, renderers, metrics")
struct OperationsUnitTests {
    @Test("state file round-trips every field, including characters JSON must escape")
    func stateRoundTrip() throws {
        // The strings carry what JSON must escape.
        var state = NodeState.sample()
        state.updatedAt = 1_790_000_010
        state.dataplane = "bpf-tc"
        state.dataplaneDetail = "BPF (TC-checked kernel decap; encap 12) over flannel.1 \"quoted\" \\ tab\t"
        state.bpffs = "/sys/fs/bpf"
        state.ipMasq = true
        state.etcdState = "unreachable: connection refused\n(retrying)"
        state.etcdLastContact = 1_790_000_005
        state.peerCount = 3
        state.etcdAPIDetail = "auto: /coreos.com/network/config is in both keyspaces; following v2"
        state.forwardRules = true
        state.ipMasqFullyRandom = false
        state.blackholeRoute = true
        state.warnings = "the network config sets EnableIPv6 (dual-stack)\nsecond line"
        let decoded = try NodeState(json: state.json)
        #expect(decoded == state)

        let dir = "/tmp/fxops-state-\(getpid())"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        let path = NodeState.path(forSubnetFile: dir + "/flannel/subnet.env")
        #expect(path == dir + "/flannel/flanneld-xdp.state.json")
        try state.write(to: path)
        #expect(try NodeState.read(from: path) == state)
        #expect(try NodeState.read(from: dir + "/absent.json") == nil)
        #expect(NodeState.path(forSubnetFile: "/run/flannel/subnet.env") == "/run/flannel/flanneld-xdp.state.json")
    }

    @Test("a damaged state file is a typed error, not a crash")
    func damagedState() {
        for bad in ["", "{", "{\"pid\": }", "[1]", "{\"a\" 1}", "{\"s\": \"unterminated}"] {
            #expect(throws: OperationsError.self) { try NodeState(json: bad) }
        }
        // Unknown keys and null are ignored: a newer daemon's file still reads.
        #expect((try? NodeState(json: #"{"pid": 7, "future": null, "subnet": "10.5.1.0/24"}"#))?.subnet == "10.5.1.0/24")
    }

    @Test("a running writer is seen as running; a gone pid is not")
    func writerLiveness() {
        var state = NodeState()
        #expect(state.writerIsRunning)
        state.pid = 0x3FFF_FFF0
        #expect(!state.writerIsRunning)
    }

    @Test("the active data path's kind: one name per mode, as the state file, status and metrics write it")
    func dataplaneKind() {
        #expect(ActiveDataPath.bpf(decap: .xdp, fastPath: true).kind == "bpf-xdp")
        #expect(ActiveDataPath.bpf(decap: .tc, fastPath: false).kind == "bpf-tc")
        #expect(ActiveDataPath.userspace(fallbackReason: "attaching the BPF programs failed: x").kind == "userspace")
        #expect(ActiveDataPath.userspace(fallbackReason: nil).kind == "userspace")
        #expect(ActiveDataPath.hostGW.kind == "host-gw")
        #expect(ActiveDataPath.bpf(decap: .tc, fastPath: true).usesBPF && !ActiveDataPath.hostGW.usesBPF)
        // The decap mode is named as --dataplane names it.
        for mode in Dataplane.DecapMode.allCases { #expect(DataplaneChoice(rawValue: mode.rawValue) != nil, "\(mode)") }
        // The daemon's names are the BPF data path's, one for one.
        #expect(Dataplane.DecapMode.allCases.map(\.rawValue) == BPFDataplane.DecapMode.allCases.map(\.rawValue))
    }

    @Test("the masquerade table is current flannel's six rules, in its order, from validated subnets only")
    func ruleset() throws {
        let network = try #require(IPv4Subnet(cidr: "10.5.0.0/16"))
        let subnet = try #require(IPv4Subnet(cidr: "10.5.7.0/24"))
        #expect(Masquerade.ruleset(network: network, subnet: subnet) == """
            table ip flanneld-xdp {
            \tchain postrouting {
            \t\ttype nat hook postrouting priority srcnat; policy accept;
            \t\tmeta mark & 0x00004000 == 0x00004000 return
            \t\tip saddr 10.5.7.0/24 ip daddr 10.5.0.0/16 return
            \t\tip saddr 10.5.0.0/16 ip daddr 10.5.7.0/24 return
            \t\tip saddr != 10.5.0.0/16 ip daddr 10.5.7.0/24 return
            \t\tip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
            \t\tip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random
            \t}
            }

            """)
        // --ip-masq-fully-random-disable: the same rules, plain masquerade.
        let plain = Masquerade.ruleset(network: network, subnet: subnet, fullyRandom: false)
        #expect(!plain.contains("fully-random"))
        #expect(plain.split(separator: "\n").filter { $0.hasSuffix(" masquerade") }.count == 2)
        let script = Masquerade.Rules.ipv4(network: network, subnet: subnet).replaceScript
        #expect(script.hasPrefix("add table ip flanneld-xdp\ndelete table ip flanneld-xdp\ntable ip flanneld-xdp {"))
        // IPv6 (flannel's MasqIP6Rules): the same rules in an ip6 table, ff00::/8 as multicast.
        let v6 = Masquerade.Rules.ipv6(network: try #require(IPv6Subnet(cidr: "fd00:5::/48")),
                                       subnet: try #require(IPv6Subnet(cidr: "fd00:5:0:7::/64")))
        #expect(v6.ruleset == """
            table ip6 flanneld-xdp {
            \tchain postrouting {
            \t\ttype nat hook postrouting priority srcnat; policy accept;
            \t\tmeta mark & 0x00004000 == 0x00004000 return
            \t\tip6 saddr fd00:5:0:7::/64 ip6 daddr fd00:5::/48 return
            \t\tip6 saddr fd00:5::/48 ip6 daddr fd00:5:0:7::/64 return
            \t\tip6 saddr != fd00:5::/48 ip6 daddr fd00:5:0:7::/64 return
            \t\tip6 saddr fd00:5::/48 ip6 daddr != ff00::/8 masquerade fully-random
            \t\tip6 saddr != fd00:5::/48 ip6 daddr fd00:5::/48 masquerade fully-random
            \t}
            }

            """)
        #expect(v6.replaceScript.hasPrefix("add table ip6 flanneld-xdp\ndelete table ip6 flanneld-xdp\n"))
        // The drift check ignores indentation only.
        #expect(Masquerade.normalized("table ip x {\n    chain y {\n\t\tip  saddr 1\n}") == ["table ip x {", "chain y {", "ip saddr 1", "}"])
    }

    @Test("peers renderer: one line per peer with per-node traffic; older pins say counters are not collected")
    func peersRenderer() throws {
        var peers = [
            PinnedPeer(subnet: try #require(IPv4Subnet(cidr: "10.5.2.0/24")), nodeIP: IPv4Address(192, 168, 77, 2),
                       vtepMAC: try #require(MACAddress("0e:00:00:00:00:02")), direct: false, decapAccepted: true,
                       traffic: PeerTraffic(txPackets: 10, txBytes: 980, rxPackets: 9, rxBytes: 1332)),
            PinnedPeer(subnet: try #require(IPv4Subnet(cidr: "10.5.3.0/24")), nodeIP: IPv4Address(192, 168, 77, 3),
                       vtepMAC: try #require(MACAddress("0e:00:00:00:00:03")), direct: true, decapAccepted: false,
                       traffic: PeerTraffic()),
        ]
        #expect(PeersReport.text(peers) == """
            SUBNET              NODE IP          VTEP MAC           DECAP  MODE      TX PKTS      TX BYTES   RX PKTS      RX BYTES
            10.5.2.0/24         192.168.77.2     0e:00:00:00:00:02  yes    vxlan          10           980         9          1332
            10.5.3.0/24         192.168.77.3     0e:00:00:00:00:03  NO     direct          0             0         0             0
            2 peer(s); \(PeersReport.trafficNote)

            """)
        let json = PeersReport.json(peers).text
        #expect(json.hasPrefix(#"{"peers":[{"subnet":"10.5.2.0/24","nodeIP":"192.168.77.2","vtepMAC":"0e:00:00:00:00:02","direct":false,"decapAccepted":true,"txPackets":10,"txBytes":980,"rxPackets":9,"rxBytes":1332}"#))
        #expect(json.hasSuffix(#"],"perPeerCounters":true}"#))

        for i in peers.indices { peers[i].traffic = nil }
        #expect(PeersReport.text(peers).hasSuffix("2 peer(s); \(PeersReport.perPeerNote)\n"))
        #expect(PeersReport.text(peers).hasPrefix("SUBNET              NODE IP          VTEP MAC           DECAP  MODE\n"))
        #expect(PeersReport.json(peers).text.contains(#""txPackets":null"#))
        #expect(PeersReport.json(peers).text.hasSuffix(#""perPeerCounters":false}"#))
    }

    @Test("the per-peer stats record has the C layout")
    func peerStatsLayout() {
        #expect(MemoryLayout<fxdp_peer_stats>.size == 32)
        #expect(FXDP_MAP_PEER_STATS == "fxdp_peer_stats_v2")
    }

    @Test("the operations side's counters are the programs' own: codes, names, drop mask, encap and decap sets")
    func countersMirrorThePrograms() {
        #expect(BPFCounter.all.map(\.code) == FXDPCounter.allCases.map(\.rawValue))
        for (mine, theirs) in zip(BPFCounter.all, FXDPCounter.allCases) {
            #expect(mine.name == theirs.name && mine.isDrop == theirs.isDrop)
            #expect(mine.isEncapsulated == theirs.isEncapsulated && mine.isDecapAccepted == theirs.isDecapAccepted)
            #expect(mine.verdict == (theirs.isDrop ? .drop : theirs.name.contains("_pass_") ? .pass : .ok))
        }
        #expect(BPFCounter.named("decap_drop_not_peer")?.code == FXDPCounter.decapDropNotPeer.rawValue)
        #expect(BPFCounter.named("no_such_counter") == nil)
    }

    @Test("stats renderer names every counter, marks drops, totals, and computes rates between readings")
    func statsRenderer() {
        var values = BPFCounter.all.map { ($0, PacketCount()) }
        values[0].1 = PacketCount(packets: 100, bytes: 150_000)
        let notPeer = values.firstIndex { $0.0.name == "decap_drop_not_peer" }!
        values[notPeer].1 = PacketCount(packets: 7, bytes: 700)
        let text = StatsReport.text(values)
        for counter in BPFCounter.all { #expect(text.contains(counter.name)) }
        #expect(text.contains("decap_drop_not_peer                        7               700  DROP"))
        #expect(text.contains("encap_pass_no_peer"))
        #expect(text.hasSuffix("encapsulated 100, decapsulated/accepted 0, dropped 7 packet(s)\n"))

        let previous: [BPFCounter: PacketCount] = [BPFCounter.named("encap_ok")!: PacketCount(packets: 50, bytes: 100_000)]
        let watched = StatsReport.text(values, previous: previous, interval: 0.5, showZero: false)
        #expect(!watched.contains("encap_pass_no_peer"))
        // 50 packets and 50 000 bytes in 0.5 s: 100 pkt/s, 800 kbit/s.
        #expect(watched.contains("100        800.0k  ok"))

        let json = StatsReport.json(values).text
        #expect(json.contains(#"{"code":20,"name":"decap_drop_not_peer","drop":true,"packets":7,"bytes":700}"#))
    }

    @Test("metrics: every reconcile pass in the histogram, lease, etcd, info and process_* series")
    func metricsExposition() {
        let metrics = DaemonMetrics(bpffs: nil, dataplane: "bpf-tc", backend: "vxlan")
        // Five passes in a row, one failed: each is counted and lands in the histogram (before, one
        // pass per 5 s refresh was sampled).
        for (i, ms) in [2, 3, 1, 40, 600].enumerated() {
            var outcome = TableOutcome(table: "bpf-maps")
            if i == 3 { outcome.failures = ["upsert: EPERM"] }
            metrics.observePass(ReconcileReport(outcomes: [outcome], desiredCount: 4 + i, duration: .milliseconds(ms)))
        }
        metrics.observeLease(expiryUnixSeconds: 1_790_086_400, etcdReachable: true)
        var counters = LeaseCounters().snapshot()
        counters.watchReconnects = 2
        metrics.observeLeaseCounters(counters)
        counters.watchReconnects = 5
        metrics.observeLeaseCounters(counters)
        let text = metrics.render()
        #expect(text.contains(#"flanneld_xdp_info{version="\#(FlannelDaemonVersion.string)",dataplane="bpf-tc",backend="vxlan"} 1"#))
        #expect(text.contains("flanneld_xdp_reconcile_passes_total 5"))
        #expect(text.contains("flanneld_xdp_reconcile_failed_passes_total 1"))
        #expect(text.contains("flanneld_xdp_reconcile_duration_seconds_count 5"))
        // 2, 3 and 1 ms are under the 5 ms bucket; 40 ms under 100 ms; 600 ms under 2 s.
        #expect(text.contains(#"flanneld_xdp_reconcile_duration_seconds_bucket{le="0.005"} 3"#), "\(text)")
        #expect(text.contains(#"flanneld_xdp_reconcile_duration_seconds_bucket{le="0.1"} 4"#))
        #expect(text.contains(#"flanneld_xdp_reconcile_duration_seconds_bucket{le="2.0"} 5"#))
        #expect(text.contains("flanneld_xdp_peers 8"))
        #expect(text.contains("flanneld_xdp_lease_expiry_timestamp_seconds 1790086400"))
        #expect(text.contains("flanneld_xdp_etcd_up 1"))
        #expect(text.contains("flanneld_xdp_etcd_watch_reconnects_total 5"))
        #expect(text.contains("# TYPE flanneld_xdp_reconcile_duration_seconds histogram"))
        for name in ["process_resident_memory_bytes", "process_virtual_memory_bytes", "process_cpu_seconds_total",
                     "process_open_fds", "process_max_fds", "process_start_time_seconds"] {
            #expect(text.contains("\n\(name) "), "no \(name) in\n\(text)")
        }
        // Without --metrics-per-peer no per-peer series exist (and nothing else names a peer).
        #expect(!text.contains("flanneld_xdp_peer_"))
    }

    @Test("process_* series: the values of this process, as /proc and getrusage tell them")
    func processMetrics() throws {
        let m = ProcessMetrics.read()
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        let rusageCPU = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let cpu = try #require(m.cpuSeconds)
        // Clock ticks (10 ms) against microseconds: equal within a few ticks.
        #expect(abs(cpu - rusageCPU) < 0.5, "\(cpu) vs \(rusageCPU)")
        // VmRSS in /proc/self/status is the same number statm gives.
        let status = ProcessMetrics.readSmallFile("/proc/self/status") ?? ""
        let vmRSS = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { UInt64($0.split(separator: " ")[1]) }.map { $0 * 1024 }
        let rss = try #require(m.residentMemoryBytes)
        #expect(rss > 1 << 20)
        if let vmRSS { #expect(Double(rss) > Double(vmRSS) * 0.5 && Double(rss) < Double(vmRSS) * 2, "\(rss) vs VmRSS \(vmRSS)") }
        // Open fds: this process holds at least stdin/out/err and the test runner's; the counting
        // itself is checked on a folder of known entries (other tests open and close fds meanwhile).
        #expect((m.openFDs ?? 0) >= 3)
        let dir = "/tmp/\(uniqueTag("fds"))"
        mkdir(dir, 0o700)
        defer { for name in ["a", "b", "c"] { unlink(dir + "/" + name) }; rmdir(dir) }
        for name in ["a", "b", "c"] { close(open(dir + "/" + name, O_CREAT | O_WRONLY, 0o600)) }
        #expect(ProcessMetrics.countEntries(dir) == 3)
        // Started in the past, after boot, not in the future.
        let start = try #require(m.startTimeSeconds)
        #expect(start <= Double(time(nil)) + 1 && start > Double(time(nil)) - 86_400 * 365)
        #expect((m.maxFDs ?? 0) > 0)
        // A command name with spaces and parentheses does not shift the fields.
        #expect(ProcessMetrics.statFields("12 (a b) c) S 1 2")?.first == "S")
    }

    @Test("time helpers")
    func timeText() {
        #expect(TimeText.utc(0) == "1970-01-01 00:00:00 UTC")
        #expect(TimeText.span(7) == "7s")
        #expect(TimeText.span(250) == "4m10s")
        #expect(TimeText.span(86_399) == "23h59m")
        #expect(TimeText.span(93_600) == "1d2h")
    }
}
