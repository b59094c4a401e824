// Every door a stranger can knock on, tried as an attacker would. The kernel's vxlan socket listens
// on the VXLAN port at every local address of every interface, so "VXLAN to the node IP arriving on
// the underlay" is one door of many. Node A runs in one mode per test case (XDP decap, TC-checked
// kernel decap, the userspace path, or a stock flannel node: the kernel vxlan device alone); node B
// is a flanneld-xdp peer with --ip-masq. Each door sends UDP datagrams to port 8472 carrying VXLAN
// with an inner ICMP echo to A's pod that holds a marker of that door; a capture on the pod's eth0
// counts the echo requests of each marker that reach it.
//
// Nothing is judged after a pause: each hostile door is sent, then the test waits for the one
// counter that must account for its datagrams (a BPF drop reason, the userspace path's drop
// reason, or the kernel's UDP NoPorts/IgnoredMulti where no socket takes them), and only after all
// doors were accounted for does it read the capture, which must hold none of them. A real peer's
// well-formed VXLAN then must reach the pod (the capture would have seen a leak). On the stock
// node, the same doors are recorded as leaks (waiting for each to arrive): the gain stays visible.

import BPFDataplane
import CBPF
import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("VXLANDoorTests: no VXLAN from a stranger reaches a pod, whatever the door", .serialized,
       .needsRoot, .ownThreads)
struct VXLANDoorTests {
    enum NodeKind: String, CaseIterable, CustomStringConvertible, Sendable {
        /// The BPF modes, the userspace path, vxlan with DirectRouting (B is a direct peer of A:
        /// plain routes between them, and A still accepts B's VXLAN), a stock flannel node.
        case xdp, tc, userspace, directRouting, stockFlannel
        var description: String { rawValue }
    }

    /// Where a door's datagrams end up on a node of ours, by mode.
    enum Accounting: CustomStringConvertible {
        /// A BPF counter of node A (or of node B, `onPeer`).
        case bpf(fxdp_counter, onPeer: Bool = false)
        /// A drop reason of A's userspace path (its /metrics).
        case userspace(String)
        /// The kernel's UDP statistics of A: no socket took it.
        case udp(String)

        var description: String {
            switch self {
            case .bpf(let c, let peer): "\(FXDPCounter(rawValue: c.rawValue)?.name ?? "\(c.rawValue)")\(peer ? " on the peer" : "")"
            case .userspace(let reason): "userspace \(reason)"
            case .udp(let field): "kernel Udp \(field)"
            }
        }
    }

    struct Door {
        var name: String
        var from: String
        var to: IPv4Address
        var broadcast = false
        var innerSource: IPv4Address
        var vni: UInt32 = 1
        /// How a BPF node accounts for it, and how the userspace path does.
        var bpf: Accounting
        var userspace: Accounting
        /// Whether a stock flannel node lets it reach the pod.
        var stockLeaks: Bool
        var marker: [UInt8] = []
    }

    static let perDoor = 5
    static let metricsPort = 9472

    @Test(arguments: NodeKind.allCases)
    func everyDoorIsClosed(_ kind: NodeKind) throws {
        let backend = kind == .directRouting ? #"{"Type":"vxlan","DirectRouting":true}"# : #"{"Type":"vxlan"}"#
        let cluster = try FlannelCluster(tag: "door", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2, backend: backend)
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let lab = cluster.lab

        // Node A in the mode under test; node B an ordinary flanneld-xdp node that masquerades.
        switch kind {
        case .xdp, .tc, .userspace:
            try cluster.startDaemon(a, extra: ["--dataplane", kind == .tc ? "tc" : kind.rawValue,
                                               "--metrics-port", "\(VXLANDoorTests.metricsPort)"])
        case .directRouting:
            try cluster.startDaemon(a)
        case .stockFlannel:
            let standIn = try lab.makeFlannelStandIn(node: a)
            try cluster.putFlannelLease(subnet: a.podSubnet, publicIP: a.nodeIP, vtepMAC: standIn.vtepMAC)
        }
        try cluster.startDaemon(b, extra: ["--ip-masq"])
        #expect(try waitUntil(10) { try cluster.pinnedPeerSubnets(b) == [a.podSubnet] } != nil, "B never learned A")
        let leasedMAC = try leaseVtepMAC(cluster, a.podSubnet)
        let vtepA = try #require(leasedMAC, "no VtepMAC in A's lease")

        // A host on the wire without a lease, with a route to the pod network through A.
        let stranger = lab.name("st")
        try lab.addNamespace(stranger)
        try lab.sh(lab.wireNamespace, ["link", "add", "vst", "type", "veth", "peer", "name", "eth0", "netns", stranger])
        try lab.sh(lab.wireNamespace, ["link", "set", "vst", "master", "br0", "up"])
        try lab.sh(stranger, ["addr", "add", "192.168.77.50/24", "dev", "eth0"])
        try lab.sh(stranger, ["link", "set", "eth0", "up"])
        try lab.sh(stranger, ["route", "add", "\(cluster.network)", "via", "\(a.nodeIP)"])

        let madeUp = IPv4Address(10, 5, 3, 7) // a pod of no node
        var doors = [
            Door(name: "stranger → A's node IP", from: stranger, to: a.nodeIP, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DECAP_DROP_NOT_PEER), userspace: .userspace("not_peer"), stockLeaks: true),
            Door(name: "stranger → A's cni0 address, routed through A", from: stranger, to: a.podGateway, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DOOR_DROP_NOT_PEER), userspace: .udp("NoPorts"), stockLeaks: true),
            Door(name: "stranger → A's flannel.<VNI> address", from: stranger, to: a.podSubnet.address, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DOOR_DROP_NOT_PEER), userspace: .udp("NoPorts"), stockLeaks: true),
            Door(name: "stranger → the underlay's broadcast address", from: stranger, to: a.underlay.last, broadcast: true,
                 innerSource: madeUp, bpf: .bpf(FXDP_C_DOOR_DROP_NOT_PEER), userspace: .udp("IgnoredMulti"), stockLeaks: true),
            Door(name: "A's own pod → its gateway (cni0)", from: a.podNamespace, to: a.podGateway, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DOOR_DROP_NOT_PEER), userspace: .udp("NoPorts"), stockLeaks: true),
            Door(name: "A's own pod → A's node IP", from: a.podNamespace, to: a.nodeIP, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DOOR_DROP_NOT_PEER), userspace: .userspace("not_peer"), stockLeaks: true),
            Door(name: "a pod on peer B → A's node IP (B masquerades it)", from: b.podNamespace, to: a.nodeIP, innerSource: b.podIP,
                 bpf: .bpf(FXDP_C_GUARD_DROP_POD_VXLAN, onPeer: true), userspace: .bpf(FXDP_C_GUARD_DROP_POD_VXLAN, onPeer: true),
                 stockLeaks: false),
            Door(name: "real peer B, spoofed inner source", from: b.name, to: a.nodeIP, innerSource: madeUp,
                 bpf: .bpf(FXDP_C_DECAP_DROP_INNER_SOURCE), userspace: .userspace("inner_source"), stockLeaks: true),
            Door(name: "real peer B, another VNI", from: b.name, to: a.nodeIP, innerSource: b.podIP, vni: 77,
                 bpf: .bpf(FXDP_C_DECAP_DROP_BAD_VNI), userspace: .userspace("bad_vni"), stockLeaks: false),
        ]
        for i in doors.indices { doors[i].marker = Array("fxdoor-\(i)-\(kind)-marker".utf8) }
        let good = Array("fxdoor-good-\(kind)-marker".utf8)
        let capture = try PacketCapture(namespace: a.podNamespace, ifname: "eth0", markers: doors.map(\.marker) + [good])

        func payload(_ marker: [UInt8], source: IPv4Address, vni: UInt32 = 1) -> [UInt8] {
            PacketBuilder.vxlan(vni: vni)
                + PacketBuilder.ethernet(dst: vtepA, src: MACAddress("02:00:00:00:99:99")!, type: EtherType.ipv4)
                + PacketBuilder.ipv4(src: source, dst: a.podIP, proto: IPProto.icmp,
                                     payload: PacketBuilder.icmpEcho(id: 77, sequence: 1, payload: marker + Array(repeating: 0x42, count: 16)))
        }
        func send(_ door: Door) throws {
            try UDPSender.send(namespace: door.from, to: door.to, port: 8472,
                               payload: payload(door.marker, source: door.innerSource, vni: door.vni),
                               count: VXLANDoorTests.perDoor, broadcast: door.broadcast)
        }
        func read(_ accounting: Accounting) throws -> Int {
            switch accounting {
            case .bpf(let counter, let onPeer): Int(try cluster.pinnedCounter(onPeer ? b : a, counter))
            case .userspace(let reason): try userspaceDrops(cluster, a, reason: reason)
            case .udp(let field): try udpStatistics(namespace: a.name)[field] ?? 0
            }
        }

        var table: [String] = []
        if kind == .stockFlannel {
            // Each door that leaks is waited for at the pod; the others follow a leaking frame from
            // the same sender on the same path, so they would have arrived before it.
            for door in doors {
                if door.stockLeaks {
                    try send(door)
                    let seen = capture.wait(for: door.marker, count: VXLANDoorTests.perDoor)
                    table.append("\(door.name): all \(VXLANDoorTests.perDoor) reached the pod")
                    #expect(seen == VXLANDoorTests.perDoor, "stock flannel was expected to let \(door.name) in")
                } else {
                    let before = door.bpf.description.hasSuffix("on the peer") ? try read(door.bpf) : 0
                    try send(door)
                    if door.bpf.description.hasSuffix("on the peer") {
                        #expect(try waitUntil(10) { try read(door.bpf) >= before + VXLANDoorTests.perDoor } != nil)
                    }
                    try UDPSender.send(namespace: b.name, to: a.nodeIP, port: 8472, payload: payload(good, source: b.podIP),
                                       count: 1)
                    _ = capture.wait(for: good, count: capture.count(good) + 1)
                    table.append("\(door.name): \(capture.count(door.marker)) reached the pod")
                    #expect(capture.count(door.marker) == 0)
                }
            }
        } else {
            // `flanneld-xdp monitor` on A: every drop the BPF programs count there, it shows.
            var monitor: LabProcess?
            if kind != .userspace {
                let started = try lab.spawn(a.name, [TestBinaries.flanneldXDP(), "monitor", "--json", "--rate", "1000",
                                                     "--bpffs", cluster.bpffs(a)])
                monitor = started
                #expect(try waitUntil(10) { try cluster.monitorListens(a) } != nil,
                        "monitor never switched the programs' sampling on: \(started.output())")
            }
            defer { monitor?.terminate() }
            for door in doors {
                let accounting = kind == .userspace ? door.userspace : door.bpf
                let before = try read(accounting)
                try send(door)
                let settled = try waitUntil(10) { try read(accounting) >= before + VXLANDoorTests.perDoor }
                let counted = try read(accounting) - before
                table.append("\(door.name): \(counted) counted as \(accounting)")
                #expect(settled != nil, "\(kind): \(door.name): \(counted) of \(VXLANDoorTests.perDoor) accounted as \(accounting)")
            }
            if let monitor {
                // Doors that share a reason and an outer destination are told apart by count.
                var expected: [String: (reason: String, count: Int)] = [:]
                for door in doors {
                    guard case .bpf(let counter, false) = door.bpf, let reason = FXDPCounter(rawValue: counter.rawValue) else { continue }
                    let key = #""reason":"\#(reason.name)""# + "|" + #""destination":"\#(door.to)""#
                    expected[key, default: (reason.name, 0)].count += VXLANDoorTests.perDoor
                }
                for (key, want) in expected.sorted(by: { $0.key < $1.key }) {
                    let parts = key.split(separator: "|").map(String.init)
                    let shown = waitUntilTrue(10) {
                        monitor.output().split(separator: "\n").filter { $0.contains(parts[0]) && $0.contains(parts[1]) }.count >= want.count
                    }
                    table.append("monitor: \(want.count) × \(parts[0]) \(parts[1]): \(shown ? "shown" : "NOT shown")")
                    #expect(shown, "\(kind): monitor did not show \(want.count) events \(key): \(monitor.output().suffix(3000))")
                }
            }
            // Every hostile datagram is accounted for: none may have reached the pod.
            for door in doors {
                #expect(capture.count(door.marker) == 0, "\(kind): \(door.name) reached the pod")
            }
            // The control: a real peer's VXLAN with its own pod as inner source arrives.
            try UDPSender.send(namespace: b.name, to: a.nodeIP, port: 8472, payload: payload(good, source: b.podIP),
                               count: VXLANDoorTests.perDoor)
            #expect(capture.wait(for: good, count: VXLANDoorTests.perDoor) == VXLANDoorTests.perDoor,
                    "\(kind): the peer's own VXLAN did not reach the pod: the capture could not have seen a leak")
        }
        print("VXLANDoorTests.\(kind):\n  " + table.joined(separator: "\n  "))
    }
}

func waitUntilTrue(_ timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicSeconds() + timeout
    while monotonicSeconds() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

/// The VtepMAC in the lease of `subnet`, as etcd holds it.
func leaseVtepMAC(_ cluster: FlannelCluster, _ subnet: IPv4Subnet) throws -> MACAddress? {
    guard let value = try cluster.get(cluster.leaseKey(subnet)), let range = value.range(of: #""VtepMAC":""#) else { return nil }
    return MACAddress(String(value[range.upperBound...].prefix(17)))
}

/// A drop reason of the userspace path, from the node's /metrics.
func userspaceDrops(_ cluster: FlannelCluster, _ node: LabNode, reason: String) throws -> Int {
    guard let response = try cluster.httpGet(node, path: "/metrics", port: VXLANDoorTests.metricsPort), response.status == 200 else {
        return -1
    }
    let prefix = "flanneld_xdp_userspace_drops_total{reason=\"\(reason)\"} "
    for line in response.body.split(separator: "\n") where line.hasPrefix(prefix) {
        return Int(line.dropFirst(prefix.count)) ?? -1
    }
    return -1
}

/// A node whose VXLAN leaves from another address than its lease's PublicIP (--public-ip naming a
/// second address of a multi-homed host, no NAT in between). Ours publish that source address in
/// the lease (BackendData.SourceIP, ignored by flannel) and are accepted; a stock flannel node in the
/// same situation is not, but never silently: status and /readyz name its address on the underlay.
@Suite("Nodes that send from another address than their PublicIP", .serialized, .needsRoot, .ownThreads)
struct SourceAddressTests {
    @Test(arguments: [false, true])
    func aNodeSendingFromAnotherAddress(stock: Bool) throws {
        let cluster = try FlannelCluster(tag: "src", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let (a, c) = (cluster.nodes[0], cluster.nodes[1])
        let lab = cluster.lab
        // C's lease names a second address of its interface; its VXLAN leaves from the first.
        let published = FlannelCluster.underlay.host(103)
        try lab.sh(c.name, ["addr", "add", "\(published)/24", "dev", c.underlayIfname])
        try cluster.startDaemon(a)
        if stock {
            let standIn = try lab.makeFlannelStandIn(node: c)
            try cluster.putFlannelLease(subnet: c.podSubnet, publicIP: published, vtepMAC: standIn.vtepMAC)
            let vtepA = try #require(try leaseVtepMAC(cluster, a.podSubnet))
            try lab.addFlannelPeerRoutes(on: c, peer: Peer(subnet: a.podSubnet, publicIP: a.nodeIP, vtepMAC: vtepA))
        } else {
            try cluster.startDaemon(c, extra: ["--public-ip", "\(published)"])
            let lease = try cluster.get(cluster.leaseKey(c.podSubnet)) ?? ""
            #expect(lease.contains(#""PublicIP":"\#(published)""#) && lease.contains(#""SourceIP":"\#(c.nodeIP)""#), "\(lease)")
        }
        #expect(try waitUntil(10) { try cluster.pinnedPeerSubnets(a) == [c.podSubnet] } != nil)

        if !stock {
            #expect(try lab.waitForPing(from: a.podNamespace, to: c.podIP, timeout: 10), "A cannot reach C's pod")
            let r = try lab.ping(from: c.podNamespace, to: a.podIP, count: 5, interval: 0.05)
            #expect(r.received == 5, "C → A: \(r)")
            #expect(try cluster.pinnedCounter(a, FXDP_C_DECAP_DROP_NOT_PEER) == 0)
            return
        }
        // A stock C: its VXLAN from 192.168.77.2 is refused by A (not a peer), and said so.
        _ = try lab.ping(from: c.podNamespace, to: a.podIP, count: 3, interval: 0.05)
        #expect(try waitUntil(10) { try cluster.pinnedCounter(a, FXDP_C_DECAP_DROP_NOT_PEER) >= 3 } != nil)
        var readyz = ""
        #expect(try waitUntil(15) {
            readyz = try cluster.httpGet(a, path: "/readyz")?.body ?? ""
            return readyz.contains("warning: VXLAN from \(c.nodeIP)")
        } != nil, "/readyz: \(readyz)")
        #expect(try cluster.httpStatus(a, path: "/readyz") == 200, "a stranger must not make the node unready")
        #expect(readyz.contains("on the underlay subnet \(FlannelCluster.underlay)"))
        let status = try cluster.runTool(a, ["status", "--subnet-file", cluster.subnetFile(a), "--bpffs", cluster.bpffs(a)])
        #expect(status.stdout.contains("VXLAN from \(c.nodeIP)") && status.stdout.contains("PublicIP"), "\(status.stdout)")
        #expect(cluster.daemonLog(a).contains("VXLAN from \(c.nodeIP)"), "the daemon did not log it")
    }
}
