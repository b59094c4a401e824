// status / peers / stats against real pinned maps and real attachments (root): a FlannelBPF is
// loaded on a bpffs of the test's own, filled, attached to a veth pair in a namespace of the test's
// own, then released — as a daemon that stopped leaves it — and the verbs read it back, in this
// process and through the built binary in another.

import BPFDataplane
import BPFLoader
import CBPF
import Dataplane
@testable import FlannelDaemon
import Glibc
import Leases
import NetTypes
import TestTraits
import Testing
import TestSupport

@Suite("Operations: inspection of pinned maps (root)", .needsRoot, .ownThreads)
struct OperationsInspectionTests {
    @Test("peers, stats and status read what a stopped daemon left: pins, counters, program ids")
    func inspectLeftBehind() throws {
        let tag = "fxops-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        let bpffs = "/run/\(tag)-bpf"
        let ns = "\(tag)-ns"
        _ = try runTool("/bin/mkdir", ["-p", bpffs])
        _ = try runTool("/bin/mount", ["-t", "bpf", "bpf", bpffs])
        _ = try runTool("/sbin/ip", ["netns", "add", ns])
        defer {
            _ = try? runProgram("/sbin/ip", ["netns", "del", ns])
            _ = try? runProgram("/bin/umount", [bpffs])
            _ = try? runProgram("/bin/rmdir", [bpffs])
        }
        _ = try runTool("/sbin/ip", ["-n", ns, "link", "add", "fxa", "type", "veth", "peer", "name", "fxb"])
        _ = try runTool("/sbin/ip", ["-n", ns, "link", "set", "fxa", "up"])
        _ = try runTool("/sbin/ip", ["-n", ns, "link", "set", "fxb", "up"])

        let peerA = Peer(subnet: IPv4Subnet(cidr: "10.5.2.0/24")!, publicIP: IPv4Address(192, 168, 77, 2),
                         vtepMAC: MACAddress("0e:00:00:00:00:02")!)
        let peerB = Peer(subnet: IPv4Subnet(cidr: "10.5.3.0/24")!, publicIP: IPv4Address(192, 168, 77, 3),
                         vtepMAC: MACAddress("0e:00:00:00:00:03")!)
        let attached: AttachmentState = try NetnsThread.run(namespace: ns) {
            let overlay = Int32(if_nametoindex("fxa"))
            let underlay = Int32(if_nametoindex("fxb"))
            let bpf = try FlannelBPF(bpffs: bpffs)
            try bpf.writeConfig(NodeConfig(nodeIP: IPv4Address(192, 168, 77, 1), vtepMAC: MACAddress("0e:00:00:00:00:01")!,
                                           underlayIfindex: underlay, underlayMAC: MACAddress("0e:00:00:00:00:aa")!,
                                           overlayIfindex: overlay, overlayMTU: 1450))
            let table = try bpf.peerTable()
            try table.upsert(peerA)
            try table.upsert(peerB)
            let cpus = bpf.counterMap.cpuCount
            var perCPU = Array(repeating: fxdp_count(), count: cpus)
            perCPU[0] = fxdp_count(packets: 40, bytes: 4000)
            perCPU[cpus - 1].packets += 2
            perCPU[cpus - 1].bytes += 200
            try bpf.counterMap.update(FXDPCounter.encapOK.rawValue, perCPU: perCPU)
            var drops = Array(repeating: fxdp_count(), count: cpus)
            drops[0] = fxdp_count(packets: 3, bytes: 300)
            try bpf.counterMap.update(FXDPCounter.decapDropNotPeer.rawValue, perCPU: drops)
            // What the programs would have counted for peer A's node (one CPU's share on CPU 0).
            let stats = try PerCPUMap.openPinned(path: bpffs + "/flanneld-xdp/" + FXDP_MAP_PEER_STATS,
                                                 key: fxdp_node_key.self, value: fxdp_peer_stats.self)
            var perPeer = Array(repeating: fxdp_peer_stats(), count: cpus)
            perPeer[0] = fxdp_peer_stats(tx_packets: 5, tx_bytes: 490, rx_packets: 4, rx_bytes: 592)
            var nodeA = fxdp_node_key()
            nodeA.node_ip = peerA.publicIP.tuple
            try stats.update(nodeA, perCPU: perPeer)
            // A departed node's leftover entry: pruned by the daemon's refresh.
            var gone = fxdp_node_key()
            gone.node_ip = IPv4Address(192, 168, 77, 99).tuple
            try stats.update(gone, perCPU: perPeer)
            return try bpf.attach(overlayIfindex: overlay, underlayIfindex: underlay, mode: .tc)
        }
        let encapID = try #require(attached.encapProgramID)
        let checkID = try #require(attached.decapCheckProgramID)

        // In this process (the FlannelBPF above is gone: only pins and attachments remain).
        let peersText = try InspectionCommands.peers(bpffs: bpffs, json: false)
        #expect(peersText.contains("10.5.2.0/24         192.168.77.2     0e:00:00:00:00:02  yes    vxlan           5           490         4           592"))
        #expect(peersText.contains("10.5.3.0/24         192.168.77.3     0e:00:00:00:00:03  yes    vxlan           0             0         0             0"))
        let pinned = try #require(try PinnedDataplane.open(bpffs: bpffs))
        #expect(try pinned.peerTraffic()?.count == 2)
        #expect(try pinned.pruneDepartedPeerStats() == 1)
        #expect(try pinned.peerTraffic()?.keys.sorted() == [peerA.publicIP])
        let stats = try InspectionCommands.stats(bpffs: bpffs, json: true)
        #expect(stats.contains(#"{"code":0,"name":"encap_ok","drop":false,"packets":42,"bytes":4200}"#))
        #expect(stats.contains(#"{"code":20,"name":"decap_drop_not_peer","drop":true,"packets":3,"bytes":300}"#))

        // Through the binary, in the namespace (program ids are per interface of that namespace).
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let peersJSON = try runTool("/sbin/ip", ["netns", "exec", ns, binary, "peers", "--bpffs", bpffs, "--json"])
        #expect(peersJSON.contains(#"{"subnet":"10.5.2.0/24","nodeIP":"192.168.77.2","vtepMAC":"0e:00:00:00:00:02","direct":false,"decapAccepted":true,"txPackets":5,"txBytes":490,"rxPackets":4,"rxBytes":592}"#))
        let statsOut = try runTool("/sbin/ip", ["netns", "exec", ns, binary, "stats", "-bpffs=\(bpffs)"])
        #expect(statsOut.contains("decap_drop_not_peer                        3               300  DROP"))
        let watched = try runTool("/sbin/ip", ["netns", "exec", ns, binary, "stats", "--bpffs", bpffs, "--watch",
                                               "--interval", "0.1", "--count", "2"])
        #expect(watched.split(separator: "\u{1B}[H\u{1B}[2J", omittingEmptySubsequences: true).count == 2)
        #expect(watched.contains("PKT/S"))

        // No daemon has run here (no state file): the report still shows the kernel side, and the
        // exit status is 3, "not running".
        let statusRun = try runProgram("/sbin/ip", ["netns", "exec", ns, binary, "status", "--bpffs", bpffs,
                                                    "--subnet-file", "/run/\(tag)-none/subnet.env"])
        #expect(statusRun.status == 3, "\(statusRun.output)")
        let status = statusRun.output
        #expect(status.contains("no state file at /run/\(tag)-none/flanneld-xdp.state.json"))
        #expect(status.contains("fxdp_encap id \(encapID) on fxa"))
        #expect(status.contains("tcx egress"))
        #expect(status.contains("fxdp_decap_check id \(checkID) on fxb"))
        #expect(status.contains("fxdp_peers_v2 id "))
        #expect(status.contains(", 2 of 65536 entries"))
        #expect(status.contains("fxdp_peer_stats_v2 id "))
        #expect(status.contains("node 192.168.77.1 vtep 0e:00:00:00:00:01 vni 1 port 8472"))
        let statusJSONRun = try runProgram("/sbin/ip", ["netns", "exec", ns, binary, "status", "--bpffs", bpffs, "--json",
                                                        "--state-file", "/run/\(tag)-none.json"])
        #expect(statusJSONRun.status == 3)
        let statusJSON = statusJSONRun.output
        #expect(statusJSON.contains(#""programs":[{"name":"fxdp_encap","id":\#(encapID),"hook":"tcx egress""#))
        #expect(statusJSON.contains(#""state":null"#))
    }

    @Test("status with a state file whose daemon is gone says so and still shows the kernel side")
    func statusAfterStop() throws {
        let dir = "/run/fxops-\(getpid())-st\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        var state = NodeState.sample()
        state.pid = 0x3FFF_FFF0
        try state.write(to: NodeState.path(forSubnetFile: dir + "/subnet.env"))
        let report = StatusReport.gather(bpffs: dir + "/no-bpffs", stateFile: NodeState.path(forSubnetFile: dir + "/subnet.env"))
        let text = report.text(now: 1_790_000_100)
        #expect(text.contains("daemon:     NOT running (pid 1073741808 is gone); last state written 2026-09-21"))
        #expect(text.contains("data path:  bpf-xdp: BPF (XDP decap; …) over flannel.1"))
        #expect(text.contains("subnet:     10.5.1.0/24"))
        #expect(text.contains("lease:      expires 2026-09-22 "))
        #expect(text.contains("(in 23h58m;"))
        #expect(text.contains("etcd:       connected (API v3, http://127.0.0.1:2379), last contact 10s ago"))
        #expect(text.contains("masquerade: off"))
        #expect(text.contains("forward:    off (--iptables-forward-rules=false)"))
        #expect(!text.contains("WARNING:") && !text.contains("etcd API:"))
        #expect(text.contains("pins:       none under \(dir)/no-bpffs/flanneld-xdp"))
        #expect(report.exitStatus == 3)
        #expect(!text.contains("ready:"), "readiness is not shown for a daemon that is gone")

        // A dual-stack config's warning, the etcd API's reason and the blackhole route get their lines.
        state.warnings = NetworkConfigWarningSample.dualStack
        state.etcdAPIDetail = "auto: /coreos.com/network/config found in v2 (v3: not there)"
        state.blackholeRoute = true
        try state.write(to: NodeState.path(forSubnetFile: dir + "/subnet.env"))
        let warned = StatusReport.gather(bpffs: dir + "/no-bpffs", stateFile: NodeState.path(forSubnetFile: dir + "/subnet.env"))
            .text(now: 1_790_000_100)
        #expect(warned.contains("WARNING:    the network config sets EnableIPv6"), "\(warned)")
        #expect(warned.contains("etcd API:   auto: /coreos.com/network/config found in v2"))
        #expect(warned.contains("blackhole:  on: a blackhole route for 10.5.1.0/24"))
    }

    @Test("status exit status: 0 running and ready, 1 running and not ready (the reason shown), 3 not running")
    func statusExitStatus() throws {
        let dir = "/run/fxops-\(getpid())-ex\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        let path = NodeState.path(forSubnetFile: dir + "/subnet.env")
        func report(_ state: NodeState) throws -> StatusReport {
            try state.write(to: path)
            return StatusReport.gather(bpffs: dir + "/no-bpffs", stateFile: path)
        }
        #expect(StatusReport.gather(bpffs: dir, stateFile: path).exitStatus == 3, "no state file: never ran")
        var state = NodeState()  // pid: this process, which runs
        state.ready = true
        var r = try report(state)
        #expect(r.exitStatus == 0)
        #expect(r.text().contains("ready:      yes\n"))
        state.ready = false
        state.notReadyReason = "lease confirmed by etcd: degraded: started from the last known state"
        r = try report(state)
        #expect(r.exitStatus == 1)
        #expect(r.text().contains("ready:      NO: lease confirmed by etcd: degraded"), "\(r.text())")
        // A state file from a daemon that did not record readiness: running is all it can tell.
        state.ready = nil
        #expect(try report(state).exitStatus == 0)
        state.ready = true
        state.pid = 0x3FFF_FFF0
        #expect(try report(state).exitStatus == 3)
    }
}

enum NetworkConfigWarningSample {
    /// A warning as the daemon stores one in the state file (no config gives one today: the text
    /// only has to reach `status`).
    static var dualStack: String {
        "the network config sets EnableIPv6 (a sample warning line)"
    }
}
