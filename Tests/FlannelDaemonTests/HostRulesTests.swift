// The FORWARD accepts and the blackhole route for real (root, a namespace of the test's own):
// each is reconciled from whatever state someone left — missing, edited, doubled — and removed by
// cleanup's functions without touching anything else. iptables and netlink run on a NetnsThread,
// so only the test's namespace is touched.

import Dataplane
@testable import FlannelDaemon
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

@Suite("Host rules: FORWARD accepts and blackhole route (root, netns)", .needsRoot, .ownThreads)
struct HostRulesTests {
    /// A lab with one namespace of its own, where the rules are set.
    static func labNamespace(_ tag: String) throws -> (NetnsLab, String) {
        let lab = try NetnsLab(tag: tag)
        let ns = lab.name("x")
        do { try lab.addNamespace(ns) } catch { lab.cleanup(); throw error }
        return (lab, ns)
    }

    @Test("FORWARD accepts: created in iptables' filter FORWARD as flannel spells them, re-added when removed or edited, removed cleanly")
    func forwardRules() throws {
        let (lab, ns) = try Self.labNamespace("hrf")
        defer { lab.cleanup() }
        let network = IPv4Subnet(cidr: "10.5.0.0/16")!
        func iptablesS() throws -> [String] {
            try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-t", "filter", "-S"]).split(separator: "\n").map(String.init)
        }
        func ensure() throws -> [String] { try NetnsThread.run(namespace: ns) { try ForwardRules.ensure(network: network) } }
        let wanted = [
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
            "-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            "-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
        ]
        // Docker's policy, and a rule of someone else's that must survive everything below.
        try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-P", "FORWARD", "DROP"])
        try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"])

        #expect(try !ensure().isEmpty)
        var listed = try iptablesS()
        for rule in wanted { #expect(listed.contains(rule), "\(rule) missing:\n\(listed.joined(separator: "\n"))") }
        #expect(listed.contains("-N FLANNEL-FWD") && listed.contains("-P FORWARD DROP"))
        #expect(try ensure().isEmpty, "a second pass must find everything in place")
        #expect(try NetnsThread.run(namespace: ns) { ForwardRules.status(network: network) } == .present(policy: "DROP"))

        // The jump removed: re-added. An accept edited: the chain refilled. The jump doubled: one left.
        try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"])
        #expect(try NetnsThread.run(namespace: ns) { ForwardRules.status(network: network) } == .missing)
        #expect(try ensure() == ["added FORWARD's jump to FLANNEL-FWD"])
        try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-R", "FLANNEL-FWD", "2", "-d", "10.9.0.0/16", "-j", "ACCEPT"])
        #expect(try ensure() == ["set the accepts for 10.5.0.0/16 in FLANNEL-FWD"])
        try lab.sh(ns, ["/usr/sbin/iptables", "-w", "5", "-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"])
        #expect(try ensure() == ["deleted a second FORWARD jump to FLANNEL-FWD"])
        listed = try iptablesS()
        #expect(listed.filter { $0.hasPrefix("-A FORWARD") || $0.hasPrefix("-A FLANNEL-FWD") }
                == ["-A FORWARD -i docker0 -j ACCEPT"] + wanted, "\(listed.joined(separator: "\n"))")

        // cleanup's part: ours go, the policy and the other rule stay; a second call finds nothing.
        #expect(try NetnsThread.run(namespace: ns) { try ForwardRules.remove() })
        #expect(try NetnsThread.run(namespace: ns) { try ForwardRules.remove() } == false)
        listed = try iptablesS()
        #expect(!listed.contains { $0.contains("FLANNEL-FWD") }, "\(listed)")
        #expect(listed.contains("-A FORWARD -i docker0 -j ACCEPT") && listed.contains("-P FORWARD DROP"))
    }

    @Test("blackhole route: added for the subnet, left to a bridge's route of the same prefix, and only it removed")
    func blackholeRoute() throws {
        let (lab, ns) = try Self.labNamespace("hrb")
        defer { lab.cleanup() }
        let own = IPv4Subnet(cidr: "10.5.1.0/24")!
        let bridged = IPv4Subnet(cidr: "10.5.2.0/24")!
        // A bridge-like route for 10.5.2.0/24: an address on a veth in the namespace.
        try lab.sh(ns, ["link", "add", "hb0", "type", "veth", "peer", "name", "hb1"])
        try lab.sh(ns, ["addr", "add", "10.5.2.1/24", "dev", "hb0"])
        try lab.sh(ns, ["link", "set", "hb0", "up"])
        try lab.sh(ns, ["link", "set", "hb1", "up"])

        #expect(try NetnsThread.run(namespace: ns) { try BlackholeRoute.ensure(subnet: own) } == .added)
        #expect(try NetnsThread.run(namespace: ns) { try BlackholeRoute.ensure(subnet: own) } == .present)
        #expect(try lab.sh(ns, ["route", "show", "type", "blackhole"]).contains("blackhole 10.5.1.0/24"))
        guard case .heldByAnotherRoute = try NetnsThread.run(namespace: ns, { try BlackholeRoute.ensure(subnet: bridged) }) else {
            Issue.record("a bridge's route for the prefix must be left alone")
            return
        }
        #expect(try NetnsThread.run(namespace: ns) { try BlackholeRoute.remove(inside: IPv4Subnet(cidr: "10.5.0.0/16")!) } == [own])
        #expect(try lab.sh(ns, ["route", "show", "type", "blackhole"]).isEmpty)
        #expect(try lab.sh(ns, ["route", "show", "10.5.2.0/24"]).contains("dev hb0"), "the bridge's route must stay")
    }
}
