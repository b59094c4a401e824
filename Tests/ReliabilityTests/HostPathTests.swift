// The data path on hosts as distributions set them up, and on networks with a hop between nodes:
//
// - Reverse-path filtering: pod traffic flows both ways in every mode (XDP decap, TC-checked kernel
//   decap, the userspace path, vxlan with DirectRouting, host-gw) with rp_filter 0, 1 (strict, the
//   RHEL/CentOS default) and 2 (loose), set on `all`, `default` and every device of both nodes.
//   XDP decap hands what it stripped to flannel.<VNI>'s ingress (the steer), so the route back to
//   the pod's source points at the device the packet arrived on, as with the kernel's decap.
// - The outer TTL follows net.ipv4.ip_default_ttl, as the kernel vxlan device with flannel's TTL
//   "auto" does, also when it changes while the daemon runs.
// - A router between the nodes with a 1400-byte path MTU fragments the VXLAN datagrams (sent with
//   DF clear, as flannel's device sends them): large pod packets are delivered both ways, through
//   the kernel's reassembly. The same router sets Congestion Experienced on ECN-capable VXLAN: the
//   receiving pod sees CE on its TCP segments (IP_ECN_decapsulate), in every mode.
// - All of it with the fast path engaged too (modes fastTC and fastXDP: --ip-masq turns connection
//   tracking on, so established flows skip both stacks, rp_filter included): the counters show the
//   fast path carried the traffic, and the fast decap copies CE itself.

import BPFDataplane
import CBPF
import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("HostPathTests: rp_filter 0/1/2, TTL, fragments and ECN in every mode", .serialized,
       .needsRoot, .ownThreads)
struct HostPathTests {
    enum Mode: String, CaseIterable, CustomStringConvertible, Sendable {
        case xdp, tc, userspace, directRouting, hostGW, fastTC, fastXDP
        var description: String { rawValue }

        var backend: String {
            switch self {
            case .directRouting: #"{"Type":"vxlan","DirectRouting":true}"#
            case .hostGW: #"{"Type":"host-gw"}"#
            default: #"{"Type":"vxlan"}"#
            }
        }

        var flags: [String] {
            switch self {
            case .xdp: ["--dataplane", "xdp"]
            case .tc: ["--dataplane", "tc"]
            case .fastTC: ["--dataplane", "tc", "--ip-masq"]
            case .fastXDP: ["--dataplane", "xdp", "--ip-masq"]
            case .userspace: ["--dataplane", "userspace"]
            case .directRouting, .hostGW: []
            }
        }

        /// Our own encapsulation carries the traffic (so the outer TTL is ours to check).
        var encapsulates: Bool { self == .xdp || self == .tc || self == .userspace || isFast }
        /// Connection tracking is on, so established flows take the fast path.
        var isFast: Bool { self == .fastTC || self == .fastXDP }
    }

    /// Sets rp_filter to `value` on all, default and every device of `namespace`.
    static func setReversePathFilter(_ lab: NetnsLab, _ namespace: String, _ value: Int) throws {
        let names = try lab.sh(namespace, ["-o", "link", "show"]).split(separator: "\n").compactMap { line in
            line.split(separator: ":").dropFirst().first.map { String($0.trimmingCharacters(in: .whitespaces).split(separator: "@")[0]) }
        }
        let script = (["all", "default"] + names).map { "echo \(value) > /proc/sys/net/ipv4/conf/\($0)/rp_filter" }.joined(separator: " && ")
        try lab.sh(namespace, ["/bin/sh", "-c", script])
    }

    /// The outer IPv4 TTL of VXLAN datagrams from `source`, as labels "ttl<N>".
    static func outerTTLs(from source: IPv4Address) -> @Sendable (ArraySlice<UInt8>) -> [String] {
        { frame in
            let f = frame.startIndex
            guard frame.count >= 14 + 28, frame[f + 12] == 0x08, frame[f + 13] == 0x00, frame[f + 23] == 17,
                  IPv4Address(bytes: frame[(f + 26)..<(f + 30)]) == source else { return [] }
            let udp = f + 14 + Int(frame[f + 14] & 0x0f) * 4
            guard frame.count >= udp - f + 4, UInt16(frame[udp + 2]) << 8 | UInt16(frame[udp + 3]) == 8472 else { return [] }
            return ["ttl\(frame[f + 22])"]
        }
    }

    @Test(arguments: Mode.allCases)
    func podTrafficFlowsWithEveryReversePathFilter(_ mode: Mode) throws {
        let cluster = try FlannelCluster(tag: "rpf", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2, backend: mode.backend)
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let lab = cluster.lab
        // Strict before the daemons start: the devices they create inherit `default`.
        for node in [a, b] { try HostPathTests.setReversePathFilter(lab, node.name, 1) }
        try lab.sysctl(a.name, ["net.ipv4.ip_default_ttl=77"])
        for node in [a, b] { try cluster.startDaemon(node, extra: mode.flags) }
        // On the wire side of A's link: B's own XDP program would strip the VXLAN before a capture
        // on B's interface saw it.
        let ttlCapture = try PacketCapture(namespace: lab.wireNamespace, ifname: a.wireIfname, classify: HostPathTests.outerTTLs(from: a.nodeIP))

        for value in [1, 2, 0] {
            for node in [a, b] { try HostPathTests.setReversePathFilter(lab, node.name, value) }
            #expect(try lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 10), "\(mode), rp_filter \(value): no first reply")
            let ab = try lab.ping(from: a.podNamespace, to: b.podIP, count: 5, interval: 0.05)
            let ba = try lab.ping(from: b.podNamespace, to: a.podIP, count: 5, interval: 0.05)
            #expect(ab.received == 5 && ba.received == 5, "\(mode), rp_filter \(value): \(ab) \(ba)")
            let bps = try lab.tcpThroughput(from: b.podNamespace, to: a.podNamespace, serverIP: a.podIP, seconds: 1)
            #expect(bps > 1_000_000, "\(mode), rp_filter \(value): TCP \(bps) bit/s")
            print("HostPathTests.\(mode): rp_filter \(value): pings \(ab.received)+\(ba.received)/10, TCP \(Int(bps / 1e6)) Mbit/s")
        }
        if mode == .xdp {
            // XDP decapsulated it, and the steer moved it to flannel.1: the path the rp_filter needs.
            // (The fast path is on by default; with no connection tracking here it declined every
            // packet, which the steer counts under that reason.)
            #expect(try cluster.pinnedCounter(a, FXDP_C_DECAP_OK) > 0 && cluster.pinnedCounter(a, FXDP_C_FAST_DECAP_PASS_CONNTRACK) > 0)
        }
        if mode.isFast {
            // The TCP runs skipped both stacks (rp_filter among what they skipped) and still flowed.
            #expect(try cluster.pinnedCounter(a, FXDP_C_FAST_DECAP_OK) > 100 && cluster.pinnedCounter(b, FXDP_C_FAST_ENCAP_OK) > 100)
        }
        if mode.encapsulates {
            #expect(ttlCapture.wait(label: "ttl77", count: 1) >= 1, "\(mode): no VXLAN from A with TTL 77 (ip_default_ttl)")
            // Changed while the daemon runs: followed (the BPF encap within its 5 s check).
            try lab.sysctl(a.name, ["net.ipv4.ip_default_ttl=66"])
            let seen = try waitUntil(15) {
                _ = try lab.ping(from: a.podNamespace, to: b.podIP, count: 1, interval: 0.2)
                return ttlCapture.count(label: "ttl66") > 0
            }
            #expect(seen != nil, "\(mode): the outer TTL did not follow ip_default_ttl to 66")
        }
    }

    /// TCP segments reaching a pod with Congestion Experienced in their IPv4 header.
    static let congestionExperienced: @Sendable (ArraySlice<UInt8>) -> [String] = { frame in
        let f = frame.startIndex
        guard frame.count >= 34, frame[f + 12] == 0x08, frame[f + 13] == 0x00, frame[f + 23] == 6 else { return [] }
        return frame[f + 15] & 0x3 == 0x3 ? ["ce"] : ["not-ce"]
    }

    @Test(arguments: [Mode.xdp, .tc, .userspace, .fastTC, .fastXDP])
    func fragmentsAndECNThroughARouter(_ mode: Mode) throws {
        let cluster = try FlannelCluster(tag: "hop", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 1)
        defer { cluster.cleanup() }
        try cluster.addRoutedSegment(pathMTU: 1400)
        let b = try cluster.addNode(2, behindRouter: true)
        let a = cluster.nodes[0]
        let lab = cluster.lab
        let router = try #require(cluster.router)
        for node in [a, b] { try cluster.startDaemon(node, extra: mode.flags) }

        // Large packets: 1428-byte pod packets are 1478-byte VXLAN datagrams, over the path MTU.
        #expect(try lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 10))
        let big = ["-s", "1400"]
        let ab = try lab.run(a.podNamespace, [LabTools.ping, "-n", "-q", "-c", "5", "-i", "0.1", "-W", "2"] + big + ["\(b.podIP)"])
        let ba = try lab.run(b.podNamespace, [LabTools.ping, "-n", "-q", "-c", "5", "-i", "0.1", "-W", "2"] + big + ["\(a.podIP)"])
        #expect(ab.stdout.contains("5 received") && ba.stdout.contains("5 received"), "\(mode): large pings \(ab.stdout) \(ba.stdout)")
        let toB = try lab.tcpThroughput(from: a.podNamespace, to: b.podNamespace, serverIP: b.podIP, seconds: 1)
        let toA = try lab.tcpThroughput(from: b.podNamespace, to: a.podNamespace, serverIP: a.podIP, seconds: 1, port: 5202)
        #expect(toB > 1_000_000 && toA > 1_000_000, "\(mode): TCP over a fragmenting hop: \(toB) / \(toA) bit/s")
        if mode != .userspace {
            for node in [a, b] {
                #expect(try cluster.pinnedCounter(node, FXDP_C_DECAP_FRAGMENT_OK) > 0, "\(mode): \(node.name) checked no first fragment")
            }
        }
        print("HostPathTests.\(mode): 1400-byte path MTU: pings \(ab.stdout.contains("5 received")), TCP \(Int(toB / 1e6))/\(Int(toA / 1e6)) Mbit/s")

        // ECN: the router marks every ECN-capable VXLAN datagram CE; segments small enough not to
        // be fragmented (the XDP strip copies the mark itself).
        try lab.sh(router, ["/usr/sbin/nft", "add table ip fxecn; add chain ip fxecn markce { type filter hook forward priority 0 ; } ; add rule ip fxecn markce udp dport 8472 ip ecn ect0 ip ecn set ce"])
        for node in [a, b] { try lab.sysctl(node.podNamespace, ["net.ipv4.tcp_ecn=1"]) }
        for (from, to, port) in [(a, b, 5203), (b, a, 5204)] {
            let capture = try PacketCapture(namespace: to.podNamespace, ifname: "eth0", classify: HostPathTests.congestionExperienced)
            let server = try lab.spawn(to.podNamespace, [LabTools.iperf3, "-s", "-1", "-B", "\(to.podIP)", "-p", "\(port)"])
            defer { server.terminate(grace: 1) }
            // The server needs a moment to listen: a refused connection is tried again.
            for _ in 0..<50 {
                let client = try lab.run(from.podNamespace, [LabTools.iperf3, "-c", "\(to.podIP)", "-p", "\(port)", "-t", "1", "-M", "500", "-J"])
                if !client.stdout.contains("Connection refused") { break }
                usleep(100_000)
            }
            let ce = capture.count(label: "ce")
            #expect(ce > 0, "\(mode): \(from.name) → \(to.name): no CE-marked segment reached the pod (\(capture.count(label: "not-ce")) without)")
            print("HostPathTests.\(mode): ECN \(from.index)→\(to.index): \(ce) CE segments, \(capture.count(label: "not-ce")) without")
        }
        if mode == .xdp {
            #expect(try cluster.pinnedCounter(b, FXDP_C_DECAP_OK) > 0, "XDP decapsulated nothing itself")
        }
        if mode.isFast {
            for node in [a, b] {
                #expect(try cluster.pinnedCounter(node, FXDP_C_FAST_DECAP_OK) > 0, "\(mode): \(node.name): nothing took the fast path")
            }
        }
    }
}
