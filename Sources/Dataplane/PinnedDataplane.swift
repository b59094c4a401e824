// Read-only view of the BPF data path as the kernel holds it: the maps pinned under
// <bpffs>/flanneld-xdp and the programs attached in our slots. Opened by pin path, never by loading
// the object, so the inspection verbs work while the daemon runs, after it stopped (the pins and
// attachments outlive it) and from a process that never loaded anything — and they change nothing
// (but `pruneDepartedPeerStats`, the daemon's housekeeping). The values it returns are this module's
// own (`BPFCounter`, `BPFNodeSettings`) or NetTypes' (`PacketCount`): the verbs and the metrics need no kernel module.

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import RuntimeSupport
import Synchronization

/// One of the programs' counters as the operations side names and classifies it (BPFDataplane's
/// FXDPCounter, whose codes and names it carries unchanged).
public struct BPFCounter: Hashable, Sendable, CustomStringConvertible {
    /// What the program did with the packets it counts here.
    public enum Verdict: String, Sendable {
        /// Handled by BPF (encapsulated, accepted, steered).
        case ok
        /// Handed to the kernel unchanged (the kernel path carries it).
        case pass
        case drop
    }

    /// The stable code (enum fxdp_counter): dashboards key on it.
    public let code: UInt32
    /// "encap_ok", "decap_drop_not_peer".
    public let name: String
    public let verdict: Verdict
    /// Packets BPF encapsulated.
    public let isEncapsulated: Bool
    /// Valid VXLAN from a peer that a decap program accepted.
    public let isDecapAccepted: Bool

    public var isDrop: Bool { verdict == .drop }
    public var description: String { name }

    init(_ counter: FXDPCounter) {
        code = counter.rawValue
        name = counter.name
        verdict = counter.isDrop ? .drop : counter.name.contains("_pass_") ? .pass : .ok
        isEncapsulated = counter.isEncapsulated
        isDecapAccepted = counter.isDecapAccepted
    }

    /// Every counter this build knows, in code order.
    public static let all: [BPFCounter] = FXDPCounter.allCases.map(BPFCounter.init)

    /// The counter with `name`, nil when this build has none of that name.
    public static func named(_ name: String) -> BPFCounter? { all.first { $0.name == name } }
}


/// The node's settings as the programs read them (fxdp_config), for `status`.
public struct BPFNodeSettings: Sendable, Equatable, CustomStringConvertible {
    public var nodeIP: IPv4Address
    public var vtepMAC: MACAddress
    public var vni: UInt32
    public var udpPort: UInt16
    public var underlayIfindex: Int32
    public var overlayIfindex: Int32
    public var overlayMTU: UInt16
    /// False: every program passes every packet to the kernel.
    public var enabled: Bool
    /// Every setting in one line (NodeConfig's).
    public var description: String

    init(_ config: NodeConfig) {
        nodeIP = config.nodeIP
        vtepMAC = config.vtepMAC
        vni = config.vni
        udpPort = config.udpPort
        underlayIfindex = config.underlayIfindex
        overlayIfindex = config.overlayIfindex
        overlayMTU = config.overlayMTU
        enabled = config.enabled
        description = config.description
    }
}

/// What BPF carried to and from one peer node (fxdp_peer_stats_v2, summed over CPUs).
public struct PeerTraffic: Sendable, Equatable {
    public var txPackets: UInt64 = 0
    public var txBytes: UInt64 = 0
    public var rxPackets: UInt64 = 0
    public var rxBytes: UInt64 = 0

    public static let zero = PeerTraffic()

    /// What was carried since `before`, an earlier reading of the same node's entry; the whole of
    /// this reading when a counter went backwards (the map was recreated, or the entry pruned and
    /// made again).
    public func since(_ before: PeerTraffic) -> PeerTraffic {
        let reset = txPackets < before.txPackets || rxPackets < before.rxPackets
            || txBytes < before.txBytes || rxBytes < before.rxBytes
        let base = reset ? .zero : before
        return PeerTraffic(txPackets: txPackets - base.txPackets, txBytes: txBytes - base.txBytes,
                           rxPackets: rxPackets - base.rxPackets, rxBytes: rxBytes - base.rxBytes)
    }
}

extension PeerTraffic {
    /// One node's per-CPU values summed (in an extension: the memberwise initializer stays).
    init(summing perCPU: [fxdp_peer_stats]) {
        self.init()
        for v in perCPU {
            txPackets &+= v.tx_packets
            txBytes &+= v.tx_bytes
            rxPackets &+= v.rx_packets
            rxBytes &+= v.rx_bytes
        }
    }
}

/// One peer as the BPF maps hold it (fxdp_peers; fxdp_peers6 for `PinnedIPv6Peer`).
public typealias PinnedPeer = PinnedFamilyPeer<IPv4Subnet>
public typealias PinnedIPv6Peer = PinnedFamilyPeer<IPv6Subnet>

public struct PinnedFamilyPeer<Subnet: IPSubnetType>: Sendable, Equatable {
    public var subnet: Subnet
    public var nodeIP: Subnet.Address
    public var vtepMAC: MACAddress
    public var direct: Bool
    /// Whether fxdp_nodes accepts VXLAN from nodeIP (the decap source check).
    public var decapAccepted: Bool
    /// Per node (several subnets of one node share it); nil when the pins predate the per-peer map.
    public var traffic: PeerTraffic?

    public init(subnet: Subnet, nodeIP: Subnet.Address, vtepMAC: MACAddress, direct: Bool, decapAccepted: Bool,
                traffic: PeerTraffic? = nil) {
        self.subnet = subnet
        self.nodeIP = nodeIP
        self.vtepMAC = vtepMAC
        self.direct = direct
        self.decapAccepted = decapAccepted
        self.traffic = traffic
    }
}

/// One pinned map, identified as bpftool shows it.
public struct PinnedMapSummary: Sendable, Equatable {
    public var name: String
    public var id: UInt32
    public var path: String
    /// Entries present (hash/LPM), or nil for arrays where every slot exists.
    public var entries: Int?
    public var maxEntries: UInt32
}

/// One program in our slots.
public struct AttachedProgram: Sendable, Equatable {
    public var name: String
    public var id: UInt32
    /// "tc egress", "tc ingress", "xdp native", "xdp generic".
    public var hook: String
    public var interface: String
}

/// An address whose VXLAN the programs dropped as not from a peer (fxdp_strangers_v2).
public struct Stranger: Sendable, Equatable {
    public var address: IPv4Address
    public var packets: UInt64
    /// Seconds since the last one was dropped.
    public var secondsAgo: Int64

    /// The line `status` and /readyz show when strangers sit on the underlay subnet, where peers
    /// are: most likely a node whose VXLAN leaves from another address than its lease's PublicIP.
    /// nil when none of `strangers` is on `underlay` within the last `window` seconds.
    public static func underlayWarning(_ strangers: [Stranger], underlay: IPv4Subnet?, window: Int64 = 600) -> String? {
        guard let underlay else { return nil }
        let near = onUnderlay(strangers, underlay: underlay, window: window).sorted { $0.packets > $1.packets }
        guard !near.isEmpty else { return nil }
        let listed = near.prefix(5).map { "\($0.address) (\($0.packets) datagram(s), last \($0.secondsAgo) s ago)" }
            .joined(separator: ", ") + (near.count > 5 ? " and \(near.count - 5) more" : "")
        return "VXLAN from \(listed) on the underlay subnet \(underlay) is dropped as not from a peer node: "
            + "a node whose traffic leaves from another address than its lease's PublicIP (docs/SECURITY.md, "
            + "\"Nodes that send from another address\"), or a host that is no peer"
    }

    /// The strangers on `underlay` seen within the last `window` seconds.
    public static func onUnderlay(_ strangers: [Stranger], underlay: IPv4Subnet, window: Int64 = 600) -> [Stranger] {
        strangers.filter { underlay.contains($0.address) && $0.secondsAgo <= window }
    }
}

public struct PinnedDataplane: Sendable {
    public let folder: String
    let peers: BPFMap<fxdp_peer_key, fxdp_peer_value>
    let nodes: BPFMap<fxdp_node_key, fxdp_node_value>
    let config: BPFMap<UInt32, fxdp_config>
    let counters: PerCPUMap<UInt32, fxdp_count>
    /// Absent in pins made by a version before per-peer counters.
    let peerStats: PerCPUMap<fxdp_node_key, fxdp_peer_stats>?
    let strangers: BPFMap<fxdp_node_key, fxdp_stranger>
    /// The IPv6 half's maps; absent in pins made by a version before IPv6.
    let peers6: BPFMap<fxdp_peer6_key, fxdp_peer6_value>?
    let nodes6: BPFMap<fxdp_node6_key, fxdp_node_value>?
    let peerStats6: PerCPUMap<fxdp_node6_key, fxdp_peer_stats>?

    /// What the verbs say when there are no pins under `bpffs`.
    public static func noPins(_ bpffs: String) -> OperationsError {
        OperationsError(operation: "open \(folder(bpffs: bpffs))", detail: "no pinned maps",
                        hint: "this node does not run the BPF data path (see `flanneld-xdp status`), or give the daemon's --bpffs")
    }

    /// The pin folder under `bpffs`.
    public static func folder(bpffs: String) -> String { bpffs + "/" + FlannelBPF.pinFolderName }

    /// The daemon's view: opened once per process and bpffs, on first use (the maps behind the pins
    /// are the ones the daemon's programs use for as long as it runs). Nil while there are no pins.
    public static func shared(bpffs: String) -> PinnedDataplane? {
        if let opened = sharedViews.withLock({ $0[bpffs] }) { return opened }
        guard let opened = try? open(bpffs: bpffs) else { return nil }
        sharedViews.withLock { $0[bpffs] = opened }
        return opened
    }

    private static let sharedViews = Mutex<[String: PinnedDataplane]>([:])

    /// Opens the pins under `<bpffs>/flanneld-xdp`; nil when that folder does not exist (the node
    /// does not run the BPF path, or `cleanup` removed it).
    public static func open(bpffs: String) throws(OperationsError) -> PinnedDataplane? {
        let folder = folder(bpffs: bpffs)
        var st = stat()
        guard stat(folder, &st) == 0 else {
            if errno == ENOENT { return nil }
            throw OperationsError(operation: "stat \(folder)", detail: "cannot see the pin folder", errno: errno,
                                  hint: "run as root")
        }
        func path(_ name: String) -> String { folder + "/" + name }
        do {
            return PinnedDataplane(
                folder: folder,
                peers: try BPFMap.openPinned(path: path(FXDP_MAP_PEERS), key: fxdp_peer_key.self, value: fxdp_peer_value.self),
                nodes: try BPFMap.openPinned(path: path(FXDP_MAP_NODES), key: fxdp_node_key.self, value: fxdp_node_value.self),
                config: try BPFMap.openPinned(path: path(FXDP_MAP_CONFIG), key: UInt32.self, value: fxdp_config.self),
                counters: try PerCPUMap.openPinned(path: path(FXDP_MAP_COUNTERS), key: UInt32.self, value: fxdp_count.self),
                peerStats: access(path(FXDP_MAP_PEER_STATS), F_OK) == 0
                    ? try PerCPUMap.openPinned(path: path(FXDP_MAP_PEER_STATS), key: fxdp_node_key.self, value: fxdp_peer_stats.self)
                    : nil,
                strangers: try BPFMap.openPinned(path: path(FXDP_MAP_STRANGERS), key: fxdp_node_key.self, value: fxdp_stranger.self),
                peers6: access(path(FXDP_MAP_PEERS6), F_OK) == 0
                    ? try BPFMap.openPinned(path: path(FXDP_MAP_PEERS6), key: fxdp_peer6_key.self, value: fxdp_peer6_value.self) : nil,
                nodes6: access(path(FXDP_MAP_NODES6), F_OK) == 0
                    ? try BPFMap.openPinned(path: path(FXDP_MAP_NODES6), key: fxdp_node6_key.self, value: fxdp_node_value.self) : nil,
                peerStats6: access(path(FXDP_MAP_PEER_STATS6), F_OK) == 0
                    ? try PerCPUMap.openPinned(path: path(FXDP_MAP_PEER_STATS6), key: fxdp_node6_key.self, value: fxdp_peer_stats.self)
                    : nil)
        } catch {
            throw OperationsError(operation: "open the pinned maps in \(folder)", detail: "\(error)",
                                  hint: "run as root; a folder from another flanneld-xdp version holds other map names (FXDP_ABI_VERSION): `flanneld-xdp cleanup` removes it")
        }
    }

    /// The node's settings in fxdp_config, nil while never written.
    public func nodeConfig() throws(OperationsError) -> BPFNodeSettings? {
        do {
            return try NodeConfig.read(from: config).map(BPFNodeSettings.init)
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_CONFIG)", detail: "\(error)", hint: "run as root")
        }
    }

    public func peerList() throws(OperationsError) -> [PinnedPeer] {
        do {
            let accepted = Set(try nodes.keys().map { IPv4Address(tuple: $0.node_ip) })
            let traffic = try peerTraffic()
            return try peers.entries().map { key, value in
                let nodeIP = IPv4Address(tuple: value.node_ip)
                return PinnedPeer(
                    subnet: IPv4Subnet(containing: IPv4Address(tuple: key.subnet), prefixLength: Int(key.prefixlen)),
                    nodeIP: nodeIP, vtepMAC: MACAddress(tuple: value.vtep_mac),
                    direct: value.flags & UInt16(FXDP_PEER_F_DIRECT) != 0, decapAccepted: accepted.contains(nodeIP),
                    traffic: traffic.map { $0[nodeIP] ?? PeerTraffic() })
            }.sorted { $0.subnet < $1.subnet }
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_PEERS)", detail: "\(error)", hint: "run as root")
        }
    }

    /// The IPv6 peers in fxdp_peers6 (empty when the pins have no IPv6 maps), with their traffic from
    /// fxdp_peer_stats6.
    public func ipv6PeerList() throws(OperationsError) -> [PinnedIPv6Peer] {
        guard let peers6, let nodes6 else { return [] }
        do {
            let accepted = Set(try nodes6.keys().map { BPFIPv6PeerTable.address(of: $0) })
            var traffic: [IPv6Address: PeerTraffic]?
            if let peerStats6 {
                var sums: [IPv6Address: PeerTraffic] = [:]
                for key in try peerStats6.keys() {
                    guard let perCPU = try peerStats6.lookupIfPresent(key) else { continue }
                    sums[BPFIPv6PeerTable.address(of: key)] = PeerTraffic(summing: perCPU)
                }
                traffic = sums
            }
            return try BPFIPv6PeerTable.entries(peers6).map { peer in
                PinnedIPv6Peer(subnet: peer.subnet, nodeIP: peer.publicIP, vtepMAC: peer.vtepMAC, direct: peer.direct,
                               decapAccepted: accepted.contains(peer.publicIP), traffic: traffic.map { $0[peer.publicIP] ?? PeerTraffic() })
            }.sorted { $0.subnet < $1.subnet }
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_PEERS6)", detail: "\(error)", hint: "run as root")
        }
    }

    /// The addresses dropped as not from a peer, most recent first.
    public func strangerList() throws(OperationsError) -> [Stranger] {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nowNanoseconds = UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
        do {
            return try strangers.entries().map { key, value in
                let age = nowNanoseconds >= value.last_seen_ns ? (nowNanoseconds - value.last_seen_ns) / 1_000_000_000 : 0
                return Stranger(address: IPv4Address(tuple: key.node_ip), packets: value.packets, secondsAgo: Int64(age))
            }.sorted { $0.secondsAgo < $1.secondsAgo }
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_STRANGERS)", detail: "\(error)", hint: "run as root")
        }
    }

    /// Per peer node, summed over CPUs; nil when the pins have no per-peer map.
    public func peerTraffic() throws(OperationsError) -> [IPv4Address: PeerTraffic]? {
        guard let peerStats else { return nil }
        do {
            var result: [IPv4Address: PeerTraffic] = [:]
            for key in try peerStats.keys() {
                // An entry deleted between keys() and lookup (a prune) is simply skipped.
                guard let perCPU = try peerStats.lookupIfPresent(key) else { continue }
                result[IPv4Address(tuple: key.node_ip)] = PeerTraffic(summing: perCPU)
            }
            return result
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_PEER_STATS)", detail: "\(error)", hint: "run as root")
        }
    }

    /// The daemon's periodic housekeeping, on a thread of its own (map dumps of every peer must not
    /// hold a thread of the shared pool): prunes departed nodes' traffic entries, then reads the
    /// strangers (empty when unreadable).
    public func housekeeping() async -> [Stranger] {
        await Self.mapThread.run {
            _ = try? pruneDepartedPeerStats()
            return (try? strangerList()) ?? []
        }
    }

    /// Map calls only (no netlink, nothing that depends on the calling thread's network namespace):
    /// one thread serves the whole process.
    private static let mapThread = DedicatedThreadExecutor(name: "fxdp-maps")

    /// Deletes per-peer entries of nodes that are no longer peers (not in fxdp_nodes); returns how
    /// many. The programs only ever add entries, so the daemon prunes them.
    @discardableResult
    public func pruneDepartedPeerStats() throws(OperationsError) -> Int {
        guard let peerStats else { return 0 }
        do {
            let present = Set(try nodes.keys().map { IPv4Address(tuple: $0.node_ip) })
            var removed = 0
            for key in try peerStats.keys() where !present.contains(IPv4Address(tuple: key.node_ip)) {
                if try peerStats.delete(key) { removed += 1 }
            }
            return removed
        } catch {
            throw OperationsError(operation: "prune \(FXDP_MAP_PEER_STATS)", detail: "\(error)", hint: "run as root")
        }
    }

    /// Every named counter summed over CPUs, in code order.
    public func counterValues() throws(OperationsError) -> [(BPFCounter, PacketCount)] {
        do {
            return try BPFCounter.all.map { counter in
                var total = PacketCount()
                for v in try counters.lookup(counter.code) {
                    total.packets &+= v.packets
                    total.bytes &+= v.bytes
                }
                return (counter, total)
            }
        } catch {
            throw OperationsError(operation: "read \(FXDP_MAP_COUNTERS)", detail: "\(error)", hint: "run as root")
        }
    }

    public func mapSummaries() -> [PinnedMapSummary] {
        // The kernel keeps 15 characters of a name (fxdp_counters_v): show the pin's full name.
        func summary(_ name: String, _ info: BPFMapInfo, entries: Int?) -> PinnedMapSummary {
            PinnedMapSummary(name: name, id: info.id, path: folder + "/" + name, entries: entries, maxEntries: info.maxEntries)
        }
        return [
            summary(FXDP_MAP_PEERS, peers.info(), entries: try? peers.keys().count),
            summary(FXDP_MAP_NODES, nodes.info(), entries: try? nodes.keys().count),
            summary(FXDP_MAP_CONFIG, config.info(), entries: nil),
            summary(FXDP_MAP_COUNTERS, counters.info(), entries: nil),
        ] + (peerStats.map { [summary(FXDP_MAP_PEER_STATS, $0.info(), entries: try? $0.keys().count)] } ?? [])
            + [summary(FXDP_MAP_STRANGERS, strangers.info(), entries: try? strangers.keys().count)]
    }

    /// Our programs in the slots of the interfaces fxdp_config names (in this process's network namespace).
    public func attachedPrograms(config node: BPFNodeSettings?) -> [AttachedProgram] {
        guard let node, node.underlayIfindex > 0 else { return [] }
        guard let state = try? FlannelBPF.attachmentState(overlayIfindex: node.overlayIfindex,
                                                          underlayIfindex: node.underlayIfindex, pinDirectory: folder) else { return [] }
        var result: [AttachedProgram] = []
        func add(_ id: UInt32?, hook: String, ifindex: Int32) {
            guard let id else { return }
            // The kernel keeps 15 characters of a program name; ours are known in full.
            let kernelName = (try? BPFProgramInfo.forID(id).name) ?? "?"
            let name = FXDPProgram.allCases.first { $0.rawValue.hasPrefix(kernelName) }?.rawValue ?? kernelName
            result.append(AttachedProgram(name: name, id: id, hook: hook, interface: Interfaces.describe(ifindex)))
        }
        add(state.encapProgramID, hook: "tcx egress", ifindex: node.overlayIfindex)
        add(state.decapCheckProgramID, hook: "tcx ingress", ifindex: node.underlayIfindex)
        add(state.xdpProgramID, hook: "xdp \(state.xdpMode.map { "\($0)" } ?? "")", ifindex: node.underlayIfindex)
        // The fast path's encap sits on every pod's veth: one line for all of them.
        if let pods = try? FlannelBPF.fastEncapInterfaces(pinDirectory: folder), !pods.isEmpty,
           let id = (try? TCX.attached(ifindex: pods[0].index, direction: .ingress))?
               .first(where: { (try? BPFProgramInfo.forID($0.programID).name).map { FXDPProgram.fastEncap.rawValue.hasPrefix($0) } == true })?.programID {
            let names = pods.prefix(4).map(\.name).joined(separator: ", ") + (pods.count > 4 ? ", …" : "")
            result.append(AttachedProgram(name: FXDPProgram.fastEncap.rawValue, id: id, hook: "tcx ingress",
                                          interface: "\(pods.count) pod interface(s): \(names)"))
        }
        for (id, hook) in [(state.doorProgramID, NetfilterHook.localIn), (state.podGuardProgramID, .forward)] {
            guard let id else { continue }
            let kernelName = (try? BPFProgramInfo.forID(id).name) ?? "?"
            let name = FXDPProgram.allCases.first { $0.rawValue.hasPrefix(kernelName) }?.rawValue ?? kernelName
            result.append(AttachedProgram(name: name, id: id, hook: "netfilter ipv4 \(hook)", interface: "every interface"))
        }
        return result
    }
}
