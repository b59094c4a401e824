// BenchDatapath — the same traffic over every data path, in interleaved rounds.
//
// Design: one NetnsLab per path (two nodes on a bridge "wire", one pod per node behind cni0), all
// built before the first round and kept until the end, so a round only switches which lab carries
// the traffic and no path is measured on a lab another path left half-configured. Every lab has the
// same addresses, MTU (1500 on the wire) and offloads; the offloads are read back per path after
// set-up and printed, because attaching native XDP to a veth changes its peer's
// (docs/PITFALLS.md, "XDP on veth").
//
// The paths, set up through the production APIs where there is one:
//   1  no overlay: host-gw routes (`<peer pods> via <peer node IP> dev eth0`), the machine's bound;
//   2  flannel.1 exactly as stock flanneld configures it (NetnsLab.makeFlannelStandIn) plus its
//      neighbour/fdb/route per peer (addFlannelPeerRoutes);
//   3  path 2 plus our programs: FlannelBPF loaded on a private bpffs per node, NodeConfig written,
//      FlannelBPF.attach in the node's namespace, the peer upserted through BPFPeerTable — once
//      with XDP decap (3a), once with kernel decap behind the TC source check (3b);
//   4  UserspaceDataplane as the daemon starts it (its defaults: one queue, offloads on), VXLAN
//      framing (4a) and flannel's legacy udp framing (4b); the TUN addressed with the ip CLI.
// The IPv6 paths (2v6, 3a6, 3b6, 4a6) are 2, 3a, 3b and 4a for IPv6 pods over the IPv6 underlay of
// a dual-stack node: flannel-v6.1 as stock flanneld configures it (makeFlannelV6StandIn) with its
// per-peer entries, NodeConfig6 and BPFIPv6PeerTable with `attach(…, overlay6Ifindex:)`, the
// userspace path's IPv6 socket; the traffic goes to the server pod's IPv6 address.
// Per round and path: iperf3 single stream, iperf3 -P 4 (whole-machine CPU from /proc/stat over it),
// and a TCP request/response run (BenchRR).

import BPFDataplane
import BPFLoader
import FlannelDaemon
import Foundation
import Glibc
import Logging
import NetTypes
import TestSupport
import UserspaceDataplane

enum BenchPath: String, CaseIterable, Sendable {
    case hostGW = "1 no overlay (host-gw)"
    case kernelVXLAN = "2 kernel vxlan (flanneld)"
    case bpfXDP = "3a BPF encap + XDP decap"
    case bpfTC = "3b BPF encap + kernel decap"
    case bpfFast = "3c BPF fast path"
    case bpfFastBridge = "3d BPF fast path, bridge hook"
    case userspaceVXLAN = "4a userspace vxlan"
    case userspaceUDP = "4b userspace udp (legacy)"
    case kernelVXLAN6 = "2v6 kernel vxlan IPv6 (flanneld's flannel-v6)"
    case bpfXDP6 = "3a6 BPF encap6 + XDP decap (IPv6)"
    case bpfTC6 = "3b6 BPF encap6 + kernel decap (IPv6)"
    case userspaceVXLAN6 = "4a6 userspace vxlan IPv6"

    var shortID: String {
        switch self {
        case .hostGW: "hgw"
        case .kernelVXLAN: "kvx"
        case .bpfXDP: "bxd"
        case .bpfTC: "btc"
        case .bpfFast: "bfp"
        case .bpfFastBridge: "bfb"
        case .userspaceVXLAN: "uvx"
        case .userspaceUDP: "uud"
        case .kernelVXLAN6: "kv6"
        case .bpfXDP6: "bx6"
        case .bpfTC6: "bt6"
        case .userspaceVXLAN6: "uv6"
        }
    }
}

extension BenchPath {
    var isFast: Bool { self == .bpfFast || self == .bpfFastBridge }
    /// IPv6 pods over the IPv6 underlay.
    var isIPv6: Bool { [.kernelVXLAN6, .bpfXDP6, .bpfTC6, .userspaceVXLAN6].contains(self) }
}

/// One path's lab, set up and ready for traffic.
final class PathLab: @unchecked Sendable {
    // @unchecked: built and used by the bench's one thread; the dataplanes are Sendable themselves.
    let path: BenchPath
    let lab: NetnsLab
    let nodes: [LabNode]
    private(set) var bpf: [FlannelBPF] = []
    private(set) var bpffsMounts: [String] = []
    private(set) var userspace: [UserspaceDataplane] = []
    private(set) var rrServer: RRServer?
    /// The nodes' IPv6 side on the IPv6 paths.
    private(set) var ipv6: [LabNodeIPv6] = []
    var offloads: [String: String] = [:]
    var notes: [String] = []

    static let network = IPv4Subnet(cidr: "10.5.0.0/16")!
    static let ipv6Network = IPv6Subnet(cidr: "fd00:5::/48")!

    /// The server pod's address the traffic goes to (its IPv6 one on the IPv6 paths).
    var serverIP: String { ipv6.isEmpty ? "\(nodes[1].podIP)" : "\(ipv6[1].podIP)" }
    static let rrPort: UInt16 = 5301
    static let iperfPort: UInt16 = 5201

    init(path: BenchPath, registry: BenchCleanup) throws {
        self.path = path
        lab = try NetnsLab(tag: "bench")
        registry.add(lab: lab)
        nodes = try lab.makeCluster(nodes: 2, podNetwork: PathLab.network)
        let (a, b) = (nodes[0], nodes[1])
        switch path {
        case .hostGW:
            try lab.addHostGWRoute(on: a, peer: Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: nil))
            try lab.addHostGWRoute(on: b, peer: Peer(subnet: a.podSubnet, publicIP: a.nodeIP, vtepMAC: nil))
        case .kernelVXLAN, .bpfXDP, .bpfTC, .bpfFast, .bpfFastBridge, .kernelVXLAN6, .bpfXDP6, .bpfTC6:
            let sa = try lab.makeFlannelStandIn(node: a)
            let sb = try lab.makeFlannelStandIn(node: b)
            try lab.addFlannelPeerRoutes(on: a, peer: sb.asPeer)
            try lab.addFlannelPeerRoutes(on: b, peer: sa.asPeer)
            var v6: [FlannelV6StandIn?] = [nil, nil]
            if path.isIPv6 {
                ipv6 = try nodes.map { try lab.addIPv6(to: $0, podNetwork: PathLab.ipv6Network) }
                v6 = try ipv6.map { try lab.makeFlannelV6StandIn(node: $0) }
                try lab.addFlannelV6PeerRoutes(on: a, peer: v6[1]!.asPeer)
                try lab.addFlannelV6PeerRoutes(on: b, peer: v6[0]!.asPeer)
            }
            if path != .kernelVXLAN && path != .kernelVXLAN6 {
                let mode: DecapMode = path == .bpfXDP || path == .bpfXDP6 ? .xdp : .tc
                for (me, other) in [((sa, v6[0]), (sb, v6[1])), ((sb, v6[1]), (sa, v6[0]))] {
                    try attachBPF(me.0, peer: other.0, ipv6: me.1.map { ($0, other.1!) }, mode: mode, fastPath: path.isFast, registry: registry)
                }
            }
        case .userspaceVXLAN, .userspaceUDP, .userspaceVXLAN6:
            var peers: [(Peer, IPv6Peer?)] = []
            if path.isIPv6 { ipv6 = try nodes.map { try lab.addIPv6(to: $0, podNetwork: PathLab.ipv6Network) } }
            for (i, node) in nodes.enumerated() {
                let (dp, peer, peer6) = try startUserspace(node, vxlan: path != .userspaceUDP, ipv6: ipv6.isEmpty ? nil : ipv6[i])
                userspace.append(dp)
                registry.add(userspace: dp)
                peers.append((peer, peer6))
            }
            for (me, other) in [(0, 1), (1, 0)] {
                try userspace[me].upsert(peers[other].0)
                if let peer6 = peers[other].1 { try userspace[me].ipv6Peers.upsert(peer6) }
            }
        }
        // Every node as flannel's kube-flannel.yml runs it (--ip-masq): its masquerade table, which
        // also turns connection tracking on, as kube-proxy does on any Kubernetes node.
        for node in nodes {
            try NetnsThread.run(namespace: node.name) {
                try Masquerade.install(network: PathLab.network, subnet: node.podSubnet)
            }
        }
        for side in ipv6 {
            try NetnsThread.run(namespace: side.node.name) {
                try Masquerade.install(.ipv6(network: PathLab.ipv6Network, subnet: side.podSubnet))
            }
        }
        if path.isFast {
            // A first exchange on the kernel path lets the bridges learn the pods' MACs.
            for (from, to) in [(a, b), (b, a)] { _ = try lab.waitForPing(from: from.podNamespace, to: to.podIP) }
            for (node, object) in zip(nodes, bpf) {
                let pass = try NetnsThread.run(namespace: node.name) {
                    try FastPathSync(bpf: object, podSubnet: node.podSubnet, hook: path == .bpfFastBridge ? .bridges : .podPorts,
                                     logger: Logger(label: "fxbench.fast")).syncOnce()
                }
                notes.append("\(node.name): fast path encap on \(pass.hooked.values.sorted()), \(pass.pods) pod(s)")
            }
        }
        rrServer = ipv6.isEmpty ? try RRServer(namespace: b.podNamespace, address: b.podIP, port: PathLab.rrPort)
            : try RRServer(namespace: b.podNamespace, address: ipv6[1].podIP, port: PathLab.rrPort)
        offloads = try readOffloads()
    }

    /// `ipv6`: this node's flannel-v6.1 and the peer's, for the IPv6 half.
    private func attachBPF(_ me: FlannelStandIn, peer: FlannelStandIn, ipv6: (me: FlannelV6StandIn, peer: FlannelV6StandIn)? = nil,
                           mode: DecapMode, fastPath: Bool, registry: BenchCleanup) throws {
        let node = me.node
        let mount = "/run/\(lab.prefix)-\(node.index)-bpffs"
        try BPFFS.ensureMounted(at: mount)
        bpffsMounts.append(mount)
        registry.add(bpffs: mount)
        var logger = Logger(label: "fxbench.bpf")
        logger.logLevel = .warning
        let object = try FlannelBPF(bpffs: mount, logger: logger)
        let underlay = try lab.linkIndex(node.name, node.underlayIfname)
        let overlay = try lab.linkIndex(node.name, me.ifname)
        var config = NodeConfig(nodeIP: node.nodeIP, vtepMAC: me.vtepMAC, vni: me.vni, udpPort: me.port,
                                underlayIfindex: underlay, underlayMAC: try lab.linkMAC(node.name, node.underlayIfname),
                                overlayIfindex: overlay, overlayMTU: UInt16(me.mtu), fastPath: fastPath)
        if fastPath {
            // What the daemon does with the fast path on (docs/BPF-DATAPATH.md "The fast path").
            try NetnsThread.run(namespace: node.name) { try ConntrackTCPLiberal.enable() }
            config.conntrackTCPLiberal = true
        }
        try object.writeConfig(config)
        try object.peerTable().upsert(peer.asPeer)
        var overlay6: Int32?
        if let ipv6 {
            let index = try lab.linkIndex(node.name, ipv6.me.ifname)
            try object.writeConfig6(NodeConfig6(nodeIP: ipv6.me.node.nodeIP, vtepMAC: ipv6.me.vtepMAC, overlayIfindex: index,
                                                overlayMTU: UInt16(node.underlayMTU - 70), network: PathLab.ipv6Network))
            try object.ipv6PeerTable().upsert(BPFPeer6(subnet: ipv6.peer.subnet, publicIP: ipv6.peer.node.nodeIP, vtepMAC: ipv6.peer.vtepMAC))
            overlay6 = index
        }
        let state = try NetnsThread.run(namespace: node.name) {
            try object.attach(overlayIfindex: overlay, underlayIfindex: underlay, mode: mode, overlay6Ifindex: overlay6)
        }
        notes.append("\(node.name): \(state)")
        bpf.append(object)
    }

    /// The userspace path on `node`, as the daemon starts it (DataplaneComposer in the Dataplane module).
    /// With `ipv6`, IPv6 pods too, as the daemon runs a dual-stack node (one TUN, the IPv6 network
    /// routed into it with flannel-v6's MTU).
    private func startUserspace(_ node: LabNode, vxlan: Bool, ipv6: LabNodeIPv6? = nil) throws -> (UserspaceDataplane, Peer, IPv6Peer?) {
        let mac = MACAddress.randomLocal(), mac6 = MACAddress.randomLocal()
        let encapsulation: UserspaceConfig.Encapsulation = vxlan ? .vxlan(vni: 1, port: 8472, localVTEPMAC: mac) : .udp(port: 8285)
        let tun = vxlan ? "flannel-u.1" : "flannel0"
        let config = UserspaceConfig(encapsulation: encapsulation, localIP: node.nodeIP, tunName: tun,
                                     mtu: node.underlayMTU - encapsulation.overhead, icmpSourceIP: node.podSubnet.address,
                                     ipv6: ipv6.map { UserspaceIPv6Config(localIP: $0.nodeIP, localVTEPMAC: mac6, mtu: node.underlayMTU - 70) })
        var logger = Logger(label: "fxbench.userspace")
        logger.logLevel = .warning
        let dp = try NetnsThread.run(namespace: node.name) { try UserspaceDataplane(config: config, logger: logger) }
        try lab.sh(node.name, ["addr", "add", "\(node.podSubnet.address)/32", "dev", tun])
        try lab.sh(node.name, ["link", "set", tun, "up"])
        try lab.sh(node.name, ["route", "add", "\(PathLab.network)", "dev", tun])
        if let ipv6 {
            try lab.sh(node.name, ["-6", "addr", "add", "\(ipv6.podSubnet.address)/128", "dev", tun, "nodad"])
            try lab.sh(node.name, ["-6", "route", "add", "\(PathLab.ipv6Network)", "dev", tun, "mtu", "\(node.underlayMTU - 70)"])
        }
        try dp.start()
        return (dp, Peer(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: vxlan ? mac : nil),
                ipv6.map { IPv6Peer(subnet: $0.podSubnet, publicIP: $0.nodeIP, vtepMAC: mac6) })
    }

    /// "n1: encap_ok 12, fast_encap_ok 3456, …": every counter that is not zero, per node.
    func countersMoved() -> String {
        zip(nodes, bpf).map { node, object in
            let counts = (try? object.counters()) ?? [:]
            let moved = counts.filter { $0.value.packets > 0 }.sorted { $0.key.rawValue < $1.key.rawValue }
            return "\(node.name.suffix(2)) counters: " + moved.map { "\($0.key.name) \($0.value.packets)" }.joined(separator: ", ")
        }.joined(separator: "; ")
    }

    /// Offload flags of the underlay on both sides of each node's wire veth.
    func readOffloads() throws -> [String: String] {
        var result: [String: String] = [:]
        for node in nodes {
            result["\(node.name.suffix(2)):eth0"] = try Offloads.read(namespace: node.name, ifname: node.underlayIfname).description
            result["wire:\(node.wireIfname)"] = try Offloads.read(namespace: lab.wireNamespace, ifname: node.wireIfname).description
        }
        return result
    }

    func close() {
        rrServer?.stop()
        rrServer = nil
        for dp in userspace { dp.stop() }
        lab.cleanup()
        for m in bpffsMounts { BPFFS.unmount(m); rmdir(m) }
        bpffsMounts = []
    }
}

/// The legacy ethtool "get" commands (struct ethtool_value), read with SIOCETHTOOL: no ethtool CLI
/// needed, and it works on a thread inside the namespace.
struct Offloads: Sendable, CustomStringConvertible {
    var flags: [(String, Bool?)]

    static let commands: [(String, UInt32)] = [
        ("rx-csum", 0x14), ("tx-csum", 0x16), ("sg", 0x18), ("tso", 0x1e), ("gso", 0x23), ("gro", 0x2b),
    ]

    var description: String {
        flags.map { name, on in "\(name) \(on.map { $0 ? "on" : "off" } ?? "?")" }.joined(separator: ", ")
    }

    static func read(namespace: String, ifname: String) throws -> Offloads {
        try NetnsThread.run(namespace: namespace) { () -> Offloads in
            let fd = socket(AF_INET, 2 /* SOCK_DGRAM */ | 0o2000000 /* SOCK_CLOEXEC */, 0)
            guard fd >= 0 else { return Offloads(flags: []) }
            defer { close(fd) }
            var flags: [(String, Bool?)] = []
            for (name, cmd) in commands {
                var value: (UInt32, UInt32) = (cmd, 0)
                var ifr = ifreq()
                withUnsafeMutableBytes(of: &ifr.ifr_ifrn.ifrn_name) { dst in
                    for (i, b) in ifname.utf8.prefix(15).enumerated() { dst[i] = b }
                }
                let rc = withUnsafeMutablePointer(to: &value) { vp -> Int32 in
                    ifr.ifr_ifru.ifru_data = UnsafeMutableRawPointer(vp).assumingMemoryBound(to: CChar.self)
                    return ioctl(fd, 0x8946, &ifr)
                }
                flags.append((name, rc == 0 ? value.1 != 0 : nil))
            }
            return Offloads(flags: flags)
        }
    }
}

/// What one round measures on one path.
struct DatapathRunner {
    var seconds: Int
    var rrTransactions: Int

    static var ticksPerSecond: Double { Double(sysconf(Int32(_SC_CLK_TCK))) }

    static func procStat() -> CPUTimes? {
        CPUTimes.parse(procStat: readFile("/proc/stat"))
    }

    /// utime + stime of this process (all threads), in ticks.
    static func ownCPU() -> UInt64? {
        ProcessCPU.parse(stat: readFile("/proc/self/stat"))
    }

    /// iperf3 from pod 1 to pod 2 with `streams` streams.
    func iperf(_ pl: PathLab, streams: Int) throws -> IperfReport {
        let server = pl.nodes[1], client = pl.nodes[0]
        let daemon = try pl.lab.spawn(server.podNamespace, [LabTools.iperf3, "-s", "-1", "-B", pl.serverIP, "-p", "\(PathLab.iperfPort)"])
        defer { daemon.terminate(grace: 1) }
        var last = ""
        for _ in 0..<30 {
            // Spawned, not run: the lab kills it by pid at cleanup, and a client whose path vanished
            // (Ctrl-C deleted the namespaces) cannot hang the bench: it gets a deadline.
            let run = try pl.lab.spawn(client.podNamespace, [LabTools.iperf3, "-c", pl.serverIP, "-p", "\(PathLab.iperfPort)",
                                                             "-t", "\(seconds)", "-P", "\(streams)", "-J", "--connect-timeout", "2000"])
            if run.waitExit(timeout: Double(seconds) + 20) == nil {
                run.terminate(grace: 1)
                throw IperfParseError.iperfError("iperf3 client still running \(seconds + 20) s after a \(seconds) s test; killed")
            }
            last = run.output()
            do {
                return try IperfJSON.parse(last)
            } catch {
                // The server needs a moment to listen; anything else is a real failure.
                guard last.contains("refused") else { throw error }
                usleep(100_000)
            }
        }
        throw IperfParseError.iperfError("server never listened: \(last.suffix(300))")
    }

    /// One round on one path, appended to `samples`.
    func round(_ pl: PathLab, into samples: inout PathSamples) {
        do {
            let single = try iperf(pl, streams: 1)
            samples.single.append(single.receivedBitsPerSecond / 1e9)
        } catch { samples.failures.append("single: \(error)") }
        do {
            let before = Self.procStat(), ownBefore = Self.ownCPU()
            let multi = try iperf(pl, streams: 4)
            let after = Self.procStat(), ownAfter = Self.ownCPU()
            samples.multi.append(multi.receivedBitsPerSecond / 1e9)
            let bits = multi.receivedBytes * 8
            if let before, let after {
                let busy = Double((after - before).busy) / Self.ticksPerSecond
                if let c = BenchMath.cpuSecondsPerGigabit(busySeconds: busy, bits: bits) { samples.cpuPerGbit.append(c) }
            }
            if let ownBefore, let ownAfter {
                let own = Double(ownAfter &- ownBefore) / Self.ticksPerSecond
                if let c = BenchMath.cpuSecondsPerGigabit(busySeconds: own, bits: bits) { samples.processCPUPerGbit.append(c) }
            }
        } catch { samples.failures.append("4-stream: \(error)") }
        do {
            let client = pl.nodes[0].podNamespace
            let rr = try pl.ipv6.isEmpty
                ? RRClient.run(namespace: client, server: pl.nodes[1].podIP, port: PathLab.rrPort, transactions: rrTransactions)
                : RRClient.run(namespace: client, server: pl.ipv6[1].podIP, port: PathLab.rrPort, transactions: rrTransactions)
            samples.rrP50.append(rr.p50)
            samples.rrP99.append(rr.p99)
            samples.rrRate.append(rr.transactionsPerSecond)
        } catch { samples.failures.append("rr: \(error)") }
    }
}
