import Glibc
import Logging
import NetTypes
import Netlink
import Overlay
import RuntimeSupport
import TestSupport
import TestTraits
import Testing

/// The reference for every check here is the CLI (`NetnsLab.makeFlannelStandIn` /
/// `addFlannelPeerRoutes`), configured exactly as stock flanneld configures the kernel.
@Suite("Overlay", .ownThreads) struct OverlayTests {
    static let network = IPv4Subnet(cidr: "10.5.0.0/16")!

    /// What a node shows of the overlay, with the ifindex prefixes removed.
    func kernelState(_ lab: NetnsLab, _ node: LabNode, vni: UInt32 = 1) throws -> [String: String] {
        let dev = "flannel.\(vni)"
        func strip(_ s: String) -> String {
            s.split(separator: "\n").map { line -> String in
                // "7: flannel.1: <...>" → "flannel.1: <...>"
                if let colon = line.firstIndex(of: ":"), line[..<colon].allSatisfy(\.isNumber), !line[..<colon].isEmpty {
                    return String(line[line.index(after: colon)...])
                }
                return String(line)
            }.joined(separator: "\n")
        }
        return [
            "link": strip(try lab.sh(node.name, ["-d", "link", "show", dev])),
            "addr": strip(try lab.sh(node.name, ["-4", "addr", "show", "dev", dev])),
            "route": try lab.sh(node.name, ["route", "show"]),
            // The kernel dumps neighbours and fdb entries in hash order (seeded per namespace): sort.
            "neigh": try lab.sh(node.name, ["neigh", "show", "dev", dev]).split(separator: "\n").sorted().joined(separator: "\n"),
            "fdb": try lab.sh(node.name, [LabTools.bridge, "fdb", "show", "dev", dev]).split(separator: "\n").sorted().joined(separator: "\n"),
        ]
    }

    func peers(_ n: Int) -> [Peer] {
        (2..<(2 + n)).map { i in
            Peer(subnet: IPv4Subnet(cidr: "10.5.\(i).0/24")!, publicIP: IPv4Address(192, 168, 77, UInt8(i)),
                 vtepMAC: MACAddress(bytes: [0x0e, 0, 0, 0, 0, UInt8(i)]))
        }
    }

    @Test("the Swift-built device and peers are identical to flanneld's CLI-built reference",
          .needsRoot)
    func identicalToReference() throws {
        let mac = MACAddress("0e:aa:00:00:00:01")!
        // Two separate labs so both nodes have the same IPs and the outputs compare 1:1.
        let refLab = try NetnsLab(tag: "ovr")
        defer { refLab.cleanup() }
        let swiftLab = try NetnsLab(tag: "ovs")
        defer { swiftLab.cleanup() }
        let ref = try refLab.makeCluster(nodes: 1)[0]
        let mine = try swiftLab.makeCluster(nodes: 1)[0]

        try refLab.makeFlannelStandIn(node: ref, vtepMAC: mac)
        for p in peers(3) { try refLab.addFlannelPeerRoutes(on: ref, peer: p) }

        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index, preferredMAC: mac,
                                                subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev.origin == .created && dev.mac == mac && dev.mtu == 1450 && dev.name == "flannel.1")
        let table = try KernelVXLANPeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(mine.name)")
        for p in peers(3) { try table.upsert(p) }

        let a = try kernelState(refLab, ref), b = try kernelState(swiftLab, mine)
        for key in a.keys.sorted() {
            #expect(a[key] == b[key], "\(key) differs:\nreference:\n\(a[key] ?? "")\nswift:\n\(b[key] ?? "")")
        }
        #expect(b["route"]!.contains("10.5.3.0/24 via 10.5.3.0 dev flannel.1 onlink"))
        #expect(try table.currentPeers() == Set(peers(3)))

        // Idempotent: a second ensure adopts, a second upsert changes nothing.
        let again = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                  subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(again.origin == .adopted && again.index == dev.index && again.mac == mac)
        for p in peers(3) { try table.upsert(p) }
        #expect(try kernelState(swiftLab, mine) == b)

        // Removal: Swift removes, reference removes with the CLI; still identical.
        try table.remove(peers(3)[1])
        try refLab.removeFlannelPeerRoutes(on: ref, peer: peers(3)[1])
        let a2 = try kernelState(refLab, ref), b2 = try kernelState(swiftLab, mine)
        for key in a2.keys.sorted() { #expect(a2[key] == b2[key], "\(key) differs after removal") }
        #expect(try table.currentPeers() == Set([peers(3)[0], peers(3)[2]]))
        try table.remove(peers(3)[1]) // already gone: not an error

        // A peer that moved to another PublicIP (same VtepMAC): the fdb entry is replaced, not added.
        var moved = peers(3)[2]
        moved.publicIP = IPv4Address("192.168.77.99")!
        try table.upsert(moved)
        let fdb = try swiftLab.sh(mine.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"])
        #expect(fdb.split(separator: "\n").filter { $0.contains("\(moved.vtepMAC!)") }.map(String.init)
                == ["\(moved.vtepMAC!) dst 192.168.77.99 self permanent"])
        #expect(try table.currentPeers() == Set([peers(3)[0], moved]))
    }

    @Test("pods ping both ways between a CLI-reference node and a Swift-Overlay node",
          .needsRoot)
    func trafficWithReferenceNode() throws {
        let lab = try NetnsLab(tag: "ovt")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let (ref, mine) = (nodes[0], nodes[1])
        let standIn = try lab.makeFlannelStandIn(node: ref)

        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        let table = try KernelVXLANPeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(mine.name)")
        try table.upsert(standIn.asPeer)
        try lab.addFlannelPeerRoutes(on: ref, peer: Peer(subnet: mine.podSubnet, publicIP: mine.nodeIP, vtepMAC: dev.mac))

        #expect(try lab.ping(from: ref.podNamespace, to: mine.podIP, count: 3).received == 3)
        #expect(try lab.ping(from: mine.podNamespace, to: ref.podIP, count: 3).received == 3)
        #expect(try lab.tcpThroughput(from: mine.podNamespace, to: ref.podNamespace, serverIP: ref.podIP, seconds: 1) > 1e6)

        // Drift: someone deletes the neighbour; the read-back shows it, an upsert repairs it.
        try lab.sh(mine.name, ["neigh", "del", "\(ref.podSubnet.address)", "dev", "flannel.1"])
        let drifted = try table.currentPeers()
        #expect(drifted.count == 1 && drifted.first?.vtepMAC == nil && drifted.first?.subnet == ref.podSubnet)
        #expect(drifted != [standIn.asPeer])
        try table.upsert(standIn.asPeer)
        #expect(try table.currentPeers() == [standIn.asPeer])
        #expect(try lab.ping(from: mine.podNamespace, to: ref.podIP, count: 2).received == 2)

        // Someone deletes the device: the table says so instead of reporting "no peers"; ensure
        // and a new table bring everything back.
        try lab.sh(mine.name, ["link", "del", "flannel.1"])
        do {
            _ = try table.currentPeers()
            Issue.record("a table whose device is gone must not read back as empty")
        } catch let e as OverlayError {
            guard case .deviceMissing(let name, _) = e else { Issue.record("unexpected \(e)"); return }
            #expect(name == "flannel.1")
        }
        do {
            try table.upsert(standIn.asPeer)
            Issue.record("upserting into a deleted device must fail")
        } catch let e as OverlayError {
            guard case .deviceMissing = e else { Issue.record("unexpected \(e)"); return }
        }
        let dev2 = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index, preferredMAC: dev.mac,
                                                 subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev2.origin == .created && dev2.mac == dev.mac)
        let table2 = try KernelVXLANPeerTable(device: dev2, network: Self.network, networkNamespace: "/run/netns/\(mine.name)")
        try table2.verifyDevice()
        #expect(try table2.currentPeers().isEmpty)
        try table2.upsert(standIn.asPeer)
        #expect(try lab.ping(from: mine.podNamespace, to: ref.podIP, count: 2).received == 2)

        try table2.remove(standIn.asPeer)
        #expect(try table2.currentPeers().isEmpty)
        #expect(try lab.ping(from: mine.podNamespace, to: ref.podIP, count: 1).received == 0)
        #expect(try lab.sh(mine.name, ["neigh", "show", "dev", "flannel.1"]).isEmpty)
        #expect(!(try lab.sh(mine.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"])).contains("\(standIn.vtepMAC)"))
    }

    @Test("an existing CLI-made flannel.1 is adopted: same MAC, same ifindex, no link flap; stale address replaced",
          .needsRoot)
    func adoption() throws {
        let lab = try NetnsLab(tag: "ova")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let (mine, peer) = (nodes[0], nodes[1])
        // Stock flanneld was running here with an older lease 10.5.99.0/24.
        let old = try lab.makeFlannelStandIn(node: mine, subnet: IPv4Subnet(cidr: "10.5.99.0/24")!)
        let peerStandIn = try lab.makeFlannelStandIn(node: peer)
        try lab.addFlannelPeerRoutes(on: mine, peer: peerStandIn.asPeer)
        try lab.sh(mine.name, ["addr", "add", "172.31.0.1/32", "dev", "flannel.1"]) // outside the network: kept
        let index = try lab.linkIndex(mine.name, "flannel.1")
        let carrier = try lab.sh(mine.name, ["/bin/cat", "/sys/class/net/flannel.1/carrier_changes"])

        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                preferredMAC: MACAddress("0e:99:99:99:99:99")!,
                                                subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev.origin == .adopted)
        #expect(dev.mac == old.vtepMAC && dev.index == index)
        #expect(try lab.sh(mine.name, ["/bin/cat", "/sys/class/net/flannel.1/carrier_changes"]) == carrier)
        let addrs = try lab.sh(mine.name, ["-4", "-o", "addr", "show", "dev", "flannel.1"])
        #expect(addrs.contains("inet \(mine.podSubnet.address)/32") && addrs.contains("172.31.0.1/32") && !addrs.contains("10.5.99.0"))
        // The peer entries stock flanneld made are read back, unchanged.
        let table = try KernelVXLANPeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(mine.name)")
        #expect(try table.currentPeers() == [peerStandIn.asPeer])
    }

    @Test("an incompatible flannel.1 is replaced (with the reason), keeping its MAC; non-vxlan too",
          .needsRoot)
    func incompatibleReplaced() throws {
        let lab = try NetnsLab(tag: "ovi")
        defer { lab.cleanup() }
        let mine = try lab.makeCluster(nodes: 1)[0]
        try lab.sh(mine.name, ["link", "add", "flannel.1", "address", "0e:12:34:56:78:9a", "type", "vxlan", "id", "1",
                               "local", "\(mine.nodeIP)", "dev", "eth0", "dstport", "4789", "nolearning"])
        let oldIndex = try lab.linkIndex(mine.name, "flannel.1")
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev.origin == .replaced(reason: "port: 4789 vs 8472"))
        #expect(dev.index != oldIndex && dev.mac == MACAddress("0e:12:34:56:78:9a")! && dev.port == 8472)
        #expect(try lab.sh(mine.name, ["-d", "link", "show", "flannel.1"]).contains("dstport 8472"))

        // A bridge squatting on the name.
        try nl.deleteLink(index: dev.index)
        try lab.sh(mine.name, ["link", "add", "flannel.1", "type", "bridge"])
        let dev2 = try FlannelVXLANDevice.ensure(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index,
                                                 subnet: mine.podSubnet, network: Self.network, netlink: &nl)
        #expect(dev2.origin == .replaced(reason: "link type: bridge vs vxlan"))
        #expect(try nl.link(index: dev2.index)?.kind == "vxlan")

        // A missing underlay is a clear error, not a crash.
        do {
            _ = try FlannelVXLANDevice.ensure(vni: 2, localIP: mine.nodeIP, underlayIndex: 9999, subnet: mine.podSubnet, netlink: &nl)
            Issue.record("ensure with a missing underlay should fail")
        } catch {
            #expect(error.description.contains("ifindex 9999"))
        }
    }

    @Test("host-gw table and DirectRouting peers: routes via PublicIP, traffic, read-back, removal",
          .needsRoot)
    func hostGWAndDirect() throws {
        let lab = try NetnsLab(tag: "ovh")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let (a, b) = (nodes[0], nodes[1])
        var nlA = try NetlinkSocket(networkNamespace: "/run/netns/\(a.name)")
        let eth0A = try #require(try nlA.link(named: "eth0"))
        let hostGW = try HostGWPeerTable(underlayIndex: eth0A.index, network: Self.network, ownSubnet: a.podSubnet,
                                         networkNamespace: "/run/netns/\(a.name)")
        let peerB = Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: nil)
        try hostGW.upsert(peerB)
        try lab.addHostGWRoute(on: b, peer: Peer(subnet: a.podSubnet, publicIP: a.nodeIP, vtepMAC: nil))
        #expect(try lab.sh(a.name, ["route", "show", "\(b.podSubnet)"]).contains("\(b.podSubnet) via \(b.nodeIP) dev eth0"))
        // A route outside the flannel network is not ours.
        try lab.sh(a.name, ["route", "add", "172.16.5.0/24", "via", "\(b.nodeIP)"])
        #expect(try hostGW.currentPeers() == [peerB])
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 2).received == 2)
        try hostGW.remove(peerB)
        #expect(try hostGW.currentPeers().isEmpty)
        try hostGW.remove(peerB)

        // DirectRouting in the vxlan table: the direct peer gets the host-gw style route.
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: a.nodeIP, underlayIndex: eth0A.index,
                                                subnet: a.podSubnet, network: Self.network, netlink: &nlA)
        let table = try KernelVXLANPeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(a.name)")
        // First as a vxlan peer, then it turns direct: the neighbour goes, the fdb entry stays (so
        // the peer reads back exactly, MAC included).
        let vxPeer = Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: MACAddress("0e:00:00:00:00:bb")!)
        try table.upsert(vxPeer)
        var direct = vxPeer
        direct.direct = true
        try table.upsert(direct)
        #expect(try lab.sh(a.name, ["route", "show", "\(b.podSubnet)"]).trimmingSpacesAndNewlines() == "\(b.podSubnet) via \(b.nodeIP) dev eth0")
        #expect(try lab.sh(a.name, ["neigh", "show", "dev", "flannel.1"]).isEmpty)
        #expect(try lab.sh(a.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"]).contains("0e:00:00:00:00:bb dst \(b.nodeIP) self permanent"))
        #expect(try table.currentPeers() == [direct])
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 2).received == 2)
        try table.remove(direct)
        #expect(try table.currentPeers().isEmpty)
        #expect(try lab.sh(a.name, ["route", "show", "\(b.podSubnet)"]).isEmpty)
        #expect(!(try lab.sh(a.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"])).contains("0e:00:00:00:00:bb"))
        // Back to vxlan: the triple again, identical read-back.
        try table.upsert(vxPeer)
        #expect(try table.currentPeers() == [vxPeer])
        try table.remove(vxPeer)
        #expect(try lab.sh(a.name, ["route", "show"]).contains("172.16.5.0/24"))
    }

    @Test("removeAll deletes our device (and with it its entries) and our underlay routes only",
          .needsRoot)
    func removeAll() throws {
        let lab = try NetnsLab(tag: "ovc")
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index,
                                                subnet: node.podSubnet, network: Self.network, netlink: &nl)
        let table = try KernelVXLANPeerTable(device: dev, network: Self.network, networkNamespace: "/run/netns/\(node.name)")
        for p in peers(2) { try table.upsert(p) }
        try lab.sh(node.name, ["route", "add", "10.5.40.0/24", "via", "192.168.77.40"])   // a host-gw/direct route: ours
        try lab.sh(node.name, ["route", "add", "172.16.0.0/24", "via", "192.168.77.41"])  // someone else's
        // A device of another VNI is not touched.
        try lab.sh(node.name, ["link", "add", "flannel.2", "type", "vxlan", "id", "2", "dev", "eth0", "dstport", "8472"])

        let removal = try Overlay.removeAll(vni: 1, network: Self.network, underlayIndex: eth0.index, netlink: &nl)
        #expect(removal.deletedDevices == ["flannel.1"] && removal.deletedRoutes == ["10.5.40.0/24"])
        let routes = try lab.sh(node.name, ["route", "show"])
        #expect(!routes.contains("10.5.40.0") && !routes.contains("flannel.1") && routes.contains("172.16.0.0/24"))
        #expect(routes.contains("\(node.podSubnet) dev cni0"))
        #expect(try nl.link(named: "flannel.1") == nil && nl.link(named: "flannel.2") != nil)
        // Idempotent.
        let again = try Overlay.removeAll(vni: 1, network: Self.network, underlayIndex: eth0.index, netlink: &nl)
        #expect(again.deletedDevices.isEmpty && again.deletedRoutes.isEmpty)
        // Without a VNI: every flannel.<N> that is a vxlan with id N; a squatter is left alone.
        try lab.sh(node.name, ["link", "add", "flannel.9", "type", "bridge"])
        #expect(try Overlay.removeAll(netlink: &nl).deletedDevices == ["flannel.2"])
        #expect(try nl.link(named: "flannel.9") != nil)
    }
    @Test("1000 peers: upsert, read back through multi-part dumps, remove", .needsRoot)
    func manyPeers() throws {
        let lab = try NetnsLab(tag: "ovm")
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let big = IPv4Subnet(cidr: "10.0.0.0/8")!
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index,
                                                subnet: node.podSubnet, network: big, netlink: &nl)
        let table = try KernelVXLANPeerTable(device: dev, network: big, networkNamespace: "/run/netns/\(node.name)")
        var many: [Peer] = []
        for i in 0..<1000 {
            let hi = UInt8(i / 250), lo = UInt8(i % 250)
            let subnet = IPv4Subnet(address: IPv4Address(10, 100 + hi, lo, 0), prefixLength: 24)!
            let mac = MACAddress(bytes: [0x0e, 0, 0, 0, UInt8(i >> 8), UInt8(i & 0xff)])
            many.append(Peer(subnet: subnet, publicIP: IPv4Address(172, 20, hi, lo + 1), vtepMAC: mac))
        }
        for p in many { try table.upsert(p) }
        #expect(try table.currentPeers() == Set(many))
        #expect(try lab.sh(node.name, ["route", "show", "dev", "flannel.1"]).split(separator: "\n").count == 1000)
        for p in many { try table.remove(p) }
        #expect(try table.currentPeers().isEmpty)
        #expect(try lab.sh(node.name, ["neigh", "show", "dev", "flannel.1"]).isEmpty)
    }

    @Test("batched writes: 3000 peers in a few sends give what one call per peer gives; failures are per peer; the covering route is no peer",
          .needsRoot)
    func batched() throws {
        let lab = try NetnsLab(tag: "ovb")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let big = IPv4Subnet(cidr: "10.0.0.0/8")!
        var tables: [KernelVXLANPeerTable] = []
        for node in nodes {
            var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
            let eth0 = try #require(try nl.link(named: "eth0"))
            let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index,
                                                    subnet: node.podSubnet, network: big, netlink: &nl)
            tables.append(try KernelVXLANPeerTable(device: dev, network: big, networkNamespace: "/run/netns/\(node.name)"))
        }
        var many: [Peer] = []
        for i in 0..<3000 {
            let hi = UInt8(i / 250), lo = UInt8(i % 250)
            let subnet = IPv4Subnet(address: IPv4Address(10, 100 + hi, lo, 0), prefixLength: 24)!
            let mac = MACAddress(bytes: [0x0e, 0, 0, 0, UInt8(i >> 8), UInt8(i & 0xff)])
            // Every 100th a DirectRouting peer, on the node's own underlay (its gateway must be reachable).
            let direct = i % 100 == 7
            many.append(Peer(subnet: subnet, publicIP: direct ? IPv4Address(192, 168, 77, 100 + UInt8(i / 100)) : IPv4Address(172, 20, hi, lo + 1),
                             vtepMAC: mac, direct: direct))
        }
        for p in many { try tables[0].upsert(p) }
        let noMAC = Peer(subnet: IPv4Subnet(cidr: "10.99.0.0/24")!, publicIP: IPv4Address(172, 21, 0, 1), vtepMAC: nil)
        let failures = tables[1].upsert(batch: many + [noMAC])
        #expect(failures.map(\.0) == [noMAC])
        func state(_ node: LabNode) throws -> [String] {
            try ["route", "neigh"].map { what in
                try lab.sh(node.name, [what, "show", "dev", "flannel.1"]).split(separator: "\n").sorted().joined(separator: "\n")
            } + [try lab.sh(node.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"]).split(separator: "\n").sorted().joined(separator: "\n")]
        }
        #expect(try state(nodes[0]) == state(nodes[1]))
        #expect(try tables[1].currentPeers() == Set(many))

        try tables[1].ensureCoveringRoute()
        #expect(try tables[1].hasCoveringRoute())
        #expect(try lab.sh(nodes[1].name, ["route", "show", "10.0.0.0/8"]).contains("via 169.254.255.254 dev flannel.1 onlink"))
        #expect(try tables[1].currentPeers() == Set(many))

        #expect(tables[1].remove(batch: many).isEmpty)
        #expect(try tables[1].currentPeers().isEmpty)
        #expect(try lab.sh(nodes[1].name, ["route", "show", "dev", "flannel.1"]).split(separator: "\n").count == 1)
        try tables[1].removeCoveringRoute()
        #expect(try !tables[1].hasCoveringRoute())
        #expect(try lab.sh(nodes[1].name, ["neigh", "show", "dev", "flannel.1"]).isEmpty)
        // Removing what is gone is fine.
        #expect(tables[1].remove(batch: Array(many.prefix(5))).isEmpty)
        try tables[1].removeCoveringRoute()
    }

    @Test("flanneld's two phases: the device (and its MAC) before the lease, the address after; a new lease moves it; GBP",
          .needsRoot)
    func twoPhases() throws {
        let lab = try NetnsLab(tag: "ovp")
        defer { lab.cleanup() }
        let node = try lab.makeCluster(nodes: 1)[0]
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let dev = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index, netlink: &nl)
        #expect(dev.subnet == nil && dev.origin == .created && dev.mtu == 1450)
        #expect(try nl.addresses(index: dev.index).isEmpty)
        #expect(try lab.linkMAC(node.name, "flannel.1") == dev.mac)

        let configured = try dev.configure(subnet: node.podSubnet, network: Self.network, netlink: &nl)
        #expect(configured.subnet == node.podSubnet)
        #expect(try lab.sh(node.name, ["-4", "-o", "addr", "show", "dev", "flannel.1"]).contains("inet \(node.podSubnet.address)/32"))
        #expect(try nl.link(index: dev.index)?.isUp == true)
        _ = try configured.configure(subnet: node.podSubnet, network: Self.network, netlink: &nl) // idempotent

        // The lease changed (e.g. it expired during a long outage): the old address goes.
        let newLease = IPv4Subnet(cidr: "10.5.77.0/24")!
        _ = try configured.configure(subnet: newLease, network: Self.network, netlink: &nl)
        #expect(try nl.addresses(index: dev.index).map { "\($0.address)/\($0.prefixLength)" } == ["10.5.77.0/32"])

        // GBP is part of compatibility, in both directions.
        let gbp = try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index, gbp: true, netlink: &nl)
        #expect(gbp.origin == .replaced(reason: "gbp: false vs true") && gbp.mac == dev.mac)
        #expect(try lab.sh(node.name, ["-d", "link", "show", "flannel.1"]).contains(" gbp"))
        #expect(try FlannelVXLANDevice.ensure(vni: 1, localIP: node.nodeIP, underlayIndex: eth0.index, gbp: true, netlink: &nl).origin == .adopted)

        // configure on a device that went away says so.
        try nl.deleteLink(index: gbp.index)
        do {
            _ = try gbp.configure(subnet: node.podSubnet, network: Self.network, netlink: &nl)
            Issue.record("configure on a deleted device must fail")
        } catch {
            guard case .deviceMissing = error else { Issue.record("unexpected \(error)"); return }
        }
    }

    @Test("KernelOverlay: the data path's sequence end to end against a CLI reference node; TUN; cleanup",
          .needsRoot)
    func kernelOverlayFacade() throws {
        let lab = try NetnsLab(tag: "ovk")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let (ref, mine) = (nodes[0], nodes[1])
        let standIn = try lab.makeFlannelStandIn(node: ref)
        let overlay = try KernelOverlay(networkNamespace: "/run/netns/\(mine.name)")
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(mine.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))

        // Phase 1 (before the lease): the device and its MAC. Phase 2: address, tables.
        let dev = try overlay.ensureVXLANDevice(vni: 1, localIP: mine.nodeIP, underlayIndex: eth0.index, mtu: 1450)
        let readBack = try #require(try overlay.existingDevice(vni: 1))
        #expect(readBack.index == dev.index && readBack.mac == dev.mac && readBack.vxlan?.vni == 1 && readBack.vxlan?.port == 8472
                && readBack.vxlan?.local == mine.nodeIP && readBack.vxlan?.underlayIndex == eth0.index)
        let configured = try overlay.configureVXLANDevice(dev, subnet: mine.podSubnet, network: Self.network)
        let table = try overlay.kernelVXLANPeerTable(device: configured, network: Self.network)
        try table.upsert(standIn.asPeer)
        try lab.addFlannelPeerRoutes(on: ref, peer: Peer(subnet: mine.podSubnet, publicIP: mine.nodeIP, vtepMAC: dev.mac))
        #expect(try lab.ping(from: mine.podNamespace, to: ref.podIP, count: 2).received == 2)

        // host-gw table from the same object.
        let hostGW = try overlay.hostGWPeerTable(underlayIndex: eth0.index, network: Self.network, ownSubnet: mine.podSubnet)
        #expect(try hostGW.currentPeers().isEmpty)

        // The userspace path's TUN (a persistent one made with the CLI stands in for the daemon's).
        try lab.sh(mine.name, ["tuntap", "add", "dev", "flannel0", "mode", "tun"])
        try overlay.configureTUN(name: "flannel0", subnet: mine.podSubnet, network: Self.network, mtu: 1472)
        try overlay.configureTUN(name: "flannel0", subnet: mine.podSubnet, network: Self.network, mtu: 1472) // idempotent
        let tun = try lab.sh(mine.name, ["-4", "-o", "addr", "show", "dev", "flannel0"])
        #expect(tun.contains("inet \(mine.podSubnet.address)/32"))
        #expect(try lab.sh(mine.name, ["link", "show", "flannel0"]).contains("mtu 1472"))
        #expect(try lab.sh(mine.name, ["route", "show", "\(Self.network)"]).contains("\(Self.network) dev flannel0"))
        do {
            try overlay.configureTUN(name: "nosuchtun", subnet: mine.podSubnet, network: Self.network, mtu: 1472)
            Issue.record("a missing TUN must be reported")
        } catch {
            guard case .deviceMissing(let name, _) = error else { Issue.record("unexpected \(error)"); return }
            #expect(name == "nosuchtun")
        }

        // cleanup without a VNI or network: our vxlan devices go, nothing else.
        #expect(try overlay.removeFlannelDevices() == ["flannel.1"])
        #expect(try nl.link(named: "flannel0") != nil && nl.link(named: "flannel.1") == nil)
        #expect(try overlay.existingDevice(vni: 1) == nil)
        // What the userspace path does to a flannel.<VNI> that holds its port: any device, by index.
        try overlay.deleteDevice(index: try #require(try nl.link(named: "flannel0")).index)
        #expect(try nl.link(named: "flannel0") == nil)
    }
}
