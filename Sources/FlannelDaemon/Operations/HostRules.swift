// The host rules flanneld keeps besides the overlay, set up once before subnet.env and READY=1 and
// then re-checked every --iptables-resync seconds (flannel's resync loop), each reconciled on its
// own so one failing does not hold the others back:
// - the masquerade table (--ip-masq, Masquerade.swift): failing to set it up at start stops the
//   daemon, as in flannel (pods would leak their addresses to the outside);
// - the FORWARD accepts (--iptables-forward-rules, on by default; ForwardRules.swift): a failure is
//   logged and retried, as flannel does, and `status` shows them missing;
// - the blackhole route for our subnet (--ip-blackhole-route, Dataplane/BlackholeRoute.swift).
// On shutdown all of them stay, like the data path (pods keep working across a restart); `cleanup`
// removes them.

import Dataplane
import Logging
import NetTypes
import ServiceLifecycle

public struct HostRulesPlan: Sendable, Equatable {
    public var network: IPv4Subnet
    public var subnet: IPv4Subnet
    public var masquerade: Bool
    public var fullyRandom: Bool
    public var forwardRules: Bool
    public var blackholeRoute: Bool
    public var interval: Duration
    /// false in an IPv6-only network: no IPv4 rules.
    public var ipv4 = true
    /// The IPv6 network and our IPv6 subnet in a dual-stack or IPv6-only network: the masquerade
    /// table `ip6 flanneld-xdp` and the ip6tables FORWARD accepts, as flannel makes them for IPv6.
    public var ipv6Network: IPv6Subnet?
    public var ipv6Subnet: IPv6Subnet?

    public init(network: IPv4Subnet, subnet: IPv4Subnet, options: FlannelOptions) {
        self.network = network
        self.subnet = subnet
        masquerade = options.subnet.ipMasq
        fullyRandom = !options.hostRules.ipMasqFullyRandomDisable
        forwardRules = options.hostRules.iptablesForwardRules
        blackholeRoute = options.hostRules.ipBlackholeRoute
        interval = .seconds(options.hostRules.iptablesResync)
    }

    public var isEmpty: Bool { !masquerade && !forwardRules && !blackholeRoute }

    /// The masquerade tables of the families the network runs.
    var masqueradeRules: [Masquerade.Rules] {
        var rules: [Masquerade.Rules] = []
        if ipv4 { rules.append(.ipv4(network: network, subnet: subnet, fullyRandom: fullyRandom)) }
        if let ipv6Network, let ipv6Subnet { rules.append(.ipv6(network: ipv6Network, subnet: ipv6Subnet, fullyRandom: fullyRandom)) }
        return rules
    }

    /// The FORWARD accepts of the families the network runs: the network, and what puts them in place.
    var forwardAccepts: [(network: String, ensure: @Sendable () throws -> [String])] {
        var accepts: [(network: String, ensure: @Sendable () throws -> [String])] = []
        if ipv4 { accepts.append((network.description, { [network] in try ForwardRules.ensure(network: network) })) }
        if let ipv6Network { accepts.append((ipv6Network.description, { try ForwardRules.ensure(ipv6Network: ipv6Network) })) }
        return accepts
    }
}

public enum HostRules {
    /// The start-up pass. Throws only for the masquerade table (see the file's note).
    public static func setUp(_ plan: HostRulesPlan, logger: Logger) throws {
        if plan.masquerade {
            for rules in plan.masqueradeRules {
                try Masquerade.ensure(rules)
                logger.info("masquerade: nftables \(rules.tableDescription) installed for \(rules.network) (own subnet \(rules.subnet)\(plan.fullyRandom ? "" : ", without fully-random"))")
            }
        }
        if plan.forwardRules {
            for (network, ensure) in plan.forwardAccepts {
                do {
                    try ensure()
                    logger.info("FORWARD: filter FORWARD accepts \(network) both ways (chain \(ForwardRules.chain); --iptables-forward-rules=false leaves FORWARD alone)")
                } catch {
                    logger.error("FORWARD accepts for \(network) could not be set (retried every \(plan.interval)); where FORWARD's policy is DROP (Docker), traffic between this node's pods and the overlay is dropped until they are: \(error)")
                }
            }
        }
        if plan.blackholeRoute, plan.ipv4 { logBlackhole(plan, logger: logger, wasHeld: nil) }
    }

    /// Logs the blackhole outcome; returns whether another route holds the subnet (to say it once).
    @discardableResult
    static func logBlackhole(_ plan: HostRulesPlan, logger: Logger, wasHeld: Bool?) -> Bool? {
        do {
            switch try BlackholeRoute.ensure(subnet: plan.subnet) {
            case .present:
                return false
            case .added:
                logger.info("blackhole route for \(plan.subnet) added (--ip-blackhole-route)")
                return false
            case .heldByAnotherRoute(let holder):
                if wasHeld != true {
                    logger.info("blackhole route for \(plan.subnet) not added: \(holder) holds the prefix (a bridge); it is added once that route is gone")
                }
                return true
            }
        } catch {
            logger.error("blackhole route for \(plan.subnet): \(error) (retried every \(plan.interval))")
            return nil
        }
    }
}

/// Re-checks the host rules every --iptables-resync seconds and puts back what was removed or edited.
public struct HostRulesService: Service {
    public let plan: HostRulesPlan
    public let logger: Logger

    public func run() async throws {
        var masqueradeFailing = false
        var forwardFailing = false
        var blackholeHeld: Bool?
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            // Woken early by graceful shutdown; the rules stay (see HostRules.swift).
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: plan.interval) }
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            if plan.masquerade {
                check("masquerade", failing: &masqueradeFailing) {
                    let repaired = try plan.masqueradeRules.filter { try Masquerade.ensure($0) }
                    return repaired.isEmpty ? nil : repaired.map { "masquerade \($0.tableDescription) was missing or changed: recreated" }.joined(separator: "; ")
                }
            }
            if plan.forwardRules {
                check("FORWARD accepts", failing: &forwardFailing) {
                    let changes = try plan.forwardAccepts.flatMap { try $0.ensure() }
                    return changes.isEmpty ? nil : "FORWARD accepts were missing or changed: \(changes.joined(separator: "; "))"
                }
            }
            if plan.blackholeRoute, plan.ipv4 {
                blackholeHeld = HostRules.logBlackhole(plan, logger: logger, wasHeld: blackholeHeld)
            }
        }
    }

    /// One check: `body` returns what it repaired (logged as a warning) or nil. A failure is logged
    /// once until the check recovers, and the recovery once.
    private func check(_ what: String, failing: inout Bool, _ body: () throws -> String?) {
        do {
            if let repaired = try body() { logger.warning("\(repaired)") }
            if failing { logger.info("\(what) check recovered") }
            failing = false
        } catch {
            if !failing { logger.error("\(what) check failed (will retry every \(plan.interval)): \(error)") }
            failing = true
        }
    }
}
