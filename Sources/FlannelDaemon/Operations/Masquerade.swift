// --ip-masq as current flannel does it, in nftables: pods talking to anything outside the cluster
// network leave with the node's address; pod-to-pod traffic keeps pod addresses. flannel's rules, in
// its order (its FLANNEL-POSTRTG chain in iptables' nat table):
//   1. marked by kube-proxy (0x4000/0x4000)    return      (kube-proxy masquerades it itself: no double NAT)
//   2. our subnet → network                   return      (our pods to pods: no NAT)
//   3. network → our subnet                   return      (pods to our pods: no NAT)
//   4. not network → our subnet               return      (outside to our pods: no NAT)
//   5. network → not multicast                masquerade  (pods to outside)
//   6. not network → network                  masquerade  (host/outside to other nodes' pods: replies
//                                                          come back through the overlay)
// Both masquerades are fully-random (source ports drawn at random, which avoids the SNAT port race
// under load) unless --ip-masq-fully-random-disable is given, as in flannel.
//
// IPv6 (dual-stack and IPv6-only networks) gets the same six rules, as flannel's MasqIP6Rules, in
// `ip6 flanneld-xdp`, with ff00::/8 as the multicast range.
//
// The rules live in their own table, `ip flanneld-xdp`, with one postrouting NAT chain, so we never
// touch anyone else's rules (kube-proxy's, docker's, the admin's) and `cleanup` deletes exactly ours.
// The ruleset text is generated only from IPv4Subnet values (the config's Network and our own lease,
// both validated types whose description is digits and dots): nothing from other nodes' leases and
// no free text ever reaches the nft command line. The whole table is replaced in one nft
// transaction (add, delete, define), so a reader never sees half a table. The periodic check
// (HostRules.swift, every --iptables-resync seconds) compares `nft list table` with the wanted text
// and replaces the table if it was removed or edited.

import Dataplane
import Glibc
import NetTypes

public enum Masquerade {
    public static let tableName = "flanneld-xdp"
    public static let chainName = "postrouting"

    /// kube-proxy's masquerade mark (its KUBE-MARK-MASQ), as flannel's trafficmngr.KubeProxyMark.
    static let kubeProxyMark = "0x00004000"

    /// One address family's table: flannel makes the same six rules for IPv6 (ip6tables' nat
    /// table, or its nftables table flannel-ipv6) with ff00::/8 as the multicast range. Built only
    /// from validated subnet values, so no free text reaches nft.
    public struct Rules: Sendable, Equatable {
        /// nft's table family and address match keyword: "ip" or "ip6".
        public let family: String
        public let network: String
        public let subnet: String
        let multicast: String
        public let fullyRandom: Bool

        public static func ipv4(network: IPv4Subnet, subnet: IPv4Subnet, fullyRandom: Bool = true) -> Rules {
            Rules(family: "ip", network: network.description, subnet: subnet.description, multicast: "224.0.0.0/4", fullyRandom: fullyRandom)
        }

        public static func ipv6(network: IPv6Subnet, subnet: IPv6Subnet, fullyRandom: Bool = true) -> Rules {
            Rules(family: "ip6", network: network.description, subnet: subnet.description, multicast: "ff00::/8", fullyRandom: fullyRandom)
        }

        /// "table ip flanneld-xdp", as nft names it.
        public var tableDescription: String { "table \(family) \(tableName)" }

        /// The table's text, formatted exactly as `nft list table` prints it (tabs), so that the drift
        /// check can compare the two line by line.
        public var ruleset: String {
            let masquerade = fullyRandom ? "masquerade fully-random" : "masquerade"
            let f = family
            return """
            table \(f) \(tableName) {
            \tchain \(chainName) {
            \t\ttype nat hook postrouting priority srcnat; policy accept;
            \t\tmeta mark & \(kubeProxyMark) == \(kubeProxyMark) return
            \t\t\(f) saddr \(subnet) \(f) daddr \(network) return
            \t\t\(f) saddr \(network) \(f) daddr \(subnet) return
            \t\t\(f) saddr != \(network) \(f) daddr \(subnet) return
            \t\t\(f) saddr \(network) \(f) daddr != \(multicast) \(masquerade)
            \t\t\(f) saddr != \(network) \(f) daddr \(network) \(masquerade)
            \t}
            }

            """
        }

        /// One nft transaction that replaces the table whether or not it exists.
        var replaceScript: String { "add table \(family) \(tableName)\ndelete table \(family) \(tableName)\n" + ruleset }
    }

    /// The IPv4 table's text (see `Rules.ruleset`).
    public static func ruleset(network: IPv4Subnet, subnet: IPv4Subnet, fullyRandom: Bool = true) -> String {
        Rules.ipv4(network: network, subnet: subnet, fullyRandom: fullyRandom).ruleset
    }

    /// Installs (or replaces) the table in the calling thread's network namespace.
    public static func install(_ rules: Rules) throws(OperationsError) {
        let result = try NFT.run(["-f", "-"], stdin: rules.replaceScript)
        guard result.status == 0 else {
            throw OperationsError(operation: "nft -f (\(rules.tableDescription))", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "is the nf_tables kernel module available? install Debian's nftables package")
        }
    }

    public static func install(network: IPv4Subnet, subnet: IPv4Subnet, fullyRandom: Bool = true) throws(OperationsError) {
        try install(.ipv4(network: network, subnet: subnet, fullyRandom: fullyRandom))
    }

    /// The table of `family` ("ip", "ip6") as nft lists it, nil when it does not exist.
    public static func current(family: String = "ip") throws(OperationsError) -> String? {
        let result = try NFT.run(["list", "table", family, tableName], stdin: nil)
        if result.status != 0 {
            // "No such file or directory": the table is absent; anything else is a real failure.
            if result.output.contains("No such file") { return nil }
            throw OperationsError(operation: "nft list table \(family) \(tableName)", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "install Debian's nftables package and run as root")
        }
        return result.output
    }

    /// True when the table holds exactly the wanted rules (whitespace aside).
    public static func isCurrent(_ rules: Rules) throws(OperationsError) -> Bool {
        guard let listed = try current(family: rules.family) else { return false }
        return normalized(listed) == normalized(rules.ruleset)
    }

    public static func isCurrent(network: IPv4Subnet, subnet: IPv4Subnet, fullyRandom: Bool = true) throws(OperationsError) -> Bool {
        try isCurrent(.ipv4(network: network, subnet: subnet, fullyRandom: fullyRandom))
    }

    /// Installs the table when it is missing or differs; returns true when it had to.
    @discardableResult
    public static func ensure(_ rules: Rules) throws(OperationsError) -> Bool {
        if try isCurrent(rules) { return false }
        try install(rules)
        return true
    }

    @discardableResult
    public static func ensure(network: IPv4Subnet, subnet: IPv4Subnet, fullyRandom: Bool = true) throws(OperationsError) -> Bool {
        try ensure(.ipv4(network: network, subnet: subnet, fullyRandom: fullyRandom))
    }

    /// Deletes our tables (IPv4 and IPv6); absent is fine. Returns true when a table was deleted.
    @discardableResult
    public static func remove() throws(OperationsError) -> Bool {
        // Without nft on the node there can be no table of ours.
        guard NFT.path != nil else { return false }
        var removed = false
        for family in ["ip", "ip6"] where try current(family: family) != nil {
            let result = try NFT.run(["delete", "table", family, tableName], stdin: nil)
            guard result.status == 0 else {
                throw OperationsError(operation: "nft delete table \(family) \(tableName)", detail: "exit \(result.status): \(result.output.trimmed)",
                                      hint: "run as root")
            }
            removed = true
        }
        return removed
    }

    /// For `status`: whether the table of `family` is there, without needing the wanted subnets.
    public static func status(family: String = "ip") -> MasqueradeStatus {
        do {
            guard let listed = try current(family: family) else { return .missing }
            let rules = listed.split(separator: "\n").filter { $0.contains("masquerade") || $0.contains("return") }.count
            return .present(rules: rules)
        } catch {
            return .unknown("\(error)")
        }
    }

    static func normalized(_ text: String) -> [String] {
        text.split(separator: "\n").map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }
            .filter { !$0.isEmpty }
    }
}

public enum MasqueradeStatus: Sendable, Equatable, CustomStringConvertible {
    case present(rules: Int)
    case missing
    case unknown(String)

    public var description: String {
        switch self {
        case .present(let rules): "on: nftables table ip \(Masquerade.tableName), \(rules) rules"
        case .missing: "MISSING: table ip \(Masquerade.tableName) is not installed (the daemon recreates it within its check interval)"
        case .unknown(let why): "unknown: \(why)"
        }
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}


/// nft, for the masquerade table.
enum NFT {
    static var path: String? { HostProgram.nft.path }

    static func run(_ arguments: [String], stdin: String?) throws(OperationsError) -> (status: Int32, output: String) {
        try HostProgram.nft.run(arguments, stdin: stdin, neededFor: "--ip-masq")
    }
}
