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
}

public enum HostRules {
    /// The start-up pass. Throws only for the masquerade table (see the file's note).
    public static func setUp(_ plan: HostRulesPlan, logger: Logger) throws {
        if plan.masquerade {
            try Masquerade.ensure(network: plan.network, subnet: plan.subnet, fullyRandom: plan.fullyRandom)
            logger.info("masquerade: nftables table ip \(Masquerade.tableName) installed for \(plan.network) (own subnet \(plan.subnet)\(plan.fullyRandom ? "" : ", without fully-random"))")
        }
        if plan.forwardRules {
            do {
                try ForwardRules.ensure(network: plan.network)
                logger.info("FORWARD: iptables filter FORWARD accepts \(plan.network) both ways (chain \(ForwardRules.chain); --iptables-forward-rules=false leaves FORWARD alone)")
            } catch {
                logger.error("FORWARD accepts for \(plan.network) could not be set (retried every \(plan.interval)); where FORWARD's policy is DROP (Docker), traffic between this node's pods and the overlay is dropped until they are: \(error)")
            }
        }
        if plan.blackholeRoute { logBlackhole(plan, logger: logger, wasHeld: nil) }
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
                    try Masquerade.ensure(network: plan.network, subnet: plan.subnet, fullyRandom: plan.fullyRandom)
                        ? "masquerade table ip \(Masquerade.tableName) was missing or changed: recreated" : nil
                }
            }
            if plan.forwardRules {
                check("FORWARD accepts", failing: &forwardFailing) {
                    let changes = try ForwardRules.ensure(network: plan.network)
                    return changes.isEmpty ? nil : "FORWARD accepts were missing or changed: \(changes.joined(separator: "; "))"
                }
            }
            if plan.blackholeRoute {
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
