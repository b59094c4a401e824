// --iptables-forward-rules (on by default, as in flanneld): accept forwarding to and from the flannel
// network in iptables' filter FORWARD chain. Docker ≥ 1.13 sets that chain's policy to DROP, and
// then every packet a node forwards between its pods and the overlay is dropped unless something
// accepts it first. The rules are current flannel's, spelled as it spells them, so a node can move
// between stock flanneld and flanneld-xdp in either direction and find its own rules:
//
//   -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
//   -A FLANNEL-FWD -s <Network> -m comment --comment "flanneld forward" -j ACCEPT
//   -A FLANNEL-FWD -d <Network> -m comment --comment "flanneld forward" -j ACCEPT
//
// Why `iptables` and not nft: see HostCommand.swift. The state is read with one `iptables -S` of the
// filter table and reconciled: a missing chain is created, a FLANNEL-FWD that differs from the two
// accepts is flushed and refilled, the jump is appended when missing and extra copies are deleted.
// Every --iptables-resync seconds (HostRules.swift). `cleanup` removes the jump and the chain.
//
// IPv6 (dual-stack and IPv6-only networks): the same chain, jump and accepts for the IPv6 network
// with `ip6tables`, as flannel does for its IPv6 network.

import Dataplane
import NetTypes

public enum ForwardRules {
    public static let chain = "FLANNEL-FWD"
    public static let comment = "flanneld forward"

    static var commentMatch: [String] { ["-m", "comment", "--comment", comment] }
    /// FORWARD's jump into our chain.
    static var jump: [String] { commentMatch + ["-j", chain] }
    /// FLANNEL-FWD's two accepts, in order.
    static func accepts<S: IPSubnetType>(network: S) -> [[String]] {
        [["-s", "\(network)"] + commentMatch + ["-j", "ACCEPT"], ["-d", "\(network)"] + commentMatch + ["-j", "ACCEPT"]]
    }

    /// A rule as `iptables -S` prints it ("-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD").
    static func listed(_ chainName: String, _ rule: [String]) -> String {
        (["-A", chainName] + rule.map { $0.contains(" ") ? "\"\($0)\"" : $0 }).joined(separator: " ")
    }

    /// The filter table as `iptables -S` shows it: chains and rules, warnings dropped.
    struct FilterTable: Equatable {
        var chains: Set<String> = []
        var rules: [String] = []
        /// FORWARD's policy ("DROP" where Docker runs), nil when not listed.
        var forwardPolicy: String?

        init(listing: String) {
            for line in listing.split(separator: "\n") {
                if line.hasPrefix("-N ") { chains.insert(String(line.dropFirst(3))) }
                if line.hasPrefix("-A ") { rules.append(String(line)) }
                if line.hasPrefix("-P FORWARD ") { forwardPolicy = String(line.dropFirst("-P FORWARD ".count)) }
            }
        }

        func rules(of chainName: String) -> [String] { rules.filter { $0.hasPrefix("-A \(chainName) ") } }
    }

    static func iptables(_ arguments: [String], program: HostProgram = .iptables) throws(OperationsError) -> String {
        // -w: wait for the xtables lock (iptables-legacy) instead of failing while Docker or
        // kube-proxy holds it; bounded, so a stuck lock shows as an error, not a hang.
        let full = ["-w", "5", "-t", "filter"] + arguments
        let result = try program.run(full, neededFor: "--iptables-forward-rules (or pass --iptables-forward-rules=false)")
        guard result.status == 0 else {
            throw OperationsError(operation: "\(program.rawValue) \(full.joined(separator: " "))", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "run as root; is the kernel's netfilter (ip_tables or nf_tables) available?")
        }
        return result.output
    }

    static func read(program: HostProgram = .iptables) throws(OperationsError) -> FilterTable {
        FilterTable(listing: try iptables(["-S"], program: program))
    }

    /// Brings the rules to the wanted state in the calling thread's network namespace; returns what
    /// had to change (empty when everything was in place).
    @discardableResult
    public static func ensure(network: IPv4Subnet) throws(OperationsError) -> [String] {
        try ensure(network: network, program: .iptables)
    }

    /// The same for the IPv6 network, with ip6tables.
    @discardableResult
    public static func ensure(ipv6Network: IPv6Subnet) throws(OperationsError) -> [String] {
        try ensure(network: ipv6Network, program: .ip6tables)
    }

    private static func ensure<S: IPSubnetType>(network: S, program: HostProgram) throws(OperationsError) -> [String] {
        func iptables(_ arguments: [String]) throws(OperationsError) -> String { try ForwardRules.iptables(arguments, program: program) }
        var changes: [String] = []
        let table = try read(program: program)
        if !table.chains.contains(chain) {
            _ = try iptables(["-N", chain])
            changes.append("created chain \(chain)")
        }
        let wanted = accepts(network: network)
        if table.rules(of: chain) != wanted.map({ listed(chain, $0) }) {
            if !table.rules(of: chain).isEmpty { _ = try iptables(["-F", chain]) }
            for rule in wanted { _ = try iptables(["-A", chain] + rule) }
            changes.append("set the accepts for \(network) in \(chain)")
        }
        let jumps = table.rules(of: "FORWARD").filter { $0 == listed("FORWARD", jump) }.count
        if jumps == 0 {
            _ = try iptables(["-A", "FORWARD"] + jump)
            changes.append("added FORWARD's jump to \(chain)")
        }
        for _ in 0..<max(0, jumps - 1) {
            _ = try iptables(["-D", "FORWARD"] + jump)
            changes.append("deleted a second FORWARD jump to \(chain)")
        }
        return changes
    }

    /// Removes the jump and the chain, of iptables and ip6tables; true when there was something to
    /// remove. Without the program on the node there can be nothing of ours.
    @discardableResult
    public static func remove() throws(OperationsError) -> Bool {
        var removed = false
        for program in [HostProgram.iptables, .ip6tables] where program.path != nil {
            let table = try read(program: program)
            for _ in table.rules(of: "FORWARD").filter({ $0 == listed("FORWARD", jump) }) {
                _ = try iptables(["-D", "FORWARD"] + jump, program: program)
                removed = true
            }
            if table.chains.contains(chain) {
                _ = try iptables(["-F", chain], program: program)
                _ = try iptables(["-X", chain], program: program)
                removed = true
            }
        }
        return removed
    }

    /// For `status`.
    public static func status(network: IPv4Subnet?) -> ForwardRulesStatus {
        status(network: network, program: .iptables)
    }

    /// For `status`: the IPv6 accepts (ip6tables).
    public static func status(ipv6Network: IPv6Subnet?) -> ForwardRulesStatus {
        status(network: ipv6Network, program: .ip6tables)
    }

    private static func status<S: IPSubnetType>(network: S?, program: HostProgram) -> ForwardRulesStatus {
        guard program.path != nil else {
            return .unknown("\(program.rawValue) is not installed (apt-get install iptables), so the accepts cannot be in place")
        }
        do {
            let table = try read(program: program)
            let jumps = table.rules(of: "FORWARD").filter { $0 == listed("FORWARD", jump) }.count
            let chainRules = table.rules(of: chain)
            guard jumps > 0, table.chains.contains(chain) else { return .missing }
            if let network, chainRules != accepts(network: network).map({ listed(chain, $0) }) { return .missing }
            return .present(policy: table.forwardPolicy)
        } catch {
            return .unknown("\(error)")
        }
    }
}

public enum ForwardRulesStatus: Sendable, Equatable, CustomStringConvertible {
    case present(policy: String?)
    case missing
    case unknown(String)

    public var description: String {
        switch self {
        case .present(let policy):
            "on: iptables filter FORWARD jumps to \(ForwardRules.chain), which accepts the network both ways"
                + (policy.map { " (FORWARD policy \($0))" } ?? "")
        case .missing: "MISSING: the \(ForwardRules.chain) accepts are not in iptables' filter FORWARD (the daemon re-adds them within --iptables-resync)"
        case .unknown(let why): "unknown: \(why)"
        }
    }
}
