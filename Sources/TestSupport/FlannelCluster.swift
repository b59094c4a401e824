// A whole flannel cluster in network namespaces, for the end-to-end tests and `make demo`:
// a NetnsLab (wire bridge, nodes, pods), a real etcd listening on the wire (so node namespaces
// reach it the way real nodes reach their etcd), one bpffs for the lab mounted under /run (visible
// inside `ip netns exec`, where /sys/fs/bpf is not), and flanneld-xdp processes started in the
// node namespaces with flanneld's own flags.
//
// Pods exist before their node's daemon runs, so each node's subnet is chosen up front and handed
// to the daemon the way flanneld learns its previous subnet: FLANNEL_SUBNET in the subnet.env it
// finds at start (docs/FLANNEL-COMPAT.md, "Choosing a subnet", step 2).
//
// Everything (daemons, etcd, namespaces, the bpffs mount, temp files) is removed by `cleanup()`,
// which deinit also runs; daemons are stopped by pid.

import BPFLoader
import CBPF
import Glibc
import NetTypes

/// Which etcd API generation the cluster's config and leases live in.
public enum ClusterEtcdAPI: Int, Sendable, CustomStringConvertible {
    case v2 = 2
    case v3 = 3
    public var description: String { "v\(rawValue)" }
}

public final class FlannelCluster: @unchecked Sendable {
    // @unchecked: mutable state is touched only by the test that owns the cluster, serially.
    public let lab: NetnsLab
    public let api: ClusterEtcdAPI
    public let network: IPv4Subnet
    public let prefix: String
    /// TLS with client certificates on etcd (the install guide's setup), nil for plain http.
    public let tls: TLSTestCerts?
    /// The etcd client URL, on the wire bridge.
    public let etcdEndpoint: String
    public let etcdIP: IPv4Address
    /// The lab's bpffs mount; node N pins under `<bpffsRoot>/<node name>/flanneld-xdp`.
    public let bpffsRoot: String
    /// Per-lab folder for subnet.env files, logs and the etcd data dir.
    public let workDir: String
    public let daemonPath: String
    public private(set) var nodes: [LabNode] = []
    public private(set) var daemons: [String: LabProcess] = [:]
    private var etcd: LabProcess?
    private var cleaned = false

    /// The etcd address every node's certificate check accepts (the server certificate's SAN).
    public static let etcdAddress = IPv4Subnet(cidr: "192.168.77.0/24")!.host(254)

    /// `daemonPath`: the flanneld-xdp binary (absolute). `backend`: the network config's Backend JSON;
    /// `config`: the whole config instead (written with etcdctl, as the install guide does), nil for
    /// `{"Network":<network>,"Backend":<backend>}`. `tls`: certificates made with
    /// `TLSTestCerts.generate(serverIPs: [FlannelCluster.etcdAddress.description])`.
    public init(tag: String, api: ClusterEtcdAPI, daemonPath: String, nodes count: Int,
                network: IPv4Subnet = IPv4Subnet(cidr: "10.5.0.0/16")!,
                backend: String = #"{"Type":"vxlan"}"#, config: String? = nil,
                prefix: String = "/coreos.com/network", tls: TLSTestCerts? = nil) throws {
        lab = try NetnsLab(tag: tag)
        self.api = api
        self.network = network
        self.prefix = prefix
        self.tls = tls
        self.daemonPath = daemonPath
        let underlay = Self.underlay
        etcdIP = Self.etcdAddress
        etcdEndpoint = "\(tls == nil ? "http" : "https")://\(etcdIP):2379"
        workDir = "/run/\(lab.prefix)"
        bpffsRoot = workDir + "/bpf"
        do {
            try lab.sh(nil, ["/bin/mkdir", "-p", bpffsRoot])
            try lab.sh(nil, ["/bin/mount", "-t", "bpf", "bpf", bpffsRoot])
            try lab.sh(lab.wireNamespace, ["addr", "add", "\(etcdIP)/\(underlay.prefixLength)", "dev", "br0"])
            try startEtcd()
            try putConfig(config ?? #"{"Network":"\#(network)","Backend":\#(backend)}"#)
            for i in 1...count { _ = try addNode(i) }
        } catch {
            cleanup()
            throw error
        }
    }

    deinit { cleanup() }

    // MARK: - Nodes and daemons

    /// The underlay network of the wire bridge, and the one behind the router (`addRoutedSegment`).
    public static let underlay = IPv4Subnet(cidr: "192.168.77.0/24")!
    public static let routedUnderlay = IPv4Subnet(cidr: "192.168.78.0/24")!
    /// The router's namespace once `addRoutedSegment` made it.
    public private(set) var router: String?

    /// A router between the wire (192.168.77.0/24) and a second underlay network (192.168.78.0/24,
    /// bridge br1) whose path MTU is `pathMTU`; the nodes already on the wire route it through the
    /// router. Nodes added afterwards with `addNode(_:behindRouter: true)` live on the far side.
    public func addRoutedSegment(pathMTU: Int) throws {
        router = try lab.addRoutedSegment(first: Self.underlay, second: Self.routedUnderlay, pathMTU: pathMTU)
        for node in nodes {
            try lab.sh(node.name, ["route", "add", "\(Self.routedUnderlay)", "via", "\(Self.underlay.host(253))"])
        }
        try lab.sh(lab.wireNamespace, ["route", "add", "\(Self.routedUnderlay)", "via", "\(Self.underlay.host(253))"])
    }

    /// Adds node `index` (and its pod) with the subnet 10.5.<index>.0/24 of the network: on the
    /// wire, or (`behindRouter`) on the far side of the router `addRoutedSegment` made.
    @discardableResult
    public func addNode(_ index: Int, behindRouter: Bool = false) throws -> LabNode {
        let subnet = IPv4Subnet(address: IPv4Address(network.address.value | UInt32(index) << 8), prefixLength: 24)!
        let underlay = behindRouter ? Self.routedUnderlay : Self.underlay
        let routes = behindRouter ? [(Self.underlay, Self.routedUnderlay.host(253))] : []
        let node = try lab.addNode(index: index, nodeIP: underlay.host(UInt32(index)), underlay: underlay, podSubnet: subnet,
                                   bridge: behindRouter ? "br1" : "br0", routes: routes)
        try lab.sh(nil, ["/bin/mkdir", "-p", nodeDir(node)])
        // The previous subnet.env a daemon finds: how the node learns which subnet its pods use.
        try writeFile(subnetFile(node), "FLANNEL_NETWORK=\(network)\nFLANNEL_SUBNET=\(subnet.host(1))/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        nodes.append(node)
        return node
    }

    public func nodeDir(_ node: LabNode) -> String { "\(workDir)/\(node.name)" }
    public func subnetFile(_ node: LabNode) -> String { nodeDir(node) + "/subnet.env" }
    public func logFile(_ node: LabNode) -> String { nodeDir(node) + "/flanneld-xdp.log" }
    /// The node's --last-known-state (its "disk": kept across simulated reboots of the node).
    public func lastKnownStateFile(_ node: LabNode) -> String { nodeDir(node) + "/last-known.json" }
    public func bpffs(_ node: LabNode) -> String { "\(bpffsRoot)/\(node.name)" }
    public func pinFolder(_ node: LabNode) -> String { bpffs(node) + "/flanneld-xdp" }
    public let healthPort = 9471

    /// The flags a node's daemon runs with (flanneld's, plus ours).
    public func daemonArguments(_ node: LabNode, extra: [String] = []) -> [String] {
        [daemonPath, "--iface", node.underlayIfname, "--etcd-endpoints", etcdEndpoint,
         "--etcd-api", api.description, "--subnet-file", subnetFile(node), "--bpffs", bpffs(node),
         "--last-known-state", lastKnownStateFile(node), "--healthz-port", "\(healthPort)", "--healthz-ip", "127.0.0.1"] + extra
    }

    /// Starts flanneld-xdp in `node` and waits until /readyz answers 200 (or throws with its log).
    @discardableResult
    public func startDaemon(_ node: LabNode, extra: [String] = [], env: [String: String] = [:],
                            timeout: Double = 20) throws -> LabProcess {
        try startDaemon(node, command: daemonArguments(node, extra: extra), env: env, timeout: timeout)
    }

    /// Starts `command` (the daemon with arguments of the caller's choosing, e.g. a unit's ExecStart)
    /// in `node` and waits for /readyz on `healthPort`: the command or `env` must ask for it.
    @discardableResult
    public func startDaemon(_ node: LabNode, command: [String], env: [String: String] = [:],
                            timeout: Double = 20) throws -> LabProcess {
        let p = try lab.spawn(node.name, command, env: env, stdout: logFile(node))
        daemons[node.name] = p
        try waitReady(node, process: p, timeout: timeout)
        return p
    }

    public func waitReady(_ node: LabNode, process: LabProcess? = nil, timeout: Double = 20) throws {
        let deadline = monotonicSeconds() + timeout
        while monotonicSeconds() < deadline {
            if let p = process ?? daemons[node.name], !p.isRunning {
                throw LabError(command: p.command, status: p.status ?? -1,
                               message: "flanneld-xdp exited during start-up; log:\n\(daemonLog(node).suffix(3000))")
            }
            if (try? httpStatus(node, path: "/readyz")) == 200 { return }
            usleep(50_000)
        }
        throw LabError(command: [], message: "flanneld-xdp in \(node.name) not ready after \(timeout) s; log:\n\(daemonLog(node).suffix(3000))")
    }

    /// The HTTP status of GET `path` on the node's health server (bash /dev/tcp: no curl needed).
    public func httpStatus(_ node: LabNode, path: String) throws -> Int? {
        try httpGet(node, path: path)?.status
    }

    /// GET `path` on the node's health server (or another of its servers at `port`, e.g. the
    /// metrics): the status and the body; nil when nothing answers.
    public func httpGet(_ node: LabNode, path: String, port: Int? = nil) throws -> (status: Int, body: String)? {
        let script = "exec 3<>/dev/tcp/127.0.0.1/\(port ?? healthPort) && printf 'GET \(path) HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        let r = try lab.run(node.name, ["/bin/bash", "-c", script])
        guard r.status == 0 else { return nil }
        let parts = r.stdout.split(separator: "\n", maxSplits: 1).first?.split(separator: " ") ?? []
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        // The body follows the first empty line (CRLF CRLF).
        let chars = Array(r.stdout.utf8)
        var body = ""
        if chars.count >= 4 {
            for i in 0...(chars.count - 4) where chars[i] == 13 && chars[i + 1] == 10 && chars[i + 2] == 13 && chars[i + 3] == 10 {
                body = String(decoding: chars[(i + 4)...], as: UTF8.self)
                break
            }
        }
        return (status, body)
    }

    /// Starts flanneld-xdp in `node` without waiting for readiness (for start-ups that are meant not
    /// to become ready, such as a degraded boot).
    @discardableResult
    public func spawnDaemon(_ node: LabNode, extra: [String] = []) throws -> LabProcess {
        let p = try lab.spawn(node.name, daemonArguments(node, extra: extra), stdout: logFile(node))
        daemons[node.name] = p
        return p
    }

    /// SIGTERM (graceful: data path and lease stay) and wait for exit.
    public func stopDaemon(_ node: LabNode) {
        guard let p = daemons.removeValue(forKey: node.name) else { return }
        p.terminate(grace: 5)
    }

    /// SIGKILL, as a crash would.
    public func killDaemon(_ node: LabNode) {
        guard let p = daemons.removeValue(forKey: node.name) else { return }
        p.kill(SIGKILL)
        _ = p.waitExit(timeout: 5)
    }

    public func daemonLog(_ node: LabNode) -> String { readFile(logFile(node)) }

    /// Runs `flanneld-xdp <args>` in the node's namespace (e.g. `cleanup`, `peers --json`).
    public func runTool(_ node: LabNode, _ args: [String]) throws -> LabCommandResult {
        try lab.run(node.name, [daemonPath] + args)
    }

    // MARK: - Pinned maps (read from this process: maps are not per-namespace)

    /// The subnets in a node's pinned peers map, sorted.
    public func pinnedPeerSubnets(_ node: LabNode) throws -> [IPv4Subnet] {
        let map = try BPFMap.openPinned(path: pinFolder(node) + "/" + FXDP_MAP_PEERS,
                                        key: fxdp_peer_key.self, value: fxdp_peer_value.self)
        return try map.keys().map {
            IPv4Subnet(containing: IPv4Address(tuple: $0.subnet), prefixLength: Int($0.prefixlen))
        }.sorted()
    }

    /// Whether a `flanneld-xdp monitor` on `node` has switched the programs' drop sampling on (the
    /// deadline its heartbeat writes lies ahead).
    public func monitorListens(_ node: LabNode) throws -> Bool {
        let control = try BPFMap.openPinned(path: pinFolder(node) + "/" + FXDP_MAP_MONITOR, key: UInt32.self, value: fxdp_monitor.self)
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return (try control.lookup(0)?.listen_until_ns ?? 0) > UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    /// Packets counted under `counter` in a node's pinned counters map, summed over CPUs.
    public func pinnedCounter(_ node: LabNode, _ counter: fxdp_counter) throws -> UInt64 {
        let map = try PerCPUMap.openPinned(path: pinFolder(node) + "/" + FXDP_MAP_COUNTERS,
                                           key: UInt32.self, value: fxdp_count.self)
        return try map.lookup(counter.rawValue).reduce(0) { $0 + $1.packets }
    }

    // MARK: - etcd

    private func startEtcd() throws {
        let dataDir = workDir + "/etcd"
        let peerURL = "http://127.0.0.1:2380"
        let args = ["/usr/bin/etcd", "--name", "fx", "--data-dir", dataDir,
                    "--listen-client-urls", etcdEndpoint, "--advertise-client-urls", etcdEndpoint,
                    "--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
                    "--initial-cluster", "fx=\(peerURL)", "--initial-cluster-state", "new",
                    "--enable-v2=true", "--logger", "zap", "--log-level", "warn"]
            + (tls.map { ["--cert-file", $0.serverCert, "--key-file", $0.serverKey, "--trusted-ca-file", $0.caCert,
                          "--client-cert-auth"] } ?? [])
        etcd = try lab.spawn(lab.wireNamespace, args, stdout: workDir + "/etcd.log")
        let deadline = monotonicSeconds() + 30
        while monotonicSeconds() < deadline {
            if let e = etcd, !e.isRunning {
                throw LabError(command: args, message: "etcd exited: \(readFile(workDir + "/etcd.log").suffix(2000))")
            }
            if (try? etcdctl(3, ["endpoint", "health", "--command-timeout=1s"]))?.status == 0 { return }
            usleep(100_000)
        }
        throw LabError(command: args, message: "etcd not healthy after 30 s: \(readFile(workDir + "/etcd.log").suffix(2000))")
    }

    /// The etcd process the cluster started (fault tests stop it with SIGSTOP/SIGCONT or SIGKILL).
    public var etcdProcess: LabProcess? { etcd }

    /// SIGKILLs etcd (clients then get refused connections) and reaps it.
    public func killEtcd() {
        etcd?.kill(SIGKILL)
        _ = etcd?.waitExit(timeout: 5)
    }

    /// Starts etcd again on the same data dir and address; returns when it is healthy.
    public func restartEtcd() throws {
        if let e = etcd, e.isRunning { return }
        try startEtcd()
    }

    /// `etcdctl` in the wire namespace against the cluster's etcd, in API mode `mode` (2 or 3).
    public func etcdctl(_ mode: Int, _ args: [String]) throws -> LabCommandResult {
        var certificates: [String] = []
        if let tls {
            certificates = mode == 2 ? ["--ca-file", tls.caCert, "--cert-file", tls.clientCert, "--key-file", tls.clientKey]
                : ["--cacert=\(tls.caCert)", "--cert=\(tls.clientCert)", "--key=\(tls.clientKey)"]
        }
        return try lab.run(lab.wireNamespace, ["/usr/bin/env", "ETCDCTL_API=\(mode)", "/usr/bin/etcdctl",
                                               "--endpoints=\(etcdEndpoint)"] + certificates + args)
    }

    func etcdctlChecked(_ mode: Int, _ args: [String]) throws -> String {
        let r = try etcdctl(mode, args)
        guard r.status == 0 else { throw LabError(command: ["etcdctl"] + args, status: r.status, stderr: r.stderr + r.stdout) }
        return r.stdout
    }

    /// Writes the network config in the cluster's API generation.
    public func putConfig(_ json: String) throws {
        try put(prefix + "/config", json, ttl: nil)
    }

    /// Writes `value` at `key` (v2: `set --ttl`; v3: `lease grant` + `put --lease`).
    public func put(_ key: String, _ value: String, ttl: Int?) throws {
        switch api {
        case .v2:
            _ = try etcdctlChecked(2, ["set", key, value] + (ttl.map { ["--ttl", "\($0)"] } ?? []))
        case .v3:
            var leaseArgs: [String] = []
            if let ttl {
                let out = try etcdctlChecked(3, ["lease", "grant", "\(ttl)"])
                // "lease 694d7c6f1e2a4b05 granted with TTL(86400s)"
                guard let id = out.split(separator: " ").dropFirst().first else {
                    throw LabError(command: ["etcdctl", "lease", "grant"], message: "unexpected output: \(out)")
                }
                leaseArgs = ["--lease=\(id)"]
            }
            _ = try etcdctlChecked(3, ["put", key, value] + leaseArgs)
        }
    }

    public func delete(_ key: String) throws {
        _ = try etcdctlChecked(api.rawValue, api == .v2 ? ["rm", key] : ["del", key])
    }

    public func get(_ key: String) throws -> String? {
        let r = try etcdctl(api.rawValue, api == .v2 ? ["get", key] : ["get", "--print-value-only", key])
        guard r.status == 0 else { return nil }
        let v = String(r.stdout.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
        return v.isEmpty ? nil : v
    }

    /// iptables' FORWARD policy DROP on every node, as Docker leaves it: pod traffic between nodes
    /// then passes only through the accepts the daemon adds.
    public func dropForwardedTrafficByDefault() throws {
        for node in nodes { try lab.sh(node.name, ["/usr/sbin/iptables", "-w", "5", "-P", "FORWARD", "DROP"]) }
    }

    public func leaseKey(_ subnet: IPv4Subnet) -> String { "\(prefix)/subnets/\(subnet.leaseKey)" }

    /// A lease exactly as stock flannel's vxlan backend writes it.
    public func putFlannelLease(subnet: IPv4Subnet, publicIP: IPv4Address, vtepMAC: MACAddress, vni: Int = 1,
                                ttl: Int = 86400) throws {
        let value = #"{"PublicIP":"\#(publicIP)","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":\#(vni),"VtepMAC":"\#(vtepMAC)"}}"#
        try put(leaseKey(subnet), value, ttl: ttl)
    }

    /// `node` runs stock flanneld: flannel.1 as flanneld configures it (a CLI stand-in) and its
    /// lease, as flannel's vxlan backend writes it.
    @discardableResult
    public func runStockFlannel(on node: LabNode) throws -> FlannelStandIn {
        let standIn = try lab.makeFlannelStandIn(node: node, subnet: node.podSubnet)
        try putFlannelLease(subnet: node.podSubnet, publicIP: node.nodeIP, vtepMAC: standIn.vtepMAC)
        return standIn
    }

    /// Lease keys present in etcd (subnets).
    public func leasedSubnets() throws -> [IPv4Subnet] {
        let out: String
        switch api {
        case .v2: out = (try? etcdctlChecked(2, ["ls", prefix + "/subnets"])) ?? ""
        case .v3: out = try etcdctlChecked(3, ["get", "--prefix", "--keys-only", prefix + "/subnets/"])
        }
        return out.split(separator: "\n").compactMap { line in
            line.split(separator: "/").last.flatMap { IPv4Subnet(leaseKey: $0) }
        }.sorted()
    }

    // MARK: - Cleanup

    public func cleanup() {
        if cleaned { return }
        cleaned = true
        for (_, p) in daemons { p.terminate(grace: 2) }
        daemons = [:]
        etcd?.terminate(grace: 2)
        lab.cleanup()
        _ = try? CommandRunner.run(["/bin/umount", bpffsRoot])
        _ = try? CommandRunner.run(["/bin/rm", "-rf", workDir])
    }
}
