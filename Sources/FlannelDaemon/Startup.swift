// Design note: the start-up stages, each a function that either returns what the next stage needs
// or throws an error that says what to do. Stages that depend on something outside this node
// (etcd reachable, a valid network config, a free subnet) wait and retry with capped backoff and a
// rate-limited log line, as flanneld does; stages that depend on this node's own state (no such
// interface, BPF refused when --dataplane=xdp|tc was asked for) fail at once.
//
//   interface → etcd registry → network config → data path preparation (BPF load, flannel.<VNI>
//   and its VtepMAC) → lease (previous subnet.env considered) → data path attached → peer tables
//   filled from the lease snapshot → subnet.env → READY=1 → services

import Dataplane
import Glibc
import Leases
import Logging
import NetTypes
import RuntimeSupport
import Synchronization

public enum StartupError: Error, CustomStringConvertible {
    case unsupportedBackend(String)
    case ipv6Unsupported(backend: String)
    case watchEnded

    public var description: String {
        switch self {
        case .unsupportedBackend(let type):
            "network config: Backend.Type \"\(type)\" is not supported by flanneld-xdp: use vxlan, host-gw or udp"
        case .ipv6Unsupported(let type):
            "network config: EnableIPv6 with Backend.Type \"\(type)\": flannel's \(type) backend carries IPv4 only; use vxlan or host-gw, or remove EnableIPv6"
        case .watchEnded:
            "the lease watch ended unexpectedly; exiting so that a restart opens a new one"
        }
    }
}

/// Retries `body` until it succeeds, with backoff from `initial` doubling to `maximum`; logs the
/// first failure and then at most one line per `logWindow` per kind of error. Ends early only on
/// cancellation or when `isFatal` says so.
func retrying<T: Sendable>(
    _ what: String, logger: Logger, initial: Duration = .seconds(1), maximum: Duration = .seconds(10),
    logWindow: Duration = .seconds(60), isFatal: (any Error) -> Bool = { _ in false },
    _ body: () async throws -> T
) async throws -> T {
    let log = RateLimitedLog(window: logWindow)
    var delay = initial
    var attempt = 0
    while true {
        attempt += 1
        do {
            let value = try await body()
            if attempt > 1 { logger.info("\(what): succeeded after \(attempt) attempts") }
            return value
        } catch {
            if error is CancellationError || isFatal(error) { throw error }
            log.log(logger, level: .error, key: String(describing: type(of: error)),
                    "\(what) failed: \(error); retrying (every \(delay) at most)")
            StartupWait.report?("\(what) failed (attempt \(attempt)): \(error)", delay)
            try await Task.sleep(for: delay)
            delay = min(delay * 2, maximum)
        }
    }
}

/// Who hears that start-up is waiting: the daemon tells systemd (STATUS= and EXTEND_TIMEOUT_USEC,
/// so a start that waits for etcd is not killed at TimeoutStartSec while it keeps trying). One
/// hook for the process (one daemon per process), so the retry loops need no parameter threaded
/// through every stage; nil outside the daemon's start-up. Not a task local: `withValue` around
/// the start-up crashed release builds (Swift 6.3, swift_task_localValuePush on a bad pointer).
enum StartupWait {
    private static let hook = Mutex<(@Sendable (String, Duration) -> Void)?>(nil)

    /// (what failed and why, the delay before the next attempt).
    static var report: (@Sendable (String, Duration) -> Void)? { hook.withLock { $0 } }

    /// Runs `body` with `report` installed, and removes it afterwards.
    static func reporting<T>(_ report: @escaping @Sendable (String, Duration) -> Void, _ body: () async throws -> T) async rethrows -> T {
        hook.withLock { $0 = report }
        defer { hook.withLock { $0 = nil } }
        return try await body()
    }
}

public enum Startup {
    /// EtcdClientOptions from the flags.
    public static func etcdClientOptions(_ etcd: EtcdOptions) -> EtcdClientOptions {
        var options = EtcdClientOptions(endpoints: etcd.endpointList, prefix: etcd.prefix,
                                        apiVersion: EtcdAPIVersion(rawValue: etcd.api.rawValue) ?? .auto)
        options.caFile = etcd.caFile.isEmpty ? nil : etcd.caFile
        options.certFile = etcd.certFile.isEmpty ? nil : etcd.certFile
        options.keyFile = etcd.keyFile.isEmpty ? nil : etcd.keyFile
        options.username = etcd.username.isEmpty ? nil : etcd.username
        options.password = etcd.password.isEmpty ? nil : etcd.password
        return options
    }

    /// The registry for --etcd-api; `auto` finds the config in v3 or v2 and waits until it exists.
    public static func connectRegistry(_ etcd: EtcdOptions, logger: Logger,
                                       retryInitial: Duration = .seconds(1)) async throws -> any SubnetRegistry {
        try await connectRegistryDetecting(etcd, logger: logger, retryInitial: retryInitial).registry
    }

    /// `connectRegistry`, plus which keyspace --etcd-api auto chose and why (for `status`).
    public static func connectRegistryDetecting(_ etcd: EtcdOptions, logger: Logger, retryInitial: Duration = .seconds(1)) async throws
        -> (registry: any SubnetRegistry, detection: EtcdAPIDetection) {
        let options = etcdClientOptions(etcd)
        if options.apiVersion != .auto {
            return (try EtcdRegistryFactory.make(api: options.apiVersion, options: options),
                    EtcdAPIDetection(api: options.apiVersion, reason: "given by --etcd-api"))
        }
        // A TLS file that cannot be loaded, credentials etcd rejects or a config in both keyspaces
        // are configuration errors, not an outage: fail at once.
        return try await retrying("finding the network config in etcd (\(etcd.endpoints), prefix \(etcd.prefix))",
                                  logger: logger, initial: retryInitial, isFatal: isConfigurationError) {
            try await EtcdRegistryFactory.detect(options: options, logger: logger)
        }
    }

    /// etcd errors that no amount of waiting fixes: the daemon exits with the message instead of
    /// retrying. Permission errors are retried: an administrator can grant the role while the node
    /// waits.
    static func isConfigurationError(_ error: any Error) -> Bool {
        switch error {
        case EtcdClientError.tlsSetup, EtcdClientError.credentialsRejected, is EtcdAPIAmbiguity: true
        default: false
        }
    }

    /// flanneld's backend types as the reconciler sees them.
    public static func backendKind(_ backend: BackendConfig) throws(StartupError) -> BackendKind {
        switch backend.type {
        case "vxlan": .vxlan(directRouting: backend.directRouting)
        case "host-gw": .hostGW
        case "udp": .udp
        default: throw .unsupportedBackend(backend.type)
        }
    }

    /// Reads `<prefix>/config` until it exists and is valid; a bad one is logged with the field and
    /// reason and re-read (an operator fixes it without restarting every node).
    public static func readConfig(_ manager: SubnetManager, logger: Logger,
                                  retryInitial: Duration = .seconds(1)) async throws -> (NetworkConfig, BackendKind) {
        try await retrying("reading the network config", logger: logger, initial: retryInitial, isFatal: isConfigurationError) {
            let config = try await manager.getConfig()
            return (config, try backendKind(config.backend))
        }
    }

    /// The overlay MTU: the underlay MTU minus the encapsulation. For vxlan the underlay MTU is the
    /// config's Backend.MTU when set (flannel's meaning), else the interface's.
    public static func overlayMTU(underlayMTU: Int, config: NetworkConfig, backend: BackendKind) -> Int {
        switch backend {
        case .vxlan: return (config.backend.mtu > 0 ? config.backend.mtu : underlayMTU) - 50
        case .udp: return underlayMTU - 28
        case .hostGW: return underlayMTU
        }
    }

    /// The subnet of the previous subnet.env, when it belongs to this network (flannel's step 2).
    public static func previousSubnet(subnetFile: String, network: IPv4Subnet, logger: Logger) -> IPv4Subnet? {
        previousSubnets(subnetFile: subnetFile, network: network, ipv6Network: nil, logger: logger).ipv4
    }

    /// Both subnets of the previous subnet.env, each when it belongs to its network (flannel's
    /// step 2, per family: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET).
    public static func previousSubnets(subnetFile: String, network: IPv4Subnet, ipv6Network: IPv6Subnet?,
                                       logger: Logger) -> (ipv4: IPv4Subnet?, ipv6: IPv6Subnet?) {
        let previous: SubnetEnv
        do {
            guard let read = try SubnetEnv.read(from: subnetFile) else { return (nil, nil) }
            previous = read
        } catch {
            logger.warning("ignoring unreadable previous \(subnetFile): \(error)")
            return (nil, nil)
        }
        var ipv4: IPv4Subnet?
        if network.contains(previous.subnet) {
            ipv4 = previous.subnet
        } else {
            logger.info("previous \(subnetFile) names \(previous.subnet), outside \(network): not reusing it")
        }
        var ipv6: IPv6Subnet?
        if let ipv6Network, let subnet = previous.ipv6Subnet {
            if ipv6Network.contains(subnet) {
                ipv6 = subnet
            } else {
                logger.info("previous \(subnetFile) names \(subnet), outside \(ipv6Network): not reusing it")
            }
        }
        return (ipv4, ipv6)
    }

    /// Acquires (or re-takes) the lease, retrying etcd errors and lost races.
    public static func acquireLease(_ manager: SubnetManager, config: NetworkConfig, attributes: LeaseAttributes,
                                    previousSubnet: IPv4Subnet?, previousIPv6Subnet: IPv6Subnet? = nil, logger: Logger,
                                    retryInitial: Duration = .seconds(1)) async throws -> Lease {
        try await retrying("acquiring a subnet lease", logger: logger, initial: retryInitial) {
            try await manager.acquireLease(config: config, attributes: attributes, previousSubnet: previousSubnet,
                                           previousIPv6Subnet: previousIPv6Subnet)
        }
    }

    /// What the data path is asked for: the flags' part and the network config's.
    public static func dataplaneRequest(_ options: FlannelOptions, backend: BackendKind, config: NetworkConfig,
                                        external: ExternalInterface) -> DataplaneRequest {
        DataplaneRequest(choice: options.dataplane.dataplane, bpffs: options.dataplane.bpffs, bpfObject: options.dataplane.bpfObject,
                         innerSourceCheck: options.dataplane.innerSourceCheck, fastPath: options.dataplane.fastPath,
                         backend: backend, vni: config.backend.vni, port: config.backend.port, learning: config.backend.learning,
                         gbp: config.backend.gbp, network: config.network, underlay: external,
                         ipv6Network: config.ipv6?.network, enableIPv4: config.enableIPv4)
    }

    /// The VtepMAC of the vxlan lease that carries our PublicIP, if there is one: first at the key of
    /// the previous subnet.env's subnet (one read), else among every lease (a listing, ~20 MB from
    /// etcd at 50 000 peers, which acquiring the lease reads again right after).
    public static func previousVTEPMAC(registry: any SubnetRegistry, publicIP: IPv4Address,
                                       previousSubnet: IPv4Subnet? = nil, previousIPv6Subnet: IPv6Subnet? = nil) async throws -> MACAddress? {
        func ours(_ value: [UInt8]) -> MACAddress? {
            guard case .success(let attributes) = LeaseDecoder.parseAttributes(value),
                  attributes.publicIP == publicIP, attributes.backendType == "vxlan" else { return nil }
            return attributes.vtepMAC
        }
        if let previousSubnet, let record = try await registry.getLease(name: LeaseKey(subnet: previousSubnet, ipv6Subnet: previousIPv6Subnet).description),
           let mac = ours(record.value) {
            return mac
        }
        return try await registry.reduceLeases(into: nil as MACAddress?) { found, record in
            if found == nil { found = ours(record.value) }
        }.result
    }

    /// The BackendV6Data.VtepMAC of the vxlan lease that carries our PublicIPv6, if there is one:
    /// first at the previous subnet.env's key (one read), else among every lease.
    public static func previousIPv6VTEPMAC(registry: any SubnetRegistry, publicIPv6: IPv6Address,
                                           previousKey: LeaseKey? = nil) async throws -> MACAddress? {
        func ours(_ value: [UInt8]) -> MACAddress? {
            guard case .success(let attributes) = LeaseDecoder.parseAttributes(value),
                  attributes.publicIPv6 == publicIPv6, attributes.backendType == "vxlan" else { return nil }
            return attributes.ipv6VtepMAC
        }
        if let previousKey, let record = try await registry.getLease(name: previousKey.description), let mac = ours(record.value) {
            return mac
        }
        return try await registry.reduceLeases(into: nil as MACAddress?) { found, record in
            if found == nil { found = ours(record.value) }
        }.result
    }

    /// Waits for the watch's first event, the snapshot of every peer lease.
    public static func firstSnapshot(_ events: PeerEventCursor) async throws -> [Lease] {
        while let event = await events.next() {
            if case .snapshot(let leases) = event { return leases }
        }
        try Task.checkCancellation()
        throw StartupError.watchEnded
    }
}

extension RemoteLease {
    /// The reconciler's view of a Leases lease.
    public init(_ lease: Lease) {
        self.init(subnet: lease.subnet, publicIP: lease.attributes.publicIP,
                  backendType: lease.attributes.backendType, vtepMAC: lease.attributes.vtepMAC,
                  sourceIP: lease.attributes.sourceIP, ipv6Subnet: lease.ipv6Subnet, publicIPv6: lease.attributes.publicIPv6,
                  ipv6VtepMAC: lease.attributes.ipv6VtepMAC)
    }
}
