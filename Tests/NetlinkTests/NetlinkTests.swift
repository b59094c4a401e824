import Glibc
import NetTypes
import Netlink
import RuntimeSupport
import TestSupport
import TestTraits
import Testing

/// Each test builds its own one-node lab, opens a netlink socket inside the node namespace, and
/// checks every Swift change with the `ip`/`bridge` CLIs (and every CLI change with Swift).
@Suite("Netlink", .ownThreads) struct NetlinkTests {

    func lab(_ tag: String) throws -> (NetnsLab, LabNode) {
        let lab = try NetnsLab(tag: tag)
        let node = try lab.makeCluster(nodes: 1)[0]
        return (lab, node)
    }

    @Test("links: look-up by name and index, dump, agree with ip link", .needsRoot)
    func linkLookup() throws {
        let (lab, node) = try lab("nll")
        defer { lab.cleanup() }
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        #expect(eth0.index == (try lab.linkIndex(node.name, "eth0")))
        #expect(eth0.mac == (try lab.linkMAC(node.name, "eth0")))
        #expect(eth0.mtu == 1500 && eth0.isUp && eth0.kind == "veth")
        let byIndex = try #require(try nl.link(index: eth0.index))
        #expect(byIndex.name == "eth0")
        #expect(try nl.link(named: "nosuchdev") == nil)
        #expect(try nl.link(index: 99999) == nil)
        let names = Set(try nl.links().map(\.name))
        #expect(names.isSuperset(of: ["lo", "eth0", "cni0", "vp"]))
        let cni0 = try #require(try nl.link(named: "cni0"))
        #expect(cni0.kind == "bridge")
        #expect(try nl.link(named: "vp")?.masterIndex == cni0.index)
        #expect(throws: NetlinkError.self) { try nl.link(named: "a-name-longer-than-15") }
    }

    @Test("vxlan: create like flanneld, read back; CLI-made vxlan parsed; MTU/MAC/up/down/delete",
          .needsRoot)
    func vxlanLifecycle() throws {
        let (lab, node) = try lab("nlv")
        defer { lab.cleanup() }
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let mac = MACAddress("0e:aa:bb:cc:dd:01")!
        let link = try nl.createVXLAN(VXLANLinkSpec(name: "flannel.7", vni: 7, local: node.nodeIP,
                                                    underlayIndex: eth0.index, port: 8472, learning: false, mac: mac))
        #expect(link.kind == "vxlan" && link.mac == mac && link.mtu == 1450 && !link.isUp)
        #expect(link.vxlan == VXLANInfo(vni: 7, local: node.nodeIP, port: 8472, learning: false, underlayIndex: eth0.index))
        let shown = try lab.sh(node.name, ["-d", "link", "show", "flannel.7"])
        #expect(shown.contains("vxlan id 7 local \(node.nodeIP) dev eth0 srcport 0 0 dstport 8472 nolearning"))
        #expect(shown.contains("link/ether \(mac)"))

        // EEXIST with the object in words.
        do {
            try nl.createVXLAN(VXLANLinkSpec(name: "flannel.7", vni: 7, local: node.nodeIP, underlayIndex: eth0.index))
            Issue.record("second create should fail")
        } catch {
            #expect(error.errno == EEXIST)
            #expect(error.description.hasPrefix("RTM_NEWLINK flannel.7 type vxlan id 7"))
            #expect(error.description.contains("File exists (errno 17)"))
        }

        try nl.setMTU(index: link.index, mtu: 1400)
        try nl.setMAC(index: link.index, mac: MACAddress("0e:aa:bb:cc:dd:02")!)
        try nl.setLink(index: link.index, up: true)
        let after = try lab.sh(node.name, ["link", "show", "flannel.7"])
        #expect(after.contains("mtu 1400") && after.contains("0e:aa:bb:cc:dd:02") && after.contains(",UP"))
        try nl.setLink(index: link.index, up: false)
        #expect(try nl.link(index: link.index)?.isUp == false)

        // CLI-made vxlan with learning on and another port.
        try lab.sh(node.name, ["link", "add", "vx2", "type", "vxlan", "id", "42", "local", "\(node.nodeIP)", "dev", "eth0", "dstport", "4789"])
        let vx2 = try #require(try nl.link(named: "vx2"))
        #expect(vx2.vxlan == VXLANInfo(vni: 42, local: node.nodeIP, port: 4789, learning: true, underlayIndex: eth0.index))

        try nl.deleteLink(index: link.index)
        try nl.deleteLink(index: vx2.index)
        #expect(try nl.link(named: "flannel.7") == nil)
        #expect(!(try lab.sh(node.name, ["link"])).contains("vx2"))
        do {
            try nl.deleteLink(index: link.index)
            Issue.record("deleting a deleted link should fail")
        } catch {
            #expect(error.errno == ENODEV && error.operation == "RTM_DELLINK")
        }
    }

    @Test("addresses: add/replace/delete/dump both ways", .needsRoot)
    func addresses() throws {
        let (lab, node) = try lab("nla")
        defer { lab.cleanup() }
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let cni0 = try #require(try nl.link(named: "cni0"))
        let a = IPv4Address("10.99.0.0")!
        try nl.addAddress(a, prefixLength: 32, index: cni0.index)
        #expect(try lab.sh(node.name, ["-4", "-o", "addr", "show", "dev", "cni0"]).contains("inet 10.99.0.0/32 scope global cni0"))
        #expect(throws: NetlinkError.self) { try nl.addAddress(a, prefixLength: 32, index: cni0.index) }
        try nl.replaceAddress(a, prefixLength: 32, index: cni0.index)
        try lab.sh(node.name, ["addr", "add", "10.98.1.1/24", "dev", "cni0"])
        let mine = try nl.addresses(index: cni0.index)
        #expect(Set(mine.map { "\($0.address)/\($0.prefixLength)" }) == [node.podGateway.description + "/24", "10.99.0.0/32", "10.98.1.1/24"])
        try nl.deleteAddress(a, prefixLength: 32, index: cni0.index)
        #expect(!(try lab.sh(node.name, ["-4", "addr", "show", "dev", "cni0"])).contains("10.99.0.0"))
        #expect(try nl.addresses().contains { $0.address == node.nodeIP && $0.prefixLength == 24 })
    }

    @Test("routes: onlink via, replace, delete, dump; errors name the object", .needsRoot)
    func routes() throws {
        let (lab, node) = try lab("nlr")
        defer { lab.cleanup() }
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let vx = try nl.createVXLAN(VXLANLinkSpec(name: "flannel.1", vni: 1, local: node.nodeIP, underlayIndex: eth0.index))
        try nl.setLink(index: vx.index, up: true)

        let peer = IPv4Subnet(cidr: "10.5.2.0/24")!
        let r = Route(destination: peer, gateway: peer.address, outputIndex: vx.index, onlink: true)
        try nl.addRoute(r)
        #expect(try lab.sh(node.name, ["route", "show", "10.5.2.0/24"]).trimmingSpacesAndNewlines() == "10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink")
        do {
            try nl.addRoute(r)
            Issue.record("duplicate route should fail")
        } catch {
            #expect(error.description.hasPrefix("RTM_NEWROUTE 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink: File exists (errno 17)"))
        }
        try nl.replaceRoute(r)
        let dumped = try nl.routes().filter { $0.destination == peer }
        #expect(dumped == [r])

        // host-gw style via eth0, then replace the same destination with it.
        let hostGW = Route(destination: peer, gateway: IPv4Address("192.168.77.9")!, outputIndex: eth0.index)
        try nl.replaceRoute(hostGW)
        #expect(try lab.sh(node.name, ["route", "show", "10.5.2.0/24"]).trimmingSpacesAndNewlines() == "10.5.2.0/24 via 192.168.77.9 dev eth0")
        try nl.deleteRoute(Route(destination: peer))
        #expect(try lab.sh(node.name, ["route", "show", "10.5.2.0/24"]).trimmingSpacesAndNewlines() == "")
        #expect(throws: NetlinkError.self) { try nl.deleteRoute(Route(destination: peer)) }

        // CLI-made route read by Swift, including a non-main table.
        try lab.sh(node.name, ["route", "add", "10.5.3.0/24", "via", "10.5.3.0", "dev", "flannel.1", "onlink"])
        try lab.sh(node.name, ["route", "add", "10.5.4.0/24", "via", "192.168.77.4", "table", "300"])
        #expect(try nl.routes().contains(Route(destination: IPv4Subnet(cidr: "10.5.3.0/24")!, gateway: IPv4Address("10.5.3.0")!,
                                               outputIndex: vx.index, onlink: true)))
        #expect(try nl.routes(table: 300).map(\.destination.description) == ["10.5.4.0/24"])
        try nl.deleteRoute(Route(destination: IPv4Subnet(cidr: "10.5.4.0/24")!, table: 300))
        #expect(try nl.routes(table: 300).isEmpty)
        // Route look-up, as `ip route get`.
        let toPeer = try #require(try nl.routeGet(to: IPv4Address("10.5.3.7")!))
        #expect(toPeer.gateway == IPv4Address("10.5.3.0") && toPeer.outputIndex == vx.index)
        let onWire = try #require(try nl.routeGet(to: IPv4Address("192.168.77.200")!))
        #expect(onWire.gateway == nil && onWire.outputIndex == eth0.index && onWire.preferredSource == node.nodeIP)
        #expect(try nl.routeGet(to: IPv4Address("8.8.8.8")!) == nil) // no default route in the lab
        // Gateway not reachable without onlink: the kernel's own reason is carried.
        do {
            try nl.addRoute(Route(destination: IPv4Subnet(cidr: "10.5.9.0/24")!, gateway: IPv4Address("10.5.9.0")!, outputIndex: vx.index))
            Issue.record("route without onlink should fail")
        } catch {
            #expect(error.kernelMessage != nil)
        }
    }

    @Test("neighbours and vxlan fdb: add/replace/delete/dump both ways", .needsRoot)
    func neighboursAndFDB() throws {
        let (lab, node) = try lab("nln")
        defer { lab.cleanup() }
        var nl = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        let eth0 = try #require(try nl.link(named: "eth0"))
        let vx = try nl.createVXLAN(VXLANLinkSpec(name: "flannel.1", vni: 1, local: node.nodeIP, underlayIndex: eth0.index))
        try nl.setLink(index: vx.index, up: true)
        let mac = MACAddress("0e:11:22:33:44:55")!
        let peerIP = IPv4Address("192.168.77.2")!

        try nl.addNeighbour(Neighbour(index: vx.index, address: IPv4Address("10.5.2.0")!, mac: mac))
        #expect(try lab.sh(node.name, ["neigh", "show", "dev", "flannel.1"]).trimmingSpacesAndNewlines() == "10.5.2.0 lladdr \(mac) PERMANENT")
        #expect(throws: NetlinkError.self) { try nl.addNeighbour(Neighbour(index: vx.index, address: IPv4Address("10.5.2.0")!, mac: mac)) }
        let mac2 = MACAddress("0e:11:22:33:44:66")!
        try nl.replaceNeighbour(Neighbour(index: vx.index, address: IPv4Address("10.5.2.0")!, mac: mac2))
        #expect(try nl.neighbours(index: vx.index) == [Neighbour(index: vx.index, address: IPv4Address("10.5.2.0")!, mac: mac2)])
        try lab.sh(node.name, ["neigh", "add", "10.5.3.0", "lladdr", "0e:00:00:00:00:03", "dev", "flannel.1", "nud", "permanent"])
        #expect(try nl.neighbours(index: vx.index).count == 2)
        try nl.deleteNeighbour(address: IPv4Address("10.5.2.0")!, index: vx.index)
        #expect(try nl.neighbours(index: vx.index).map(\.address.description) == ["10.5.3.0"])

        let fdb = FDBEntry(index: vx.index, mac: mac, destination: peerIP)
        try nl.addFDB(fdb)
        #expect(try lab.sh(node.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"]).contains("\(mac) dst \(peerIP) self permanent"))
        #expect(throws: NetlinkError.self) { try nl.addFDB(fdb) }
        try nl.replaceFDB(fdb)
        let entries = try nl.fdbEntries(index: vx.index).filter { $0.mac == mac }
        #expect(entries.count == 1 && entries[0].destination == peerIP && entries[0].flags.contains(.device) && entries[0].state.contains(.permanent))
        try lab.sh(node.name, [LabTools.bridge, "fdb", "append", "00:00:00:00:00:00", "dev", "flannel.1", "dst", "192.168.77.3", "self", "permanent"])
        #expect(try nl.fdbEntries(index: vx.index).contains { $0.mac == .zero && $0.destination == IPv4Address("192.168.77.3") })
        try nl.deleteFDB(fdb)
        #expect(!(try lab.sh(node.name, [LabTools.bridge, "fdb", "show", "dev", "flannel.1"])).contains("\(mac)"))
        do {
            try nl.deleteFDB(fdb)
            Issue.record("deleting a deleted fdb entry should fail")
        } catch {
            #expect(error.isNotFound)
        }
    }

    @Test("a socket opened for a namespace acts there, not in the caller's", .needsRoot)
    func namespaceBinding() throws {
        let (lab, node) = try lab("nlb")
        defer { lab.cleanup() }
        var inNode = try NetlinkSocket(networkNamespace: "/run/netns/\(node.name)")
        var inPod = try NetlinkSocket(networkNamespace: "/run/netns/\(node.podNamespace)")
        #expect(try inNode.link(named: "cni0") != nil)
        #expect(try inPod.link(named: "cni0") == nil)
        #expect(try inPod.addresses().contains { $0.address == node.podIP })
        do {
            _ = try NetlinkSocket(networkNamespace: "/run/netns/does-not-exist-\(getpid())")
            Issue.record("opening a missing namespace should fail")
        } catch {
            #expect(error.errno == ENOENT)
        }
    }
}
