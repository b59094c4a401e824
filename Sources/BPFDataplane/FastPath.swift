// FastPath — keeps the fast path's kernel side in step with the node: which interfaces carry its
// encap program (each pod's veth by default, or each pod bridge), which pods it may deliver to, and
// whether conntrack lets TCP skip the stack.
//
// Design: the node's pod bridges are the bridges holding an address in the node's lease subnet
// (cni0 as flannel's CNI plugin creates it, docker0 started with subnet.env's --bip); bridges come
// and go with the CNI plugin, so every pass reads them again. fxdp_local holds exactly the learned
// fdb entries of those bridges' veth ports whose peer lives in another namespace (the pods): a
// pod's MAC → its port, its bridge. A pass is a reconcile: desired state from netlink, the
// difference written to the map and the attachments, the result reported. Entries may lag a pass
// behind the kernel without harm: the programs find a pod's MAC through the kernel's neighbour
// table and refuse a port that is not on the bridge the route leaves by, and bpf_redirect_peer to
// a port that was deleted drops what the kernel path would have had nowhere to deliver either.

import BPFLoader
import CBPF
import Glibc
import Logging
import NetTypes
import Netlink

/// A pod as the fast path knows it. Only read from the kernel's bridge tables (here, with the
/// memberwise init), never made up by a caller.
public struct FastPathPod: Hashable, Sendable, CustomStringConvertible {
    public var mac: MACAddress
    /// The host side of the pod's veth.
    public var portIndex: Int32
    public var bridgeIndex: Int32
    public var bridgeMAC: MACAddress

    var cValue: fxdp_local_value {
        fxdp_local_value(port_ifindex: UInt32(bitPattern: portIndex), bridge_ifindex: UInt32(bitPattern: bridgeIndex),
                         bridge_mac: bridgeMAC.tuple, _pad: (0, 0))
    }

    public var description: String { "\(mac) port #\(portIndex) bridge #\(bridgeIndex) \(bridgeMAC)" }
}

/// Where the fast path's encap takes a pod's packet.
public enum FastPathHook: String, Sendable, CaseIterable {
    /// TC ingress of each pod bridge: what the bridge passes up to be routed. One attachment per
    /// bridge; the packet has been through the bridge (and br_netfilter's PREROUTING) first.
    case bridges
    /// TC ingress of each pod's veth (the host side): before the bridge. One attachment per pod.
    case podPorts
}

/// What one pass found and changed.
public struct FastPathPass: Sendable, Equatable {
    /// The pod bridges (name by index).
    public var bridges: [Int32: String] = [:]
    /// The interfaces (name by index) the encap program is attached to after the pass.
    public var hooked: [Int32: String] = [:]
    /// Interfaces it could not be attached to, with the error (a pod port with an `ingress` qdisc
    /// of another tool, say): their pods' packets take the kernel path on the way out.
    public var failed: [String: String] = [:]
    public var pods = 0
    public var podsAdded = 0
    public var podsRemoved = 0
    public var attached: [String] = []
    public var detached: [String] = []

    public var changed: Bool { podsAdded + podsRemoved + attached.count + detached.count > 0 }
}

public final class FastPathSync: @unchecked Sendable {
    // @unchecked: used by one service task at a time; FlannelBPF is itself @unchecked Sendable.
    public let bpf: FlannelBPF
    public let podSubnet: IPv4Subnet
    public let hook: FastPathHook
    let logger: Logger
    private var hooked: [Int32: String] = [:]
    /// Program ids found to be our fast encap on a hook (this load's or the same code of an earlier run's).
    private var verifiedEncaps: Set<UInt32> = []
    /// Program ids known to be ours or not (names fxdp_*), looked up once each.
    private var ownership: [UInt32: Bool] = [:]

    public init(bpf: FlannelBPF, podSubnet: IPv4Subnet, hook: FastPathHook = .podPorts, logger: Logger) {
        self.bpf = bpf
        self.podSubnet = podSubnet
        self.hook = hook
        self.logger = logger
    }

    /// What else acts on a pod's veth (traffic control on the host side).
    public struct PortTrafficControl: Sendable, Equatable {
        /// An `ingress` qdisc (the CNI bandwidth plugin's shaping of what the pod sends uses one).
        public var ingressQdisc = false
        /// Filters of others on the clsact hooks (ours is the one at our handle and priority).
        public var foreignIngressFilters = false
        public var foreignEgressFilters = false

        public init(ingressQdisc: Bool = false, foreignIngressFilters: Bool = false, foreignEgressFilters: Bool = false) {
            self.ingressQdisc = ingressQdisc
            self.foreignIngressFilters = foreignIngressFilters
            self.foreignEgressFilters = foreignEgressFilters
        }

        var leavesThePodAlone: Bool { !ingressQdisc && !foreignIngressFilters && !foreignEgressFilters }
    }

    /// What netlink reports, read as the fast path needs it. Pure, for tests.
    public struct Desired: Sendable, Equatable {
        public var bridges: [Int32: String] = [:]
        /// The pods' ports (veths whose peer is in another namespace, on a pod bridge).
        public var ports: [Int32: String] = [:]
        public var pods: [MACAddress: FastPathPod] = [:]
    }

    /// The pod bridges, their pod ports and the pods of a namespace. `trafficControl`: per port
    /// index, what other tools do there (absent: nothing).
    public static func desired(links: [LinkInfo], addresses: [AddressInfo], fdb: [FDBEntry], podSubnet: IPv4Subnet,
                               trafficControl: [Int32: PortTrafficControl] = [:]) -> Desired {
        let bridgeIndexes = Set(addresses.filter { podSubnet.contains($0.address) }.map(\.index))
        var bridges: [Int32: String] = [:]
        var bridgeMACs: [Int32: MACAddress] = [:]
        for link in links where link.kind == "bridge" && bridgeIndexes.contains(link.index) && link.isUp {
            bridges[link.index] = link.name
            bridgeMACs[link.index] = link.mac
        }
        var ports: [Int32: Int32] = [:] // port → bridge
        var portNames: [Int32: String] = [:]
        for link in links where link.kind == "veth" && link.linkNetnsID != nil && link.isUp {
            // A pod whose veth another tool acts on is left to the kernel path, both ways: a root
            // qdisc of its own (the CNI bandwidth plugin shapes what the pod receives there) or
            // filters on its egress would be skipped by bpf_redirect_peer, an ingress qdisc or
            // filters on its ingress by our encap there.
            if let master = link.masterIndex, bridges[master] != nil, link.rootQdisc == nil || link.rootQdisc == "noqueue",
               trafficControl[link.index]?.leavesThePodAlone ?? true {
                ports[link.index] = master
                portNames[link.index] = link.name
            }
        }
        var pods: [MACAddress: FastPathPod] = [:]
        for entry in fdb where !entry.state.contains(.permanent) && !entry.flags.contains(.device) && !entry.mac.isMulticast {
            guard let bridge = ports[entry.index], entry.masterIndex == nil || entry.masterIndex == bridge else { continue }
            // A MAC learned on two ports (a move in progress): neither, until the bridge settles.
            if pods[entry.mac] != nil && pods[entry.mac]?.portIndex != entry.index {
                pods[entry.mac]?.portIndex = -1
                continue
            }
            guard let bridgeMAC = bridgeMACs[bridge] else { continue }
            pods[entry.mac] = FastPathPod(mac: entry.mac, portIndex: entry.index, bridgeIndex: bridge, bridgeMAC: bridgeMAC)
        }
        return Desired(bridges: bridges, ports: portNames, pods: pods.filter { $0.value.portIndex > 0 })
    }

    /// One pass in the calling thread's network namespace: attaches fxdp_fast_encap where `hook`
    /// says (and detaches it from interfaces that no longer qualify), and makes fxdp_local hold
    /// exactly the pods. Throws on the first netlink or BPF failure; the next pass starts over.
    public func syncOnce() throws -> FastPathPass {
        var nl = try NetlinkSocket()
        let links = try nl.links()
        let addresses = try nl.addresses()
        // Every pod veth on a pod bridge, whatever else acts on it.
        let bridgeIndexes = Set(FastPathSync.desired(links: links, addresses: addresses, fdb: [], podSubnet: podSubnet).bridges.keys)
        var candidates: [Int32: String] = [:]
        for link in links where link.kind == "veth" && link.linkNetnsID != nil {
            if let master = link.masterIndex, bridgeIndexes.contains(master) { candidates[link.index] = link.name }
        }
        var trafficControl: [Int32: PortTrafficControl] = [:]
        // Ports this pass could not decide about (a program whose owner could not be looked up, an
        // attach that failed) keep what they have, hook and pin alike: a pass that failed on one
        // pod must not detach an encap that works there (the next pass tries again).
        var undecided: Set<Int32> = []
        var pass = FastPathPass()
        let ingressQdiscs = Set(try nl.qdiscs().filter { $0.kind == "ingress" }.map(\.index))
        for (index, name) in candidates {
            // Others': any cls_bpf (or other) filter, any tcx program but ours (this load's or an
            // earlier run's: a restart leaves the previous load's attached when it is the same code).
            func othersTCX(_ direction: TCDirection) throws -> Bool {
                try TCX.attached(ifindex: index, direction: direction).contains { try !isOurs($0.programID) }
            }
            do {
                trafficControl[index] = PortTrafficControl(
                    ingressQdisc: ingressQdiscs.contains(index),
                    foreignIngressFilters: try !nl.filters(index: index, hook: .ingress).isEmpty || othersTCX(.ingress),
                    foreignEgressFilters: try !nl.filters(index: index, hook: .egress).isEmpty || othersTCX(.egress))
            } catch {
                undecided.insert(index)
                pass.failed[name] = "\(error)"
            }
        }
        let wanted = FastPathSync.desired(links: links, addresses: addresses, fdb: try nl.fdbEntries(), podSubnet: podSubnet,
                                          trafficControl: trafficControl)
        let wantedPods = wanted.pods
        let wantedHooks = (hook == .bridges ? wanted.bridges : wanted.ports).filter { !undecided.contains($0.key) }
        var nowHooked: [Int32: String] = [:]
        // One query per interface when nothing changed: a program known to be ours (the same code
        // over the same maps) already runs there.
        for (index, name) in wantedHooks.sorted(by: { $0.key < $1.key }) {
            do {
                let before = try TCX.attached(ifindex: index, direction: .ingress).map(\.programID)
                if !before.contains(where: verifiedEncaps.contains) {
                    if try hookPort(index) { pass.attached.append(name) }
                    for id in try TCX.attached(ifindex: index, direction: .ingress).map(\.programID) where try isOurs(id) {
                        verifiedEncaps.insert(id)
                    }
                }
                nowHooked[index] = name
            } catch {
                undecided.insert(index)
                pass.failed[name] = "\(error)"
            }
        }
        for index in undecided { if let name = hooked[index] { nowHooked[index] = name } }
        for (index, name) in hooked where wantedHooks[index] == nil && !undecided.contains(index) {
            if links.contains(where: { $0.index == index }) { try unhookPort(index) }
            pass.detached.append(name)
        }
        // A pod's veth that no longer qualifies (another tool acts on it now), hooked by an earlier run.
        for (index, name) in candidates where wantedHooks[index] == nil && hooked[index] == nil && !undecided.contains(index) {
            if try TCX.attached(ifindex: index, direction: .ingress).contains(where: { try isOurs($0.programID) }) {
                try unhookPort(index)
                pass.detached.append(name)
            }
        }
        // Pins of links whose veth is gone (the pod was deleted): the link died with it.
        for name in try FlannelBPF.pinNames(in: bpf.pinDirectory) where name.hasPrefix(FXDPSlots.podPinPrefix) {
            guard let index = Int32(name.dropFirst(FXDPSlots.podPinPrefix.count)), nowHooked[index] == nil,
                  !undecided.contains(index) else { continue }
            let path = bpf.pinDirectory + "/" + name
            try? BPFLink.openPinned(path: path).detach()
            unlink(path)
        }
        hooked = nowHooked
        pass.hooked = nowHooked
        pass.bridges = wanted.bridges

        var current: [MACAddress: fxdp_local_value] = [:]
        for (key, value) in try bpf.local.entries() { current[MACAddress(tuple: key.mac)] = value }
        for (mac, pod) in wantedPods {
            let value = pod.cValue
            if let old = current[mac], old.port_ifindex == value.port_ifindex, old.bridge_ifindex == value.bridge_ifindex,
               MACAddress(tuple: old.bridge_mac) == pod.bridgeMAC { continue }
            try bpf.local.update(FastPathSync.key(mac), value)
            pass.podsAdded += 1
        }
        for mac in current.keys where wantedPods[mac] == nil {
            if try bpf.local.delete(FastPathSync.key(mac)) { pass.podsRemoved += 1 }
        }
        pass.pods = wantedPods.count
        return pass
    }

    /// Everything of the fast path's gone from the calling thread's namespace: the encap program
    /// from every interface, fxdp_local emptied. For `--fast-path=false` after a run with it.
    public static func removeAll(bpf: FlannelBPF) throws {
        try bpf.detachFastEncapEverywhere()
        for key in try bpf.local.keys() { _ = try bpf.local.delete(key) }
    }

    /// Whether program `id` is one of ours (cached: a program's name never changes). Throws when
    /// it cannot be looked up: "not ours" would make our own encap look like another tool's.
    private func isOurs(_ id: UInt32) throws -> Bool {
        if let known = ownership[id] { return known }
        let ours = try FlannelBPF.programInfo(id, pinDirectory: bpf.pinDirectory).name.hasPrefix(FlannelBPF.programPrefix)
        if ownership.count > 4096 { ownership.removeAll() }
        ownership[id] = ours
        return ours
    }

    /// Our encap on a pod veth (`FastPathHook.podPorts`) or a bridge (`.bridges`).
    private func hookPort(_ index: Int32) throws -> Bool { try bpf.attachFastEncap(portIfindex: index) }
    private func unhookPort(_ index: Int32) throws { try bpf.detachFastEncap(portIfindex: index) }

    static func key(_ mac: MACAddress) -> fxdp_local_key {
        fxdp_local_key(mac: mac.tuple, _pad: (0, 0))
    }
}

/// net.netfilter.nf_conntrack_tcp_be_liberal of the calling thread's network namespace: with it, a
/// TCP packet whose sequence numbers conntrack did not follow (because its flow's earlier packets
/// took the fast path) is not marked INVALID when it takes the kernel path (docs/BPF-DATAPATH.md).
public enum ConntrackTCPLiberal {
    public static let path = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"

    /// The setting, or nil when the namespace has no conntrack (no sysctl).
    public static func current(path: String = path) -> Bool? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 16)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return buffer[0] != UInt8(ascii: "0")
    }

    /// Sets it to 1.
    public static func enable(path: String = path) throws(DataplaneError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw DataplaneError(operation: "open(\(path))", errno: errno, detail: "cannot set conntrack's liberal TCP window tracking",
                                 hint: errno == ENOENT ? "no conntrack in this network namespace yet" : "run as root (CAP_NET_ADMIN)")
        }
        defer { close(fd) }
        guard write(fd, "1\n", 2) == 2 else {
            throw DataplaneError(operation: "write(\(path))", errno: errno, detail: "cannot set conntrack's liberal TCP window tracking",
                                 hint: "run as root (CAP_NET_ADMIN)")
        }
    }
}
