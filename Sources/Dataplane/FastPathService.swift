// The fast path's upkeep while the daemon runs (BPF data path with --fast-path): every second a
// FastPathSync pass attaches the encap program to the pods' veths and keeps the table of pods
// current (pods come and go with the CNI plugin; a pod not in the table yet only means its packets
// take the kernel path), and the conntrack setting the fast path relies on for TCP is
// followed into the programs' config (an administrator may turn it off; TCP then stays on the
// kernel path, UDP keeps the fast path). Failures are logged per class, at most once a minute, and
// the next pass starts over. Each pass calls into the kernel (netlink dumps, attachments, map
// writes): it runs on the data path's own thread.

import BPFDataplane
import Logging
import NetTypes
import RuntimeSupport
import ServiceLifecycle

struct FastPathService: Service, @unchecked Sendable {
    // @unchecked: FastPathSync is used by this service's passes only, one at a time.
    let sync: FastPathSync
    let interval: Duration
    let thread: DedicatedThreadExecutor
    let logger: Logger
    private let errorLog = RateLimitedLog(window: .seconds(60))

    init(sync: FastPathSync, interval: Duration = .seconds(1), thread: DedicatedThreadExecutor, logger: Logger) {
        self.sync = sync
        self.interval = interval
        self.thread = thread
        self.logger = logger
    }

    func run() async throws {
        // The whole loop prefers the data path's thread: every pass runs there, never on the shared pool.
        await withTaskExecutorPreference(thread) { await passes() }
    }

    private func passes() async {
        var tcpLiberal = FastPathSettings.tcpLiberal(logger: logger)
        var bridges: [Int32: String] = [:]
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let liberal = ConntrackTCPLiberal.current() == true
            if liberal != tcpLiberal {
                if liberal {
                    logger.notice("net.netfilter.nf_conntrack_tcp_be_liberal is 1 again: TCP takes the fast path")
                } else {
                    logger.warning("net.netfilter.nf_conntrack_tcp_be_liberal is no longer 1: TCP stays on the kernel path (UDP keeps the fast path); set it to 1 again, or run with --fast-path=false")
                }
                tcpLiberal = liberal
            }
            passOnce(tcpLiberal: tcpLiberal, bridges: &bridges)
            try? await Task.sleep(for: interval)
        }
    }

    func passOnce(tcpLiberal: Bool, bridges: inout [Int32: String]) {
        do {
            if try sync.bpf.setFastPath(true, conntrackTCPLiberal: tcpLiberal) {
                logger.info("fast path on (\(tcpLiberal ? "TCP and UDP" : "UDP only"))")
            }
            let pass = try sync.syncOnce()
            errorLog.reset("pass")
            if pass.bridges != bridges {
                logger.info("fast path: pod bridge(s) of \(sync.podSubnet): \(pass.bridges.values.sorted().joined(separator: ", "))")
                bridges = pass.bridges
            }
            for name in pass.attached { logger.debug("fast path: encap attached to \(name)") }
            for name in pass.detached { logger.debug("fast path: encap detached from \(name)") }
            for (name, error) in pass.failed.sorted(by: { $0.key < $1.key }) {
                errorLog.log(logger, level: .warning, key: "attach",
                             "fast path: cannot attach to \(name) (\(error)); that pod's packets take the kernel path")
            }
            if pass.podsAdded + pass.podsRemoved > 0 {
                logger.debug("fast path: \(pass.pods) pod(s) (+\(pass.podsAdded) -\(pass.podsRemoved))")
            }
        } catch {
            errorLog.log(logger, level: .error, key: "pass",
                         "fast path upkeep failed: \(error); packets take the kernel path where the fast path's tables are behind")
        }
    }
}

/// The start-up side of --fast-path (the BPF data path only).
enum FastPathSettings {
    /// Makes conntrack liberal about TCP windows in this namespace (the fast path's TCP rests on
    /// it; docs/BPF-DATAPATH.md) and says so; returns whether it is.
    static func tcpLiberal(logger: Logger) -> Bool {
        switch ConntrackTCPLiberal.current() {
        case true?:
            return true
        case false?:
            do {
                try ConntrackTCPLiberal.enable()
                logger.notice("set net.netfilter.nf_conntrack_tcp_be_liberal=1 (--fast-path): packets that skip the stack keep conntrack's TCP window tracking from calling their flow's later packets INVALID")
                return true
            } catch {
                logger.warning("\(error): TCP stays on the kernel path; UDP takes the fast path")
                return false
            }
        case nil:
            logger.notice("no connection tracking in this network namespace yet: the fast path starts when something uses it (kube-proxy, --ip-masq, a stateful firewall)")
            return false
        }
    }

    /// With --fast-path=false: what an earlier run with it left goes (the encap from every
    /// interface, the pods' table) and the flag is cleared; the sysctl is left as it is.
    static func removeLeftovers(_ bpf: FlannelBPF, logger: Logger) {
        do {
            let hooked = try FlannelBPF.fastEncapInterfaces()
            try bpf.setFastPath(false, conntrackTCPLiberal: false)
            try FastPathSync.removeAll(bpf: bpf)
            if !hooked.isEmpty {
                logger.info("--fast-path=false: fast path encap removed from \(hooked.map(\.name).joined(separator: ", "))")
            }
        } catch {
            logger.error("--fast-path=false: removing the fast path an earlier run left failed: \(error)")
        }
    }
}
