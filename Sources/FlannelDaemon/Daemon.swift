// Start-up and shutdown of the node agent (the stages themselves are in Startup.swift). SIGTERM and
// SIGINT stop the services and nothing else: the data path, the device, the routes and the lease
// stay, so a restart or upgrade does not disturb traffic and gets the same subnet back. Only
// `cleanup` removes what is ours.

import Dataplane
import Glibc
import Leases
import Logging
import NetTypes
import ServiceLifecycle
import Synchronization

public enum Daemon {
    /// Installs the stderr log handler once per process, at `level`, in `format` (LogOutput.swift).
    public static func bootstrapLogging(level: Logger.Level, format: LogFormat = .text) {
        LoggingBootstrap.once(level: level, style: .forStandardError(format: format))
    }

    static func makeLogger(_ level: Logger.Level) -> Logger {
        var logger = Logger(label: "flanneld-xdp")
        logger.logLevel = level
        return logger
    }

    public static func run(_ options: FlannelOptions, notifier: SystemdNotifier = .fromEnvironment()) async throws {
        bootstrapLogging(level: options.effectiveLogLevel, format: options.logging.logFormat)
        let logger = makeLogger(options.effectiveLogLevel)
        logger.info("flanneld-xdp \(FlannelDaemonVersion.string) starting")
        logFlagNotes(options, logger: logger)
        HeapTrim.configure()
        let readiness = Readiness()

        // The health server answers /healthz from the start and /readyz with the reasons while starting.
        var health: HealthServer?
        if options.serving.healthzPort != 0 {
            let server = HealthServer(host: options.serving.healthzIP.description, port: options.serving.healthzPort,
                                      readiness: readiness, logger: logger)
            try await server.start()
            health = server
        }
        // Start-up runs inside the group, so SIGTERM/SIGINT are handled from the first moment (a
        // stop while waiting for etcd ends start-up cleanly; one right after READY=1 is not lost).
        var services: [any Service] = [NodeAgentService(options: options, notifier: notifier, readiness: readiness, logger: logger)]
        if let health { services.insert(HealthServerRunning(server: health), at: 0) }
        // Last in the group, so the first to hear the signal: STOPPING=1 before anything stops.
        services.append(StoppingNotice(notifier: notifier, logger: logger))
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        do {
            try await group.run()
        } catch {
            await health?.stop()
            throw error
        }
        await health?.stop()
        logger.info("stopped; the data path, the routes and the lease are left in place (run `flanneld-xdp cleanup` to remove them)")
    }

    /// What the flags ask for that this build does differently from flanneld, said once at start.
    static func logFlagNotes(_ options: FlannelOptions, logger: Logger) {
        for note in StartupNotes.ignoredEnvironment.withLock({ $0 }) { logger.warning("\(note)") }
        if let level = options.klog.requestedLevel, level < options.logging.logLevel.level {
            logger.info("klog verbosity \(options.klog.effectiveVerbosity) (-v/-vmodule): logging at \(level)")
        }
        if !options.klog.vmodule.isEmpty {
            logger.notice("--vmodule=\(options.klog.vmodule): flanneld's per-file levels name Go files; its highest level applies to the whole log here")
        }
        if !options.klog.logBacktraceAt.isEmpty {
            logger.notice("--log_backtrace_at=\(options.klog.logBacktraceAt) is accepted for flanneld compatibility and has no effect (no Go files here)")
        }
        let kube = options.kube.ignoredSettings
        if !kube.isEmpty {
            logger.notice("\(kube.joined(separator: ", ")): read only by flanneld's Kubernetes subnet manager, which this build does not run; not used (as flanneld without --kube-subnet-mgr)")
        }
    }

    /// Everything up to READY=1; returns the services to run.
    static func start(_ options: FlannelOptions, notifier: SystemdNotifier, readiness: Readiness,
                      logger: Logger) async throws -> [any Service] {
        // 1. Interface and public IP. An IPv6-only network (known once the config is read) chooses
        //    by IPv6 addresses instead, so a node without IPv4 only fails there if the network needs IPv4.
        var external: ExternalInterface
        var ipv4Selection: (any Error)?
        do {
            external = try InterfaceSelection.selectFromSystem(options.interface)
            logger.info("using interface \(external.interface.name) (index \(external.interface.index), mtu \(external.interface.mtu)), local IP \(external.interfaceAddress), public IP \(external.publicIP), chosen by \(external.chosenBy)")
        } catch {
            ipv4Selection = error
            external = try InterfaceSelection.selectIPv6OnlyFromSystem(options.interface)
        }

        // 2. etcd and the network config (waits while etcd is away or the config is missing/bad) —
        //    or, when etcd does not answer within --etcd-start-timeout and the last known state holds
        //    a live lease of ours, that state (degraded until etcd confirms it: LastKnownState.swift).
        //    The plain-http warning is said once per run, here, not per (re)connection.
        if let warning = EtcdEndpoint.plainTextWarning(options.etcd.endpointList) {
            logger.warning("\(warning)")
        }
        var managerOptions = SubnetManagerOptions()
        managerOptions.servesIPv6Networks = true
        managerOptions.leaseTTL = .seconds(options.subnet.subnetLeaseTTL)
        managerOptions.renewMargin = .seconds(options.subnet.subnetLeaseRenewMargin * 60)
        if options.subnet.subnetLeaseTTL != SubnetOptions.defaultLeaseTTLSeconds {
            let margin = min(managerOptions.renewMargin, managerOptions.leaseTTL / 2)
            logger.notice("subnet lease TTL \(options.subnet.subnetLeaseTTL) s (--subnet-lease-ttl; flannel's is 24 h), renewed \(margin) before it ends")
        }
        let lastKnownPath = options.subnet.lastKnownState
        notifyStatus(notifier, "waiting for etcd at \(options.etcd.endpointList.joined(separator: ",")) (network config under \(options.etcd.prefix))", logger: logger)
        let source = try await Startup.bootSource(
            options.etcd, managerOptions: managerOptions,
            lastKnown: Startup.lastKnownForBoot(path: lastKnownPath, publicIP: external.publicIP, logger: logger),
            lastKnownPath: lastKnownPath, logger: logger)
        let manager: SubnetManager
        let config: NetworkConfig
        let etcdAPIDetail: String
        switch source {
        case .etcd(let contact):
            (manager, config) = (contact.manager, contact.config)
            etcdAPIDetail = contact.apiDetection.reason
        case .lastKnown(let saved):
            manager = try Startup.offlineManager(options.etcd, lastKnown: saved, managerOptions: managerOptions, logger: logger)
            config = saved.config
            etcdAPIDetail = options.etcd.api == .auto ? "the last known state's (\(saved.etcdAPI)), etcd not reached yet" : "given by --etcd-api"
        }
        let backend = try Startup.backendKind(config.backend)
        logger.info("network \(config.networksDescription), backend \(backend), etcd API \(manager.registry.apiVersion)")
        for warning in config.warnings { logger.warning("WARNING: \(warning)") }
        if let v6 = config.ipv6 {
            if case .udp = backend { throw StartupError.ipv6Unsupported(backend: config.backend.type) }
            if config.enableIPv4 {
                if let ipv4Selection { throw ipv4Selection }
                external = try InterfaceSelection.addingIPv6(to: external, publicIPv6: options.interface.publicIPv6)
            } else {
                external = try InterfaceSelection.selectIPv6OnlyFromSystem(options.interface)
            }
            logger.info("IPv6 (\(config.enableIPv4 ? "dual-stack" : "IPv6-only") network \(v6.network)): local IPv6 \(external.interfaceIPv6Address.map(String.init(describing:)) ?? "-"), public IPv6 \(external.publicIPv6.map(String.init(describing:)) ?? "-") on \(external.interface.name), chosen by \(external.chosenBy)")
        } else if let ipv4Selection {
            throw ipv4Selection
        }

        // 3. Data path preparation that the lease depends on (the VtepMAC).
        let mtu = Startup.overlayMTU(underlayMTU: external.interface.mtu, config: config, backend: backend)
        let previousBoth = Startup.previousSubnets(subnetFile: options.subnet.subnetFile, network: config.network,
                                                   ipv6Network: config.ipv6?.network, logger: logger)
        let previous = previousBoth.ipv4, previousIPv6 = previousBoth.ipv6
        let chosen = external
        let previousVTEPMAC: @Sendable () async -> MACAddress? = switch source {
        case .etcd: {
            try? await Startup.previousVTEPMAC(registry: manager.registry, publicIP: chosen.publicIP, previousSubnet: previous,
                                               previousIPv6Subnet: previousIPv6)
        }
        case .lastKnown(let saved): { saved.own.attributes.vtepMAC }
        }
        let previousIPv6VTEPMAC: @Sendable () async -> MACAddress? = switch source {
        case .etcd: {
            guard let publicIPv6 = chosen.publicIPv6, let previousIPv6 else { return nil }
            return try? await Startup.previousIPv6VTEPMAC(registry: manager.registry, publicIPv6: publicIPv6,
                                                          previousKey: LeaseKey(subnet: previous ?? config.network, ipv6Subnet: previousIPv6))
        }
        case .lastKnown(let saved): { saved.own.attributes.ipv6VtepMAC }
        }
        let composer = DataplaneComposer(Startup.dataplaneRequest(options, backend: backend, config: config, external: external),
                                         logger: logger)
        let prepared = try await composer.prepare(previousVTEPMAC: previousVTEPMAC, previousIPv6VTEPMAC: previousIPv6VTEPMAC)

        // 4. The lease; a previous subnet.env's subnet is preferred when it is free.
        // VXLAN leaves from the interface address; when the lease names another PublicIP (without
        // NAT in between) peers' source checks learn the real source from BackendData.SourceIP.
        let attributes = LeaseAttributes.forBackend(config.backend, publicIP: external.publicIP, vtepMAC: prepared.vtepMAC,
                                                    sourceIP: external.interfaceAddress,
                                                    publicIPv6: config.ipv6 == nil ? nil : external.publicIPv6,
                                                    ipv6VtepMAC: config.ipv6 == nil ? nil : prepared.ipv6VTEPMAC)
        let nodeAddress = config.enableIPv4 ? external.publicIP.description : external.publicIPv6.map(String.init(describing:)) ?? "-"
        let lease: Lease
        switch source {
        case .etcd:
            lease = try await Startup.acquireLease(manager, config: config, attributes: attributes,
                                                   previousSubnet: previous, previousIPv6Subnet: previousIPv6, logger: logger)
            readiness.set(.leaseConfirmed, ok: true)
            let same = previous == lease.subnet && previousIPv6 == lease.ipv6Subnet
            logger.info("lease \(lease.subnetsDescription) for \(nodeAddress)\(same ? " (same as before)" : "")")
        case .lastKnown(let saved):
            lease = saved.own
            readiness.set(.leaseConfirmed, ok: false,
                          detail: "degraded: started from the last known state \(lastKnownPath) saved at \(TimeText.utc(saved.savedAt)) because etcd did not answer; waiting for etcd to confirm \(lease.subnet)")
            if saved.own.attributes != attributes {
                logger.warning("the saved lease says \(saved.own.attributes) but this node now has \(attributes): peers reach us as the saved lease says until etcd is updated")
            }
            logger.info("lease \(lease.subnetsDescription) for \(nodeAddress) (last known state, not yet confirmed by etcd)")
        }

        // 5. Attach the data path for this subnet.
        let setup = try await composer.attach(prepared, subnet: lease.subnet, mtu: mtu, ipv6Subnet: config.ipv6 == nil ? nil : lease.ipv6Subnet)
        readiness.set(.dataplaneAttached, ok: true)
        logger.info("data path: \(setup.summary)")

        // 6. Fill the data path's tables (the maps) from the lease snapshot (or the saved peers);
        //    the kernel's per-peer state follows in the background, from the reconciler's loop.
        let policy = DesiredPeerPolicy(ownSubnet: lease.subnet, backend: backend, underlaySubnet: external.underlaySubnet)
        let reconciler = Reconciler(tables: setup.tables, logger: logger, onPass: readiness.follow,
                                    onProgress: readiness.followProgress)
        var events: PeerEventCursor?
        let snapshot: [Lease]
        switch source {
        case .etcd:
            let cursor = PeerEventCursor(manager.watchPeers(config: config))
            snapshot = try await Startup.firstSnapshot(cursor)
            events = cursor
        case .lastKnown(let saved):
            snapshot = saved.peers
        }
        let listed = ContinuousClock.now
        let (peers, skipped) = policy.peers(from: snapshot.map(RemoteLease.init))
        for skip in skipped { logger.info("lease \(skip.lease.subnet) ignored: \(skip.reason)") }
        await reconciler.setDesired(peers)
        let firstPass = await reconciler.reconcile(.full, stages: [.dataPath])
        if !firstPass.succeeded {
            logger.error("filling the data path's peer tables failed; not ready until a retry succeeds: \(firstPass)")
        } else if !firstPass.outcomes.isEmpty {
            // Entries written, of how many: after a restart with pinned maps, "+0 -0" unless leases changed.
            logger.info("data path tables filled \(ContinuousClock.now - listed) after the lease list (pass \(firstPass.duration)): \(firstPass)")
        }
        // The IPv6 halves, into their own tables (flannel-v6.<VNI>, the IPv6 maps), before the programs are enabled.
        var ipv6: IPv6PeerFollower?
        if config.ipv6 != nil, let ownIPv6 = lease.ipv6Subnet {
            let reconciler6 = IPv6Reconciler(tables: setup.ipv6Tables, logger: logger, threadName: "fxdp-reconcile6",
                                             onPass: readiness.followIPv6)
            let policy6 = DesiredIPv6PeerPolicy(ownSubnet: ownIPv6, backend: backend, underlaySubnet: external.underlayIPv6Subnet)
            let follower = IPv6PeerFollower(policy: policy6, reconciler: reconciler6, logger: logger)
            await follower.replace(snapshot)
            let firstPass6 = await reconciler6.reconcile()
            if !firstPass6.succeeded {
                logger.error("filling the IPv6 peer tables failed; not ready until a retry succeeds: \(firstPass6)")
            }
            ipv6 = follower
        }
        if let enable = setup.enableAfterFirstFill {
            do { try await enable() } catch { logger.error("enabling the BPF programs failed; the kernel vxlan path carries traffic: \(error)") }
        }
        let recorder = lastKnownPath.isEmpty ? nil
            : LastKnownRecorder(path: lastKnownPath, manager: manager, config: config, peers: snapshot, logger: logger)

        // State file for `status`, masquerade (--ip-masq), /metrics (--metrics-port): Operations/.
        let operations = try await OperationsServices.make(OperationsContext(
            options: options, external: external, config: config, backend: backend, lease: lease, manager: manager,
            dataplane: setup.path, dataplaneSummary: setup.summary, mtu: mtu, reconciler: reconciler, readiness: readiness,
            etcdAPIDetail: etcdAPIDetail, dataplaneMetrics: setup.metricsText, ipv6Reconciler: ipv6?.reconciler), logger: logger)

        // 7. subnet.env, then tell systemd, at flanneld's point: lease held, device and programs in
        //    place, before the kernel's per-peer state (a degraded node is up too: its pods can start
        //    and reach the peers it knew; /readyz and STATUS say degraded, or how far the peers are).
        let env = SubnetEnv(config: config, lease: lease, mtu: mtu, ipMasq: options.subnet.ipMasq)
        try env.write(to: options.subnet.subnetFile)
        readiness.set(.subnetFileWritten, ok: true)
        logger.info("wrote \(options.subnet.subnetFile): \(env.contents.split(separator: "\n").filter { $0.contains("SUBNET") || $0.contains("MTU") }.joined(separator: " "))")
        // The data path's kind; for the userspace path the whole summary, which says why BPF is not used.
        var identity = "subnet \(lease.subnetsDescription), data path \(setup.path.kind)"
        if case .userspace = setup.path { identity += " (\(setup.summary))" }
        let serviceManager = ServiceManagerLink(notifier: notifier, readiness: readiness, identity: identity, logger: logger)
        do {
            try serviceManager.ready(peers: peers.count)
        } catch {
            logger.error("\(error)")
        }
        // The last known state (O(peers) to write) is for a boot without etcd, not for pods: after READY.
        await recorder?.flush()

        // The watch continues where the snapshot left it (or, degraded, once etcd confirms our lease).
        // The reconciler's loop also pings systemd's watchdog and keeps STATUS= current.
        var services: [any Service] = [ReconcileService(reconciler: reconciler, interval: .seconds(options.dataplane.reconcileInterval),
                                                        heartbeat: Reconciler.Heartbeat(every: serviceManager.beatInterval,
                                                                                        beat: serviceManager.beat))]
        switch source {
        case .etcd:
            if let events {
                services.append(LeaseWatchService(events: events, policy: policy, reconciler: reconciler,
                                                  recorder: recorder, ipv6: ipv6, logger: logger))
            }
            services.append(LeaseRenewService(manager: manager, logger: logger))
        case .lastKnown(let saved):
            services.append(LeaseRejoinService(saved: saved, manager: manager, attributes: attributes, policy: policy,
                                               reconciler: reconciler, readiness: readiness, recorder: recorder, ipv6: ipv6, logger: logger))
        }
        if let ipv6 { services.append(ReconcileService(reconciler: ipv6.reconciler, interval: .seconds(options.dataplane.reconcileInterval))) }
        if let recorder { services.append(LastKnownRecorderService(recorder: recorder)) }
        services.append(HeapTrimService(logger: logger))
        return services + setup.services + operations
    }

    /// STATUS= during start-up; a failure to notify is logged, never fatal.
    static func notifyStatus(_ notifier: SystemdNotifier, _ text: String, logger: Logger) {
        do { try notifier.status(text) } catch { logger.error("\(error)") }
    }

    // MARK: cleanup

    /// Removes our BPF programs from every interface of this namespace (only programs named fxdp_*),
    /// our pins, and — unless `keepKernelPath` — the flannel.<VNI> vxlan devices (their addresses,
    /// routes, neighbours and fdb entries go with them).
    public static func cleanup(bpffs: String, keepKernelPath: Bool, logLevel: LogLevelChoice, logFormat: LogFormat = .text) async throws {
        bootstrapLogging(level: logLevel.level, format: logFormat)
        let logger = makeLogger(logLevel.level)
        // host-gw and DirectRouting routes live on the underlay and survive flannel.<VNI>: those
        // inside the flannel network named by subnet.env are removed too (the daemon's
        // --subnet-file, taken here from FLANNELD_SUBNET_FILE or flanneld's default path).
        // With --keep-kernel-path the same file tells the handover check our subnet from the peers'.
        let subnetFile = getenv("FLANNELD_SUBNET_FILE").map { String(cString: $0) } ?? "/run/flannel/subnet.env"
        let env = (try? SubnetEnv.read(from: subnetFile)) ?? nil
        if env == nil, !keepKernelPath {
            logger.info("no readable \(subnetFile): host-gw/DirectRouting routes on the underlay (if any) were not looked for")
        }
        let network = env.flatMap { $0.enableIPv4 ? $0.network : nil }
        let failures = DataplaneCleanup.run(bpffs: bpffs, keepKernelPath: keepKernelPath, network: network,
                                            ipv6Network: keepKernelPath ? nil : env?.ipv6Network, ownSubnet: env?.subnet, logger: logger)
        if !failures.isEmpty { throw CleanupError(failures: failures) }
    }
}

public struct CleanupError: Error, CustomStringConvertible {
    public var failures: [String]
    public var description: String { "cleanup incomplete: " + failures.joined(separator: "; ") }
}

/// Start-up, then the daemon's long-running services as a nested group (it follows the outer
/// group's graceful shutdown).
struct NodeAgentService: Service {
    let options: FlannelOptions
    let notifier: SystemdNotifier
    let readiness: Readiness
    let logger: Logger

    func run() async throws {
        let services: [any Service]
        // While start-up waits for etcd, each failed attempt tells systemd why and that it is still
        // trying (EXTEND_TIMEOUT_USEC: the next attempt plus a minute), so TimeoutStartSec does not
        // kill a node that is only waiting for its etcd to come back.
        let report: @Sendable (String, Duration) -> Void = { [notifier, logger] what, delay in
            do { try notifier.extendTimeout(delay + .seconds(60), status: "waiting: \(what)") } catch { logger.error("\(error)") }
        }
        do {
            services = try await StartupWait.reporting(report) {
                try await cancelWhenGracefulShutdown { [options, notifier, readiness, logger] in
                    try await Daemon.start(options, notifier: notifier, readiness: readiness, logger: logger)
                }
            }
        } catch is CancellationError {
            logger.info("stop requested during start-up")
            return
        }
        // Start-up's O(peers) transients (list response, first full pass, saved state, the
        // snapshot) are all freed now: give their pages back (Dataplane/HeapTrim.swift) instead of carrying the peak.
        if let (before, after) = HeapTrim.trimIfWorthIt() {
            logger.debug("heap trimmed after start-up: \(before) → resident anonymous \(after.residentAnonymous >> 10) KiB")
        }
        // And the code only start-up ran.
        HeapTrim.releaseExecutablePages()
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) },
            logger: logger))
        try await group.run()
    }
}

/// Sends STOPPING=1 when the graceful shutdown begins (SIGTERM/SIGINT), so `systemctl status`
/// shows "deactivating" with the reason while the services stop.
struct StoppingNotice: Service {
    let notifier: SystemdNotifier
    let logger: Logger
    func run() async throws {
        try? await gracefulShutdown()
        do { try notifier.send("STOPPING=1\nSTATUS=stopping: the data path, the routes and the lease stay in place") } catch { logger.error("\(error)") }
    }
}

/// The health server, already listening since start-up, as a service that stops on shutdown.
struct HealthServerRunning: Service {
    let server: HealthServer
    func run() async throws {
        try? await gracefulShutdown()
        await server.stop()
    }
}

/// LoggingSystem.bootstrap may run only once per process.
enum LoggingBootstrap {
    private static let done = Atomic<Bool>(false)

    static func once(level: Logger.Level, style: LogOutputStyle) {
        guard done.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        LoggingSystem.bootstrap { label in
            DaemonLogHandler(label: label, level: level, style: style)
        }
    }
}
