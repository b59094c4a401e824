// A network-namespace lab for tests: a cluster of "nodes" on one L2 wire, each with a pod behind a
// cni0 bridge, built entirely with the `ip`/`sysctl` CLIs so that it is a reference independent of
// the project's own netlink code.
//
// Topology (every piece inside namespaces the lab creates; the root namespace is never touched):
//
//   <prefix>-wire:  br0 ── vn1, vn2, …           (the underlay switch)
//   <prefix>-n1:    eth0 (veth peer of vn1, node IP), cni0 (bridge, <podSubnet>.1), vp (veth to pod)
//   <prefix>-p1:    eth0 (veth peer of vp, <podSubnet>.2), default via <podSubnet>.1
//
// Node namespaces forward (ip_forward=1) with rp_filter=0 (all, default, eth0): decapsulated
// traffic that XDP passes up arrives on eth0 while the route points at the overlay device, which
// strict rp_filter drops. GRO is switched on on the underlay veths: XDP_PASS decap needs it.
//
// Every name starts with a prefix made of the caller's tag, the pid and a per-process counter, so
// parallel tests and other helpers' tests never collide. `cleanup()` (also run by deinit) kills the
// processes the lab started (by pid) and deletes its namespaces; it is idempotent.

import CBPF
import CSystemShims
import Glibc
import NetTypes
import RuntimeSupport
import Synchronization

/// One node of a lab cluster.
public struct LabNode: Sendable, CustomStringConvertible {
    /// 1-based position in the cluster.
    public var index: Int
    /// The node's network namespace.
    public var name: String
    /// The pod's network namespace.
    public var podNamespace: String
    /// The node IP on the underlay (flannel's PublicIP).
    public var nodeIP: IPv4Address
    /// The underlay network the node IP belongs to.
    public var underlay: IPv4Subnet
    /// The node's underlay interface, inside `name`.
    public var underlayIfname: String
    public var underlayMTU: Int
    /// The wire-side veth of this node, inside the lab's wire namespace.
    public var wireIfname: String
    /// The node's pod subnet (flannel's lease subnet).
    public var podSubnet: IPv4Subnet
    /// The pod's address (<podSubnet>.2).
    public var podIP: IPv4Address
    /// cni0's address in the node (<podSubnet>.1), the pod's default gateway.
    public var podGateway: IPv4Address

    public var description: String { "\(name) (\(nodeIP), pods \(podSubnet))" }
}

/// What `makeFlannelStandIn` created: a vxlan device configured exactly as stock flanneld does.
public struct FlannelStandIn: Sendable {
    public var node: LabNode
    public var ifname: String
    public var vni: UInt32
    public var port: UInt16
    public var vtepMAC: MACAddress
    public var subnet: IPv4Subnet
    public var mtu: Int

    /// This node as a peer of the others (what its lease publishes).
    public var asPeer: Peer { Peer(subnet: subnet, publicIP: node.nodeIP, vtepMAC: vtepMAC) }
}

public final class NetnsLab: @unchecked Sendable {
    // @unchecked: mutable state is behind `state`'s mutex; the rest is immutable.
    public let prefix: String
    public let wireNamespace: String

    private struct State {
        var namespaces: [String] = []
        var processes: [LabProcess] = []
        var tempFiles: [String] = []
        var cleaned = false
    }
    private let state = Mutex(State())
    private static let counter = Atomic<Int>(0)
    private static let staleSwept = Atomic<Bool>(false)

    /// `tag`: a short name of the test area (e.g. "nl"); keep it ≤ 6 characters.
    public init(tag: String) throws {
        if NetnsLab.staleSwept.exchange(true, ordering: .relaxed) == false { NetnsLab.removeStaleNamespaces() }
        let n = NetnsLab.counter.add(1, ordering: .relaxed).newValue
        prefix = "fx\(tag)-\(getpid())-\(n)"
        wireNamespace = "\(prefix)-wire"
        try addNamespace(wireNamespace)
        try sh(wireNamespace, ["link", "add", "br0", "type", "bridge"])
        try sh(wireNamespace, ["link", "set", "br0", "up"])
    }

    deinit { cleanup() }

    // MARK: - Commands

    /// Runs `ip <args>` when `args[0]` is not an absolute path, else the command itself, inside
    /// namespace `ns` (nil: the caller's namespace, only for commands that change nothing outside
    /// the lab). Returns stdout; throws `LabError` with the command and stderr on a non-zero exit.
    @discardableResult
    public func sh(_ ns: String?, _ args: [String]) throws -> String {
        let argv = Self.argv(ns, args)
        let r = try CommandRunner.run(argv)
        guard r.status == 0 else { throw LabError(command: argv, status: r.status, stderr: r.stderr) }
        return r.stdout
    }

    /// Like `sh` but returns the status and output instead of throwing on a non-zero exit.
    public func run(_ ns: String?, _ args: [String]) throws -> LabCommandResult {
        try CommandRunner.run(Self.argv(ns, args))
    }

    private static func argv(_ ns: String?, _ args: [String]) -> [String] {
        let cmd = (args.first?.hasPrefix("/") ?? false) ? args : [LabTools.ip] + args
        guard let ns else { return cmd }
        return [LabTools.ip, "netns", "exec", ns] + cmd
    }

    /// Starts `args` (absolute path first) in `ns` in the background. Killed by pid at cleanup.
    /// `stdout`: a file for its output (nil: the lab makes a temp file, readable with `output()`).
    public func spawn(_ ns: String, _ args: [String], env: [String: String] = [:], stdout: String? = nil) throws -> LabProcess {
        let outPath: String
        if let stdout { outPath = stdout } else {
            outPath = try CommandRunner.makeTempFile("spawn")
            state.withLock { $0.tempFiles.append(outPath) }
        }
        let argv = Self.argv(ns, args)
        let pid = try CommandRunner.spawn(argv, env: env, stdoutPath: outPath, stderrPath: outPath)
        let p = LabProcess(pid: pid, command: argv, stdoutPath: outPath)
        state.withLock { $0.processes.append(p) }
        return p
    }

    /// Creates a namespace owned by the lab (deleted at cleanup), with loopback up.
    public func addNamespace(_ name: String) throws {
        try sh(nil, ["netns", "add", name])
        state.withLock { $0.namespaces.append(name) }
        try sh(name, ["link", "set", "lo", "up"])
    }

    /// A name unique to this lab, for namespaces a test adds itself.
    public func name(_ suffix: String) -> String { "\(prefix)-\(suffix)" }

    /// Sets sysctls (`key=value`) inside `ns`.
    public func sysctl(_ ns: String, _ settings: [String]) throws {
        try sh(ns, [LabTools.sysctl, "-q", "-w"] + settings)
    }

    // MARK: - Cluster

    /// Builds `nodes` nodes on the wire. Node i gets `underlay.host(i)`; its pod subnet is
    /// `podSubnets[i-1]` when given, else 10.<x>.i.0/24 inside `podNetwork`.
    public func makeCluster(
        nodes: Int,
        underlay: IPv4Subnet = IPv4Subnet(cidr: "192.168.77.0/24")!,
        podNetwork: IPv4Subnet = IPv4Subnet(cidr: "10.5.0.0/16")!,
        podSubnets: [IPv4Subnet]? = nil,
        mtu: Int = 1500
    ) throws -> [LabNode] {
        guard nodes >= 1, nodes < 250 else { throw LabError(command: [], message: "makeCluster: nodes must be 1...249") }
        if let podSubnets, podSubnets.count < nodes {
            throw LabError(command: [], message: "makeCluster: \(nodes) nodes but only \(podSubnets.count) pod subnets")
        }
        var result: [LabNode] = []
        for i in 1...nodes {
            let podSubnet = podSubnets?[i - 1]
                ?? IPv4Subnet(address: IPv4Address(podNetwork.address.value | UInt32(i) << 8), prefixLength: 24)!
            result.append(try addNode(index: i, nodeIP: underlay.host(UInt32(i)), underlay: underlay, podSubnet: podSubnet, mtu: mtu))
        }
        return result
    }

    /// Adds one node (and its pod) to the wire: on bridge `bridge` of the wire namespace, with
    /// `routes` (destination via gateway) for underlay networks behind a router.
    public func addNode(index: Int, nodeIP: IPv4Address, underlay: IPv4Subnet, podSubnet: IPv4Subnet, mtu: Int = 1500,
                        bridge: String = "br0", routes: [(IPv4Subnet, IPv4Address)] = []) throws -> LabNode {
        let node = LabNode(
            index: index, name: name("n\(index)"), podNamespace: name("p\(index)"),
            nodeIP: nodeIP, underlay: underlay, underlayIfname: "eth0", underlayMTU: mtu,
            wireIfname: "vn\(index)", podSubnet: podSubnet,
            podIP: podSubnet.host(2), podGateway: podSubnet.host(1))
        let w = wireNamespace, n = node.name, p = node.podNamespace
        try addNamespace(n)
        try addNamespace(p)

        // Underlay: veth from the wire bridge into the node.
        try sh(w, ["link", "add", node.wireIfname, "mtu", "\(mtu)", "type", "veth", "peer", "name", "eth0", "mtu", "\(mtu)", "netns", n])
        try sh(w, ["link", "set", node.wireIfname, "master", bridge, "up"])
        try sysctl(n, ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        try sh(n, ["addr", "add", "\(nodeIP)/\(underlay.prefixLength)", "dev", "eth0"])
        try sh(n, ["link", "set", "eth0", "up"])
        for (destination, gateway) in routes { try sh(n, ["route", "add", "\(destination)", "via", "\(gateway)"]) }
        try sysctl(n, ["net.ipv4.conf.eth0.rp_filter=0"])
        try setGRO(namespace: n, ifname: "eth0", on: true)
        try setGRO(namespace: w, ifname: node.wireIfname, on: true)

        // Pod side: cni0 bridge in the node, a veth into the pod namespace.
        try sh(n, ["link", "add", "cni0", "type", "bridge"])
        try sh(n, ["addr", "add", "\(node.podGateway)/\(podSubnet.prefixLength)", "dev", "cni0"])
        try sh(n, ["link", "set", "cni0", "up"])
        try sh(n, ["link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", p])
        try sh(n, ["link", "set", "vp", "master", "cni0", "up"])
        try sh(p, ["addr", "add", "\(node.podIP)/\(podSubnet.prefixLength)", "dev", "eth0"])
        try sh(p, ["link", "set", "eth0", "up"])
        try sh(p, ["route", "add", "default", "via", "\(node.podGateway)"])
        return node
    }

    /// A second underlay network `second` on bridge `bridge` of the wire namespace, joined to
    /// `first` (on br0) by a router namespace that forwards between them with a path MTU of
    /// `pathMTU` (a locked route MTU: the router fragments what is larger and has DF clear, as a
    /// lower-MTU hop between nodes does). Nodes on either side route the other network via the
    /// router's address in theirs (`.253`). Returns the router's namespace.
    @discardableResult
    public func addRoutedSegment(first: IPv4Subnet, second: IPv4Subnet, bridge: String = "br1", pathMTU: Int) throws -> String {
        let w = wireNamespace, r = name("rt")
        try sh(w, ["link", "add", bridge, "type", "bridge"])
        try sh(w, ["link", "set", bridge, "up"])
        try addNamespace(r)
        try sysctl(r, ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        for (side, network, wireSide, wireBridge) in [("ra", first, "vra", "br0"), ("rb", second, "vrb", bridge)] {
            try sh(w, ["link", "add", wireSide, "type", "veth", "peer", "name", side, "netns", r])
            try sh(w, ["link", "set", wireSide, "master", wireBridge, "up"])
            try sh(r, ["addr", "add", "\(network.host(253))/\(network.prefixLength)", "dev", side])
            try sh(r, ["link", "set", side, "up"])
            try sh(r, ["route", "replace", "\(network)", "dev", side, "mtu", "lock", "\(pathMTU)"])
        }
        return r
    }

    // MARK: - Flannel reference (CLI)

    /// Configures `flannel.<vni>` in `node` exactly as stock flanneld does (docs/FLANNEL-COMPAT.md):
    /// vxlan id VNI, local node IP, dev eth0, dstport `port`, nolearning; address <subnet>.0/32;
    /// MTU eth0−50; up. `vtepMAC` nil lets the kernel pick a random MAC, as flanneld does.
    @discardableResult
    public func makeFlannelStandIn(
        node: LabNode, vni: UInt32 = 1, port: UInt16 = 8472, vtepMAC: MACAddress? = nil, subnet: IPv4Subnet? = nil
    ) throws -> FlannelStandIn {
        let ifname = "flannel.\(vni)"
        let subnet = subnet ?? node.podSubnet
        let mtu = node.underlayMTU - 50
        var add = ["link", "add", ifname]
        if let vtepMAC { add += ["address", "\(vtepMAC)"] }
        add += ["mtu", "\(mtu)", "type", "vxlan", "id", "\(vni)", "local", "\(node.nodeIP)", "dev", node.underlayIfname,
                "dstport", "\(port)", "nolearning"]
        try sh(node.name, add)
        try sh(node.name, ["addr", "add", "\(subnet.address)/32", "dev", ifname])
        try sh(node.name, ["link", "set", ifname, "up"])
        let mac = try linkMAC(node.name, ifname)
        return FlannelStandIn(node: node, ifname: ifname, vni: vni, port: port, vtepMAC: mac, subnet: subnet, mtu: mtu)
    }

    /// flanneld's three entries for one vxlan peer, in its order: neighbour, fdb, onlink route.
    public func addFlannelPeerRoutes(on node: LabNode, vni: UInt32 = 1, peer: Peer) throws {
        guard let mac = peer.vtepMAC else { throw LabError(command: [], message: "peer \(peer) has no VtepMAC") }
        let dev = "flannel.\(vni)"
        let gw = "\(peer.subnet.address)"
        try sh(node.name, ["neigh", "replace", gw, "lladdr", "\(mac)", "dev", dev, "nud", "permanent"])
        try sh(node.name, [LabTools.bridge, "fdb", "replace", "\(mac)", "dev", dev, "dst", "\(peer.publicIP)", "self", "permanent"])
        try sh(node.name, ["route", "replace", "\(peer.subnet)", "via", gw, "dev", dev, "onlink"])
    }

    /// Deletes what `addFlannelPeerRoutes` added (route, then neighbour and fdb entry).
    public func removeFlannelPeerRoutes(on node: LabNode, vni: UInt32 = 1, peer: Peer) throws {
        let dev = "flannel.\(vni)"
        try sh(node.name, ["route", "del", "\(peer.subnet)", "via", "\(peer.subnet.address)", "dev", dev, "onlink"])
        try sh(node.name, ["neigh", "del", "\(peer.subnet.address)", "dev", dev])
        if let mac = peer.vtepMAC {
            try sh(node.name, [LabTools.bridge, "fdb", "del", "\(mac)", "dev", dev, "dst", "\(peer.publicIP)", "self"])
        }
    }

    /// Deletes `flannel.<vni>` (its neighbours, fdb entries and routes go with it), as after flanneld.
    public func removeFlannelStandIn(node: LabNode, vni: UInt32 = 1) throws {
        try sh(node.name, ["link", "del", "flannel.\(vni)"])
    }

    /// host-gw / DirectRouting style: `<peer subnet> via <peer PublicIP> dev eth0`.
    public func addHostGWRoute(on node: LabNode, peer: Peer) throws {
        try sh(node.name, ["route", "replace", "\(peer.subnet)", "via", "\(peer.publicIP)", "dev", node.underlayIfname])
    }

    /// The MAC of `ifname` in `ns`, read with `ip -o link show`.
    public func linkMAC(_ ns: String, _ ifname: String) throws -> MACAddress {
        let out = try sh(ns, ["-o", "link", "show", "dev", ifname])
        let words = out.split(whereSeparator: { $0 == " " || $0 == "\\" || $0 == "\n" })
        guard let i = words.firstIndex(of: "link/ether"), i + 1 < words.count, let mac = MACAddress(words[i + 1]) else {
            throw LabError(command: ["ip", "-o", "link", "show", ifname], message: "no link/ether in: \(out)")
        }
        return mac
    }

    /// The ifindex of `ifname` in `ns`.
    public func linkIndex(_ ns: String, _ ifname: String) throws -> Int32 {
        let out = try sh(ns, ["-o", "link", "show", "dev", ifname])
        guard let colon = out.firstIndex(of: ":"), let idx = Int32(out[..<colon]) else {
            throw LabError(command: ["ip", "-o", "link", "show", ifname], message: "cannot parse: \(out)")
        }
        return idx
    }

    // MARK: - Traffic

    /// Pings `to` (an IPv4 or IPv6 address) from namespace `from`; returns packets sent and received
    /// (never throws on loss).
    public func ping(from ns: String, to: some CustomStringConvertible, count: Int = 3, interval: Double = 0.2, timeoutPerReply: Int = 1) throws -> (sent: Int, received: Int) {
        guard access(LabTools.ping, X_OK) == 0 else {
            throw LabError(command: [LabTools.ping], message: "ping is not installed: apt-get install iputils-ping (listed in the Makefile's DEB_PACKAGES)")
        }
        let r = try run(ns, [LabTools.ping, "-n", "-q", "-c", "\(count)", "-i", "\(interval)", "-W", "\(timeoutPerReply)", "\(to)"])
        // "3 packets transmitted, 3 received, 0% packet loss, time 402ms"
        for line in r.stdout.split(separator: "\n") where line.contains("packets transmitted") {
            let nums = line.split(separator: ",").compactMap { part in
                part.split(separator: " ").first.flatMap { Int($0) }
            }
            if nums.count >= 2 { return (nums[0], nums[1]) }
        }
        throw LabError(command: [LabTools.ping, "\(to)"], status: r.status, stderr: r.stderr, message: "cannot parse ping output: \(r.stdout)")
    }

    /// Pings until one reply comes back or `timeout` seconds pass; true if a reply came.
    public func waitForPing(from ns: String, to: some CustomStringConvertible, timeout: Double = 5) throws -> Bool {
        let deadline = monotonicSeconds() + timeout
        repeat {
            if try ping(from: ns, to: to, count: 1, interval: 0.2).received == 1 { return true }
        } while monotonicSeconds() < deadline
        return false
    }

    /// A TCP stream with iperf3 from `clientNS` to a server started in `serverNS` listening on
    /// `serverIP` (IPv4 or IPv6); returns the receiver's bits per second.
    public func tcpThroughput(from clientNS: String, to serverNS: String, serverIP: some CustomStringConvertible,
                              seconds: Int = 2, port: UInt16 = 5201) throws -> Double {
        let server = try spawn(serverNS, [LabTools.iperf3, "-s", "-1", "-B", "\(serverIP)", "-p", "\(port)"])
        defer { server.terminate(grace: 1) }
        // The server needs a moment to listen; iperf3 -J reports "Connection refused" inside its JSON
        // (and may still exit 0), so success is judged by the JSON holding a receiver summary.
        var last = LabCommandResult(status: -1, stdout: "", stderr: "")
        for _ in 0..<50 {
            last = try run(clientNS, [LabTools.iperf3, "-c", "\(serverIP)", "-p", "\(port)", "-t", "\(seconds)", "-J"])
            if let bps = Self.jsonNumber(after: "\"sum_received\"", key: "\"bits_per_second\"", in: last.stdout) { return bps }
            guard last.stdout.contains("Connection refused") || last.stderr.contains("Connection refused") else { break }
            usleep(100_000)
        }
        throw LabError(command: [LabTools.iperf3, "-c", "\(serverIP)", "-p", "\(port)"], status: last.status, stderr: last.stderr,
                       message: "no receiver summary in iperf3 output: \(last.stdout.suffix(1500))")
    }

    static func jsonNumber(after section: String, key: String, in text: String) -> Double? {
        guard let s = text.firstRange(of: section), let k = text[s.upperBound...].firstRange(of: key) else { return nil }
        let rest = text[k.upperBound...].drop { $0 == ":" || $0 == " " || $0 == "\t" }
        let numberChars: Set<Character> = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ".", "e", "E", "+", "-"]
        let num: Substring = rest.prefix { numberChars.contains($0) }
        return Double(String(num))
    }

    // MARK: - Cleanup

    /// Kills the processes the lab started and deletes its namespaces. Safe to call twice.
    public func cleanup() {
        let (processes, namespaces, files) = state.withLock { s -> ([LabProcess], [String], [String]) in
            if s.cleaned { return ([], [], []) }
            s.cleaned = true
            return (s.processes, s.namespaces, s.tempFiles)
        }
        for p in processes { p.terminate(grace: 1) }
        for ns in namespaces.reversed() { _ = try? CommandRunner.run([LabTools.ip, "netns", "del", ns]) }
        for f in files { unlink(f) }
    }

    /// Deletes what lab users leave behind when their test process dies without cleaning up (a
    /// crash, a kill): namespaces named "fx<tag>-<pid>-<n>-…" and work folders "/run/fx<tag>-<pid>-<n>"
    /// (unmounting what is mounted under them first, e.g. a lab bpffs). Only names whose pid no
    /// longer exists are touched. Runs once per process, from the first `init`; returns what it removed.
    @discardableResult
    public static func removeStaleNamespaces() -> [String] {
        var removed: [String] = []
        if let list = try? CommandRunner.run([LabTools.ip, "netns", "list"]), list.status == 0 {
            for line in list.stdout.split(separator: "\n") {
                guard let name = line.split(separator: " ").first.map(String.init), isStaleLabName(name, minParts: 4) else { continue }
                _ = try? CommandRunner.run([LabTools.ip, "netns", "del", name])
                removed.append(name)
            }
        }
        // Work folders under /run named exactly like a lab prefix.
        if let names = Directory.entryNames(at: "/run") {
            let folders = names.filter { isStaleLabName($0, minParts: 3) && $0.split(separator: "-").count == 3 }
            if !folders.isEmpty {
                let mounts = CommandRunner.readFile("/proc/self/mounts").split(separator: "\n").compactMap { line in
                    line.split(separator: " ").dropFirst().first.map(String.init)
                }
                for folder in folders {
                    let path = "/run/\(folder)"
                    // Deepest first, so a mount inside another comes off before its parent.
                    for m in mounts.filter({ $0 == path || $0.hasPrefix(path + "/") }).sorted(by: { $0.count > $1.count }) {
                        _ = umount2(m, Int32(MNT_DETACH))
                    }
                    _ = try? CommandRunner.run(["/bin/rm", "-rf", "--one-file-system", path])
                    removed.append(path)
                }
            }
        }
        return removed
    }

    /// "fx<alnum>-<pid>-<n>[-…]" whose pid no longer exists.
    private static func isStaleLabName(_ name: String, minParts: Int) -> Bool {
        let parts = name.split(separator: "-")
        guard parts.count >= minParts, parts[0].hasPrefix("fx"), parts[0].count > 2,
              parts[0].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }),
              let pid = Int32(parts[1]), pid > 1, Int(parts[2]) != nil else { return false }
        // kill(pid, 0): ESRCH means no such process. Anything else (alive, EPERM) keeps it.
        return Glibc.kill(pid, 0) != 0 && errno == ESRCH
    }

    // MARK: - GRO

    /// ETHTOOL_SGRO through SIOCETHTOOL on a thread inside `namespace` (no ethtool CLI needed).
    public func setGRO(namespace: String, ifname: String, on: Bool) throws {
        _ = try ethtoolValue(namespace: namespace, ifname: ifname, command: 0x2c /* ETHTOOL_SGRO */, data: on ? 1 : 0)
    }

    /// Whether GRO is on for `ifname` in `namespace` (ETHTOOL_GGRO).
    public func groEnabled(namespace: String, ifname: String) throws -> Bool {
        try ethtoolValue(namespace: namespace, ifname: ifname, command: 0x2b /* ETHTOOL_GGRO */, data: 0) != 0
    }

    /// One `struct ethtool_value { __u32 cmd; __u32 data; }` ioctl; returns `data` as the kernel left it.
    private func ethtoolValue(namespace: String, ifname: String, command: UInt32, data: UInt32) throws -> UInt32 {
        final class Out: @unchecked Sendable { var data: UInt32 = 0 } // written on the thread, read after join
        let out = Out()
        try runInLabNamespace(namespace) {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { return "socket: errno \(errno)" }
            defer { close(fd) }
            var value: (UInt32, UInt32) = (command, data)
            var ifr = ifreq()
            withUnsafeMutableBytes(of: &ifr.ifr_ifrn.ifrn_name) { dst in
                for (i, b) in ifname.utf8.prefix(15).enumerated() { dst[i] = b }
            }
            let rc = withUnsafeMutablePointer(to: &value) { vp -> Int32 in
                ifr.ifr_ifru.ifru_data = UnsafeMutableRawPointer(vp).assumingMemoryBound(to: CChar.self)
                return ioctl(fd, 0x8946 /* SIOCETHTOOL */, &ifr)
            }
            guard rc == 0 else {
                return "SIOCETHTOOL cmd \(command) on \(ifname): \(String(cString: strerror(errno))) (errno \(errno))"
            }
            out.data = value.1
            return nil
        }
        return out.data
    }
}

/// Runs `body` on a fresh pthread that entered the named namespace; `body` returns an error text or nil.
private func runInLabNamespace(_ namespace: String, _ body: @escaping @Sendable () -> String?) throws {
    let fd = open("/run/netns/\(namespace)", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw LabError(command: [], message: "open /run/netns/\(namespace): errno \(errno)") }
    defer { close(fd) }
    final class Box: @unchecked Sendable {
        // @unchecked: written by the thread before it exits, read after pthread_join.
        let fd: Int32
        let body: @Sendable () -> String?
        var failure: String?
        init(fd: Int32, body: @escaping @Sendable () -> String?) { self.fd = fd; self.body = body }
    }
    let box = Box(fd: fd, body: body)
    var thread = pthread_t()
    let unmanaged = Unmanaged.passRetained(box)
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        let r = shim_setns_net(box.fd)
        if r != 0 { box.failure = "setns: errno \(-r)" } else { box.failure = box.body() }
        return nil
    }, unmanaged.toOpaque())
    guard rc == 0 else {
        unmanaged.release()
        throw LabError(command: [], message: "pthread_create: \(rc)")
    }
    pthread_join(thread, nil)
    if let f = box.failure { throw LabError(command: [], message: "in netns \(namespace): \(f)") }
}
