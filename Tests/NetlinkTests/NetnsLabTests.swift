import NetTypes
import TestSupport
import Glibc
import TestTraits
import Testing

@Suite("NetnsLab", .ownThreads) struct NetnsLabTests {
    @Test("two nodes: host-gw routes and the CLI flannel stand-in both carry pod traffic; cleanup removes everything",
          .needsRoot)
    func labCarriesTraffic() throws {
        let lab = try NetnsLab(tag: "nllab")
        defer { lab.cleanup() }
        let nodes = try lab.makeCluster(nodes: 2)
        let (a, b) = (nodes[0], nodes[1])
        #expect(a.podSubnet.description == "10.5.1.0/24" && b.podIP.description == "10.5.2.2")

        #expect(try lab.groEnabled(namespace: a.name, ifname: "eth0"))
        #expect(try lab.groEnabled(namespace: lab.wireNamespace, ifname: a.wireIfname))
        // Underlay is up and the nodes see each other.
        #expect(try lab.waitForPing(from: a.name, to: b.nodeIP))
        // No route yet between pods.
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 1).received == 0)

        // host-gw routes.
        try lab.addHostGWRoute(on: a, peer: Peer(subnet: b.podSubnet, publicIP: b.nodeIP, vtepMAC: nil))
        try lab.addHostGWRoute(on: b, peer: Peer(subnet: a.podSubnet, publicIP: a.nodeIP, vtepMAC: nil))
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 3).received == 3)
        try lab.sh(a.name, ["route", "del", "\(b.podSubnet)"])
        try lab.sh(b.name, ["route", "del", "\(a.podSubnet)"])

        // flanneld's vxlan configuration made with the CLI on both nodes.
        let sa = try lab.makeFlannelStandIn(node: a)
        let sb = try lab.makeFlannelStandIn(node: b, vtepMAC: MACAddress("0e:11:22:33:44:55")!)
        #expect(sb.vtepMAC.description == "0e:11:22:33:44:55")
        let link = try lab.sh(a.name, ["-d", "link", "show", "flannel.1"])
        #expect(link.contains("mtu 1450") && link.contains("vxlan id 1 local 192.168.77.1 dev eth0") && link.contains("dstport 8472 nolearning"))
        try lab.addFlannelPeerRoutes(on: a, peer: sb.asPeer)
        try lab.addFlannelPeerRoutes(on: b, peer: sa.asPeer)
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 3).received == 3)
        #expect(try lab.ping(from: b.podNamespace, to: a.podIP, count: 3).received == 3)
        let bps = try lab.tcpThroughput(from: a.podNamespace, to: b.podNamespace, serverIP: b.podIP, seconds: 1)
        #expect(bps > 1e6)

        try lab.removeFlannelPeerRoutes(on: a, peer: sb.asPeer)
        #expect(try lab.ping(from: a.podNamespace, to: b.podIP, count: 1).received == 0)

        let sleeper = try lab.spawn(a.name, ["/bin/sleep", "60"])
        #expect(sleeper.isRunning)
        lab.cleanup()
        lab.cleanup()
        #expect(!sleeper.isRunning)
        let left = try lab.sh(nil, ["netns", "list"])
        #expect(!left.contains(lab.prefix + "-"))
    }

    @Test("namespaces of dead test processes are swept; live ones are not", .needsRoot)
    func staleSweep() throws {
        // A pid that surely does not exist now: a child that has exited and been reaped.
        let lab = try NetnsLab(tag: "nlsw")
        defer { lab.cleanup() }
        let child = try lab.spawn(lab.wireNamespace, ["/bin/true"])
        #expect(child.waitExit(timeout: 5) == 0)
        let stale = "fxnlsw-\(child.pid)-1-n1"
        try lab.sh(nil, ["netns", "add", stale])
        defer { _ = try? lab.run(nil, ["netns", "del", stale]) }
        // And a work folder with a mount in it, as FlannelCluster makes (/run/<prefix>/bpf).
        let folder = "/run/fxnlsw-\(child.pid)-1"
        try lab.sh(nil, ["/bin/mkdir", "-p", folder + "/bpf"])
        try lab.sh(nil, ["/bin/mount", "-t", "bpf", "bpf", folder + "/bpf"])
        defer { _ = try? lab.run(nil, ["/bin/umount", folder + "/bpf"]); _ = try? lab.run(nil, ["/bin/rm", "-rf", folder]) }
        let removed = NetnsLab.removeStaleNamespaces()
        #expect(removed.contains(stale) && removed.contains(folder))
        #expect(access(folder, F_OK) != 0)
        #expect(!CommandRunnerProbe.mounts().contains(folder + "/bpf"))
        #expect(!removed.contains(lab.wireNamespace))
        #expect(!(try lab.sh(nil, ["netns", "list"])).contains(stale))
        #expect(try lab.sh(nil, ["netns", "list"]).contains(lab.wireNamespace))
    }
}

enum CommandRunnerProbe {
    static func mounts() -> String { readFile("/proc/self/mounts") }
}
