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
        }
    }
}

extension BenchPath {
    var isFast: Bool { self == .bpfFast || self == .bpfFastBridge }
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
    var offloads: [String: String] = [:]
    var notes: [String] = []

    static let network = IPv4Subnet(cidr: "10.5.0.0/16")!
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
        case .kernelVXLAN, .bpfXDP, .bpfTC, .bpfFast, .bpfFastBridge:
            let sa = try lab.makeFlannelStandIn(node: a)
            let sb = try lab.makeFlannelStandIn(node: b)
            try lab.addFlannelPeerRoutes(on: a, peer: sb.asPeer)
            try lab.addFlannelPeerRoutes(on: b, peer: sa.asPeer)
            if path != .kernelVXLAN {
                let mode: DecapMode = path == .bpfXDP ? .xdp : .tc
                for (me, other) in [(sa, sb), (sb, sa)] {
                    try attachBPF(me, peer: other, mode: mode, fastPath: path.isFast, registry: registry)
                }
            }
        case .userspaceVXLAN, .userspaceUDP:
            var peers: [Peer] = []
            for node in nodes {
                let (dp, peer) = try startUserspace(node, vxlan: path == .userspaceVXLAN)
                userspace.append(dp)
                registry.add(userspace: dp)
                peers.append(peer)
            }
            try userspace[0].upsert(peers[1])
            try userspace[1].upsert(peers[0])
        }
        // Every node as flannel's kube-flannel.yml runs it (--ip-masq): its masquerade table, which
        // also turns connection tracking on, as kube-proxy does on any Kubernetes node.
        for node in nodes {
            try NetnsThread.run(namespace: node.name) {
                try Masquerade.install(network: PathLab.network, subnet: node.podSubnet)
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
        rrServer = try RRServer(namespace: b.podNamespace, address: b.podIP, port: PathLab.rrPort)
        offloads = try readOffloads()
    }

    private func attachBPF(_ me: FlannelStandIn, peer: FlannelStandIn, mode: DecapMode, fastPath: Bool, registry: BenchCleanup) throws {
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
        let state = try NetnsThread.run(namespace: node.name) {
            try object.attach(overlayIfindex: overlay, underlayIfindex: underlay, mode: mode)
        }
        notes.append("\(node.name): \(state)")
        bpf.append(object)
    }

    /// The userspace path on `node`, as the daemon starts it (DataplaneComposer in the Dataplane module).
    private func startUserspace(_ node: LabNode, vxlan: Bool) throws -> (UserspaceDataplane, Peer) {
        let mac = MACAddress.randomLocal()
        let encapsulation: UserspaceConfig.Encapsulation = vxlan ? .vxlan(vni: 1, port: 8472, localVTEPMAC: mac) : .udp(port: 8285)
        let tun = vxlan ? "flannel-u.1" : "flannel0"
        let config = UserspaceConfig(encapsulation: encapsulation, localIP: node.nodeIP, tunName: tun,
                                     mtu: node.underlayMTU - encapsulation.overhead, icmpSourceIP: node.podSubnet.address)
        var logger = Logger(label: "fxbench.userspace")
        logger.logLevel = .warning
        let dp = try NetnsThread.run(namespace: node.name) { try UserspaceDataplane(config: config, logger: logger) }
        try lab.sh(node.name, ["addr", "add", "\(node.podSubnet.address)/32", "dev", tun])
        try lab.sh(node.name, ["link", "set", tun, "up"])
        try lab.sh(node.name, ["route", "add", "\(PathLab.network)", "dev", tun])
        try dp.start()
        return (dp, Peer(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: vxlan ? mac : nil))
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
        let daemon = try pl.lab.spawn(server.podNamespace, [LabTools.iperf3, "-s", "-1", "-B", "\(server.podIP)", "-p", "\(PathLab.iperfPort)"])
        defer { daemon.terminate(grace: 1) }
        var last = ""
        for _ in 0..<30 {
            // Spawned, not run: the lab kills it by pid at cleanup, and a client whose path vanished
            // (Ctrl-C deleted the namespaces) cannot hang the bench: it gets a deadline.
            let run = try pl.lab.spawn(client.podNamespace, [LabTools.iperf3, "-c", "\(server.podIP)", "-p", "\(PathLab.iperfPort)",
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
            let rr = try RRClient.run(namespace: pl.nodes[0].podNamespace, server: pl.nodes[1].podIP, port: PathLab.rrPort,
                                      transactions: rrTransactions)
            samples.rrP50.append(rr.p50)
            samples.rrP99.append(rr.p99)
            samples.rrRate.append(rr.transactionsPerSecond)
        } catch { samples.failures.append("rr: \(error)") }
    }
}
