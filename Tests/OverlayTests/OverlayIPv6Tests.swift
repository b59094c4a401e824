import Glibc
import Logging
import NetTypes
import Netlink
import Overlay
import TestSupport
import TestTraits
import Testing

/// flannel-v6.<VNI> and its IPv6 peers, against the CLI reference (`makeFlannelV6StandIn`,
/// `addFlannelV6PeerRoutes`) configured exactly as stock flanneld configures the kernel.
@Suite("Overlay: IPv6 (flannel-v6.<VNI>, IPv6 host-gw and DirectRouting)") struct OverlayIPv6Tests {
    static let network = IPv6Subnet(cidr: "fd00:5::/48")!
    static let network4 = IPv4Subnet(cidr: "10.5.0.0/16")!

    /// What a node shows of flannel-v6, ifindex prefixes and DAD flags removed, entries sorted.
    func kernelState(_ lab: NetnsLab, _ node: LabNode, vni: UInt32 = 1) throws -> [String: String] {
        let dev = "flannel-v6.\(vni)"
        func strip(_ s: String) -> String {
            s.split(separator: "\n").map { line -> String in
                var l = String(line)
                if let colon = l.firstIndex(of: ":"), l[..<colon].allSatisfy(\.isNumber), !l[..<colon].isEmpty {
                    l = String(l[l.index(after: colon)...])
                }
                return l.split(separator: " ", omittingEmptySubsequences: false).filter { $0 != "tentative" }.joined(separator: " ")
            }.joined(separator: "\n")
        }
        func sorted(_ s: String) -> String { s.split(separator: "\n").sorted().joined(separator: "\n") }
        return [
            "link": strip(try lab.sh(node.name, ["-d", "link", "show", dev])),
            "addr": strip(try lab.sh(node.name, ["-6", "addr", "show", "dev", dev])),
            "route": try lab.sh(node.name, ["-6", "route", "show"]),
            "neigh": sorted(try lab.sh(node.name, ["-6", "neigh", "show", "dev", dev])),
            "fdb": sorted(try lab.sh(node.name, [LabTools.bridge, "fdb", "show", "dev", dev])),
        ]
    }

    func peers(_ n: Int) -> [IPv6Peer] {
        (2..<(2 + n)).map { i in
            IPv6Peer(subnet: IPv6Subnet(cidr: "fd00:5:0:\(i)::/64")!, publicIP: IPv6Address("fd77::\(i)")!,
                     vtepMAC: MACAddress(bytes: [0x0e, 0, 0, 0, 6, UInt8(i)]))
        }
    }

    @Test("the Swift-built flannel-v6.1 and its peers are identical to flanneld's CLI-built reference", .needsRoot)
    func identicalToReference() throws {
        let mac = MACAddress("0e:aa:00:00:06:01")!
        let refLab = try NetnsLab(tag: "o6r")
        defer { refLab.cleanup() }
        let swiftLab = try NetnsLab(tag: "o6s")
        defer { swiftLab.cleanup() }
        let ref = try refLab.addIPv6(to: try refLab.makeCluster(nodes: 1)[0])
        let mine = try swiftLab.addIPv6(to: try swiftLab.makeCluster(nodes: 1)[0])

        try refLab.makeFlannelV6StandIn(node: ref, vtepMAC: mac)
        for p in peers(3) { try refLab.addFlannelV6PeerRoutes(on: ref.node, peer: p) }

        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANv6Device.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index, preferredMAC: mac,
                                                  subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev.origin == .created && dev.mac == mac && dev.name == "flannel-v6.1")
        #expect(dev.mtu == 1430, "the kernel's cap for vxlan over IPv6: underlay − 70")
        // flanneld's accept_ra=0 (the reference's is set by makeFlannelV6StandIn).
        try NetnsThread.run(namespace: mine.node.name) { try Overlay.disableRouterAdvertisements(on: "flannel-v6.1") }
        #expect(try swiftLab.sh(mine.node.name, [LabTools.sysctl, "-n", "net/ipv6/conf/flannel-v6.1/accept_ra"]).hasPrefix("0"))
        #expect(try refLab.sh(ref.node.name, [LabTools.sysctl, "-n", "net/ipv6/conf/flannel-v6.1/accept_ra"]).hasPrefix("0"))
        let table = try KernelVXLANv6PeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(mine.node.name)")
        for p in peers(3) { try table.upsert(p) }

        let a = try kernelState(refLab, ref.node), b = try kernelState(swiftLab, mine.node)
        for key in a.keys.sorted() {
            #expect(a[key] == b[key], "\(key) differs:\nreference:\n\(a[key] ?? "")\nswift:\n\(b[key] ?? "")")
        }
        #expect(b["link"]!.contains("vxlan id 1 local fd77::1 dev eth0 srcport 0 0 dstport 8472 nolearning"), "\(b["link"]!)")
        #expect(b["route"]!.contains("fd00:5:0:3::/64 via fd00:5:0:3:: dev flannel-v6.1"))
        #expect(b["fdb"]!.contains("0e:00:00:00:06:03 dst fd77::3 self permanent"))
        #expect(try table.currentPeers() == Set(peers(3)))
        #expect(table.tableName == "kernel-vxlan6")

        // Idempotent; a stale IPv6 address (an older lease) is replaced, link-local ones stay.
        try swiftLab.sh(mine.node.name, ["-6", "addr", "add", "fd00:5:0:99::/128", "dev", "flannel-v6.1", "nodad"])
        let again = try FlannelVXLANv6Device.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                    subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(again.origin == .adopted && again.index == dev.index && again.mac == mac)
        for p in peers(3) { try table.upsert(p) }
        #expect(try kernelState(swiftLab, mine.node) == b)

        try table.remove(peers(3)[1])
        try refLab.removeFlannelV6PeerRoutes(on: ref.node, peer: peers(3)[1])
        let a2 = try kernelState(refLab, ref.node), b2 = try kernelState(swiftLab, mine.node)
        for key in a2.keys.sorted() { #expect(a2[key] == b2[key], "\(key) differs after removal") }
        #expect(try table.currentPeers() == Set([peers(3)[0], peers(3)[2]]))
        try table.remove(peers(3)[1])

        // An IPv4 device of the same VNI is another device: flannel.1 and flannel-v6.1 coexist.
        let v4 = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.node.nodeIP, underlayIndex: eth0.index,
                                               subnet: mine.node.podSubnet, network: Self.network4, netlink: &nl)
        #expect(v4.name == "flannel.1" && v4.index != dev.index && v4.mtu == 1450)
        // A device named flannel-v6.1 but made over IPv4 is incompatible and recreated.
        try swiftLab.sh(mine.node.name, ["link", "del", "flannel-v6.1"])
        try swiftLab.sh(mine.node.name, ["link", "del", "flannel.1"])
        try swiftLab.sh(mine.node.name, ["link", "add", "flannel-v6.1", "type", "vxlan", "id", "1", "local", "\(mine.node.nodeIP)", "dev", "eth0", "dstport", "8472"])
        let replaced = try FlannelVXLANv6Device.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index, netlink: &nl)
        guard case .replaced(let reason) = replaced.origin else { Issue.record("not replaced: \(replaced.origin)"); return }
        #expect(reason.contains("family"))
    }

    @Test("pods ping over IPv6 (and IPv4) between a dual-stack CLI reference node and a Swift-Overlay node", .needsRoot)
    func trafficWithReferenceNode() throws {
        let lab = try NetnsLab(tag: "o6t")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let ref = try lab.addIPv6(to: nodes[0]), mine = try lab.addIPv6(to: nodes[1])
        let standIn4 = try lab.makeFlannelStandIn(node: ref.node)
        let standIn6 = try lab.makeFlannelV6StandIn(node: ref)

        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev4 = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.node.nodeIP, underlayIndex: eth0.index,
                                                 subnet: mine.node.podSubnet, network: Self.network4, netlink: &nl)
        let dev6 = try FlannelVXLANv6Device.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                   subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev4.mac != dev6.mac, "each device has its own VtepMAC")
        let table4 = try KernelVXLANPeerTable(device: dev4, network: Self.network4, networkNamespace: "/run/netns/\(mine.node.name)")
        let table6 = try KernelVXLANv6PeerTable(device: dev6, network: Self.network, networkNamespace: "/run/netns/\(mine.node.name)")
        try table4.upsert(standIn4.asPeer)
        try table6.upsert(standIn6.asPeer)
        try lab.addFlannelPeerRoutes(on: ref.node, peer: Peer(subnet: mine.node.podSubnet, publicIP: mine.node.nodeIP, vtepMAC: dev4.mac))
        try lab.addFlannelV6PeerRoutes(on: ref.node, peer: IPv6Peer(subnet: mine.podSubnet, publicIP: mine.nodeIP, vtepMAC: dev6.mac))

        #expect(try lab.waitForPing6(from: mine.node.podNamespace, to: ref.podIP))
        #expect(try lab.ping6(from: ref.node.podNamespace, to: mine.podIP, count: 3).received == 3)
        #expect(try lab.ping6(from: mine.node.podNamespace, to: ref.podIP, count: 3).received == 3)
        #expect(try lab.ping(from: mine.node.podNamespace, to: ref.node.podIP, count: 3).received == 3)
        // The IPv6 pod traffic went through the vxlan devices over the IPv6 underlay.
        let stats = try lab.sh(mine.node.name, ["-s", "link", "show", "flannel-v6.1"])
        #expect(!stats.contains("TX:  bytes packets errors dropped carrier collsns \n             0       0"), "\(stats)")

        // Drift: a deleted IPv6 neighbour reads back without its MAC and an upsert repairs it.
        try lab.sh(mine.node.name, ["-6", "neigh", "del", "\(ref.podSubnet.address)", "dev", "flannel-v6.1"])
        let drifted = try table6.currentPeers()
        #expect(drifted.count == 1 && drifted.first?.vtepMAC == nil)
        try table6.upsert(standIn6.asPeer)
        #expect(try table6.currentPeers() == [standIn6.asPeer])
        #expect(try lab.ping6(from: mine.node.podNamespace, to: ref.podIP, count: 2).received == 2)

        try table6.remove(standIn6.asPeer)
        #expect(try table6.currentPeers().isEmpty)
        #expect(try lab.ping6(from: mine.node.podNamespace, to: ref.podIP, count: 1).received == 0)
        #expect(try lab.ping(from: mine.node.podNamespace, to: ref.node.podIP, count: 1).received == 1, "IPv4 is untouched")
    }

    @Test("IPv6 host-gw and DirectRouting peers: routes via PublicIPv6, traffic, read-back, removal; removeAll", .needsRoot)
    func hostGWDirectAndRemoval() throws {
        let lab = try NetnsLab(tag: "o6h")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let a = try lab.addIPv6(to: nodes[0]), b = try lab.addIPv6(to: nodes[1])
        var nlA = try NetlinkSocket(networkNamespace: "/run/netns/\(a.node.name)")
        let eth0A = try #require(try nlA.link(named: "eth0"))
        let hostGW = try HostGWv6PeerTable(underlayIndex: eth0A.index, network: Self.network, ownSubnet: a.podSubnet,
                                           networkNamespace: "/run/netns/\(a.node.name)")
        let peerB = IPv6Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: nil)
        try hostGW.upsert(peerB)
        try lab.sh(b.node.name, ["-6", "route", "replace", "\(a.podSubnet)", "via", "\(a.nodeIP)", "dev", "eth0"])
        #expect(try lab.sh(a.node.name, ["-6", "route", "show", "\(b.podSubnet)"]).contains("\(b.podSubnet) via \(b.nodeIP) dev eth0"))
        try lab.sh(a.node.name, ["-6", "route", "add", "fd99::/64", "via", "\(b.nodeIP)"])  // not in the network: not ours
        #expect(try hostGW.currentPeers() == [peerB])
        #expect(try lab.waitForPing6(from: a.node.podNamespace, to: b.podIP))
        try hostGW.remove(peerB)
        #expect(try hostGW.currentPeers().isEmpty)

        // DirectRouting: a peer on our IPv6 link is reached without a gateway.
        #expect(try Overlay.isDirectlyReachable(b.nodeIP, netlink: &nlA))
        #expect(try !Overlay.isDirectlyReachable(IPv6Address("fd99::1")!, netlink: &nlA))
        let dev = try FlannelVXLANv6Device.ensure(vni: 1, localIP: a.nodeIP, underlayIndex: eth0A.index,
                                                  subnet: a.podSubnet, network: Self.network, netlink: &nlA)
        let table = try KernelVXLANv6PeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(a.node.name)")
        let direct = IPv6Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: MACAddress("0e:00:00:00:06:bb")!, direct: true)
        try table.upsert(direct)
        #expect(try lab.sh(a.node.name, ["-6", "route", "show", "\(b.podSubnet)"]).contains("\(b.podSubnet) via \(b.nodeIP) dev eth0"))
        #expect(try table.currentPeers() == [direct])
        #expect(try lab.ping6(from: a.node.podNamespace, to: b.podIP, count: 2).received == 2)

        // removeAll: both devices of the VNI and our IPv6 underlay routes, nothing else.
        _ = try FlannelVXLANDevice.ensure(vni: 1, localIP: a.node.nodeIP, underlayIndex: eth0A.index, netlink: &nlA)
        let removal = try Overlay.removeAll(vni: 1, network: Self.network4, ipv6Network: Self.network, underlayIndex: eth0A.index, netlink: &nlA)
        #expect(Set(removal.deletedDevices) == ["flannel.1", "flannel-v6.1"])
        #expect(removal.deletedRoutes == ["\(b.podSubnet)"])
        let routes = try lab.sh(a.node.name, ["-6", "route", "show"])
        #expect(!routes.contains("\(b.podSubnet)") && routes.contains("fd99::/64"))

        // The userspace path's TUN gets its IPv6 side: <subnet>/128 and the network with the IPv6 MTU
        // (a veth stands in for the TUN: configuring is the same). Idempotent; a stale address goes.
        try lab.sh(a.node.name, ["link", "add", "tu6", "type", "veth", "peer", "name", "tu6p"])
        try lab.sh(a.node.name, ["-6", "addr", "add", "fd00:5:0:77::/128", "dev", "tu6", "nodad"])
        for _ in 0..<2 { try Overlay.configureTUNIPv6(name: "tu6", subnet: a.podSubnet, network: Self.network, mtu: 1430, netlink: &nlA) }
        let tunRoutes = try lab.sh(a.node.name, ["-6", "route", "show", "\(Self.network)"])
        #expect(tunRoutes.contains("\(Self.network) dev tu6") && tunRoutes.contains("mtu 1430"), "\(tunRoutes)")
        let tunAddresses = try lab.sh(a.node.name, ["-6", "addr", "show", "dev", "tu6"])
        #expect(tunAddresses.contains("\(a.podSubnet.address)/128") && !tunAddresses.contains("fd00:5:0:77::"))
        #expect(try nlA.ipv6Routes().contains { $0.destination == Self.network && $0.mtu == 1430 })
    }
}
