// --ip-masq for real (root, netns): two lab nodes joined by kernel vxlan exactly as flanneld sets it
// up, and an "outside" namespace reached through node 1. A UDP receiver reports the source address
// it sees: before the table, the outside sees the pod's address; with it, the node's; pod to pod
// keeps the pod's address either way. nft runs on a NetnsThread, so only the lab's namespace is touched.

@testable import FlannelDaemon
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

/// A UDP socket created inside `namespace` (a socket stays in the namespace it was made in).
func opsUDPSocket(in namespace: String, bindTo address: IPv4Address?, port: UInt16) throws -> Int32 {
    try NetnsThread.run(namespace: namespace) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ToolFailure(command: "socket", status: errno, output: "") }
        var timeout = timeval(tv_sec: 3, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if let address {
            var sa = sockaddrIn(address, port)
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { close(fd); throw ToolFailure(command: "bind \(address):\(port)", status: errno, output: "") }
        }
        return fd
    }
}

private func sockaddrIn(_ address: IPv4Address, _ port: UInt16) -> sockaddr_in {
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = port.bigEndian
    sa.sin_addr.s_addr = address.value.bigEndian
    return sa
}

/// Sends one datagram from `sender` to `to`, and returns the source address `receiver` saw (nil: nothing arrived).
func opsSourceSeen(sender: Int32, receiver: Int32, to: IPv4Address, port: UInt16) -> IPv4Address? {
    var destination = sockaddrIn(to, port)
    let payload: [UInt8] = Array("fxops".utf8)
    // A few tries: the first datagram may wait for ARP on a fresh veth.
    for _ in 0..<3 {
        _ = withUnsafePointer(to: &destination) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(sender, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var from = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = withUnsafeMutablePointer(to: &from) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(receiver, &buffer, buffer.count, 0, $0, &length) }
        }
        if n > 0 { return IPv4Address(UInt32(bigEndian: from.sin_addr.s_addr)) }
    }
    return nil
}

@Suite("Operations: --ip-masq in nftables (root, netns)", .needsRoot, .ownThreads)
struct OperationsMasqueradeTests {
    @Test("pod → outside leaves with the node's address, pod → pod keeps the pod's; recreated when removed; removed cleanly")
    func masquerade() throws {
        let lab = try NetnsLab(tag: "ops")
        defer { lab.cleanup() }
        let network = IPv4Subnet(cidr: "10.5.0.0/16")!
        let nodes = try lab.makeCluster(nodes: 2, podNetwork: network)
        let standIns = try nodes.map { try lab.makeFlannelStandIn(node: $0) }
        for (i, node) in nodes.enumerated() {
            try lab.addFlannelPeerRoutes(on: node, peer: standIns[1 - i].asPeer)
        }
        // The outside world, reached through node 1 only; it knows no route back to the pods.
        let outside = lab.name("out")
        try lab.addNamespace(outside)
        let n1 = nodes[0].name
        try lab.sh(n1, ["link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", outside])
        try lab.sh(n1, ["addr", "add", "203.0.113.1/24", "dev", "vo"])
        try lab.sh(n1, ["link", "set", "vo", "up"])
        try lab.sh(outside, ["addr", "add", "203.0.113.2/24", "dev", "eth0"])
        try lab.sh(outside, ["link", "set", "eth0", "up"])
        let nodeOutsideAddress = IPv4Address(203, 0, 113, 1)
        let outsideAddress = IPv4Address(203, 0, 113, 2)

        let port: UInt16 = 47_000 + UInt16(getpid() % 1000)
        let outsideReceiver = try opsUDPSocket(in: outside, bindTo: outsideAddress, port: port)
        let pod2Receiver = try opsUDPSocket(in: nodes[1].podNamespace, bindTo: nodes[1].podIP, port: port)
        let pod1Sender = try opsUDPSocket(in: nodes[0].podNamespace, bindTo: nil, port: 0)
        defer { [outsideReceiver, pod2Receiver, pod1Sender].forEach { close($0) } }

        // Without the table: the outside sees the pod's own address (the control).
        #expect(opsSourceSeen(sender: pod1Sender, receiver: outsideReceiver, to: outsideAddress, port: port) == nodes[0].podIP)
        #expect(opsSourceSeen(sender: pod1Sender, receiver: pod2Receiver, to: nodes[1].podIP, port: port) == nodes[0].podIP)

        // Install on node 1, as the daemon does at start-up.
        let subnet = nodes[0].podSubnet
        let installed = try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet) }
        #expect(installed)
        let listed = try lab.sh(n1, ["/usr/sbin/nft", "list", "table", "ip", "flanneld-xdp"])
        #expect(Masquerade.normalized(listed) == Masquerade.normalized(Masquerade.ruleset(network: network, subnet: subnet)))
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet) } == false)

        // A fresh flow (new source port) so conntrack has no earlier un-NATed entry.
        let pod1Fresh = try opsUDPSocket(in: nodes[0].podNamespace, bindTo: nil, port: 0)
        defer { close(pod1Fresh) }
        #expect(opsSourceSeen(sender: pod1Fresh, receiver: outsideReceiver, to: outsideAddress, port: port) == nodeOutsideAddress)
        #expect(opsSourceSeen(sender: pod1Fresh, receiver: pod2Receiver, to: nodes[1].podIP, port: port) == nodes[0].podIP)

        // Removed or edited by someone: the check sees it and puts it back.
        try lab.sh(n1, ["/usr/sbin/nft", "delete", "table", "ip", "flanneld-xdp"])
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.isCurrent(network: network, subnet: subnet) } == false)
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet) })
        try lab.sh(n1, ["/usr/sbin/nft", "delete", "rule", "ip", "flanneld-xdp", "postrouting", "handle",
                        firstRuleHandle(try lab.sh(n1, ["/usr/sbin/nft", "-a", "list", "table", "ip", "flanneld-xdp"]))])
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet) })
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.isCurrent(network: network, subnet: subnet) })
        #expect(try NetnsThread.run(namespace: n1) { Masquerade.status() } == .present(rules: 6))

        // --ip-masq-fully-random-disable: the table is replaced by the plain-masquerade one, and back.
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet, fullyRandom: false) })
        let plain = try lab.sh(n1, ["/usr/sbin/nft", "list", "table", "ip", "flanneld-xdp"])
        #expect(!plain.contains("fully-random") && plain.contains("masquerade"), "\(plain)")
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet, fullyRandom: false) } == false)
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.ensure(network: network, subnet: subnet) })

        // Someone else's table in the same namespace is never touched by ours.
        try lab.sh(n1, ["/usr/sbin/nft", "add", "table", "ip", "someone-else"])
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.remove() })
        #expect(try NetnsThread.run(namespace: n1) { try Masquerade.remove() } == false)
        #expect(try NetnsThread.run(namespace: n1) { Masquerade.status() } == .missing)
        let tables = try lab.sh(n1, ["/usr/sbin/nft", "list", "tables"])
        #expect(tables.contains("table ip someone-else"))
        #expect(!tables.contains("flanneld-xdp"))
    }
}

extension OperationsMasqueradeTests {
    @Test("IPv6: the ip6 table is what nft lists back, kept current, and removed with the IPv4 one")
    func ipv6Table() throws {
        let lab = try NetnsLab(tag: "ops6")
        defer { lab.cleanup() }
        let ns = lab.name("n")
        try lab.addNamespace(ns)
        let rules = Masquerade.Rules.ipv6(network: IPv6Subnet(cidr: "fd00:5::/48")!, subnet: IPv6Subnet(cidr: "fd00:5:0:7::/64")!)
        let v4 = Masquerade.Rules.ipv4(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.7.0/24")!)
        #expect(try NetnsThread.run(namespace: ns) { try Masquerade.ensure(rules) })
        #expect(try NetnsThread.run(namespace: ns) { try Masquerade.ensure(v4) })
        let listed = try lab.sh(ns, ["/usr/sbin/nft", "list", "table", "ip6", "flanneld-xdp"])
        #expect(Masquerade.normalized(listed) == Masquerade.normalized(rules.ruleset), "\(listed)")
        #expect(try NetnsThread.run(namespace: ns) { try Masquerade.ensure(rules) } == false)
        #expect(try NetnsThread.run(namespace: ns) { Masquerade.status(family: "ip6") } == .present(rules: 6))
        try lab.sh(ns, ["/usr/sbin/nft", "delete", "table", "ip6", "flanneld-xdp"])
        #expect(try NetnsThread.run(namespace: ns) { try Masquerade.ensure(rules) })
        #expect(try NetnsThread.run(namespace: ns) { try Masquerade.remove() })
        #expect(!(try lab.sh(ns, ["/usr/sbin/nft", "list", "tables"])).contains("flanneld-xdp"))
    }
}

/// The handle of the first rule in `nft -a list` output ("... # handle 3").
private func firstRuleHandle(_ listing: String) -> String {
    for line in listing.split(separator: "\n") where line.contains("saddr") {
        if let range = line.firstRange(of: "# handle ") { return String(line[range.upperBound...]).trimmed }
    }
    return "0"
}

@Suite("Host rules: IPv6 FORWARD accepts with ip6tables (root, netns)", .needsRoot)
struct IPv6ForwardRulesTests {
    @Test("IPv6 FORWARD accepts: created with ip6tables as flannel spells them, re-added when removed, removed with the IPv4 ones")
    func ipv6ForwardRules() throws {
        let lab = try NetnsLab(tag: "hrf6")
        defer { lab.cleanup() }
        let ns = lab.name("x")
        try lab.addNamespace(ns)
        let network = IPv6Subnet(cidr: "fd00:5::/48")!
        func ip6tablesS() throws -> [String] {
            try lab.sh(ns, ["/usr/sbin/ip6tables", "-w", "5", "-t", "filter", "-S"]).split(separator: "\n").map(String.init)
        }
        func ensure() throws -> [String] { try NetnsThread.run(namespace: ns) { try ForwardRules.ensure(ipv6Network: network) } }
        try lab.sh(ns, ["/usr/sbin/ip6tables", "-w", "5", "-P", "FORWARD", "DROP"])
        #expect(try !ensure().isEmpty)
        let listed = try ip6tablesS()
        for rule in ["-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
                     "-A FLANNEL-FWD -s fd00:5::/48 -m comment --comment \"flanneld forward\" -j ACCEPT",
                     "-A FLANNEL-FWD -d fd00:5::/48 -m comment --comment \"flanneld forward\" -j ACCEPT"] {
            #expect(listed.contains(rule), "\(rule) missing:\n\(listed.joined(separator: "\n"))")
        }
        #expect(try ensure().isEmpty)
        #expect(try NetnsThread.run(namespace: ns) { ForwardRules.status(ipv6Network: network) } == .present(policy: "DROP"))
        #expect(try NetnsThread.run(namespace: ns) { ForwardRules.status(network: IPv4Subnet(cidr: "10.5.0.0/16")!) } == .missing,
                "the IPv4 table is another table")
        try lab.sh(ns, ["/usr/sbin/ip6tables", "-w", "5", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"])
        #expect(try ensure() == ["added FORWARD's jump to FLANNEL-FWD"])
        _ = try NetnsThread.run(namespace: ns) { try ForwardRules.ensure(network: IPv4Subnet(cidr: "10.5.0.0/16")!) }
        #expect(try NetnsThread.run(namespace: ns) { try ForwardRules.remove() })
        #expect(!(try ip6tablesS()).contains { $0.contains("FLANNEL-FWD") })
        #expect(try NetnsThread.run(namespace: ns) { ForwardRules.status(network: IPv4Subnet(cidr: "10.5.0.0/16")!) } == .missing)
    }
}
