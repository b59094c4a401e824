// Builds the registry the flags ask for. `.auto` looks for `<prefix>/config` in both keyspaces (etcd
// 3.4+ serves v2 only with --enable-v2=true) and says plainly when it is in neither.
//
// When both keyspaces hold a config (an administrator tried both `etcdctl set` and `etcdctl put`),
// picking one blindly can split the cluster: flannel ≤ 0.17 nodes live in v2, newer ones in v3, and
// the two keyspaces never see each other's leases. So auto follows the keyspace that holds live
// leases when exactly one does (and says why in the log and in `status`), and refuses to start,
// naming both keys and --etcd-api, when both or neither do.

import Logging
import NIOCore
import NIOPosix

/// Which keyspace `--etcd-api auto` settled on, and why (for the log and `status`).
public struct EtcdAPIDetection: Sendable, Equatable {
    public var api: EtcdAPIVersion
    public var reason: String

    public init(api: EtcdAPIVersion, reason: String) {
        self.api = api
        self.reason = reason
    }
}

/// Both keyspaces hold `<prefix>/config` and their leases do not tell which one the cluster uses.
public struct EtcdAPIAmbiguity: Error, Sendable, Equatable, CustomStringConvertible {
    public var configKey: String
    public var v2Leases: Int
    public var v3Leases: Int

    public var description: String {
        let leases = v2Leases == 0 && v3Leases == 0 ? "and neither holds a lease yet"
            : "and both hold leases (v2: \(v2Leases), v3: \(v3Leases)): the cluster is already split between them"
        return "--etcd-api auto: \(configKey) exists in both the etcd v2 and the v3 keyspace \(leases). flannel ≤ 0.17 "
            + "nodes use v2, flannel ≥ 0.18 nodes v3, and the two never see each other's leases. Pass --etcd-api=v2 "
            + "or --etcd-api=v3 (the keyspace your other nodes use), or delete the config you do not use "
            + "(`ETCDCTL_API=2 etcdctl rm \(configKey)` or `ETCDCTL_API=3 etcdctl del \(configKey)`)"
    }
}

public enum EtcdRegistryFactory {
    /// A registry for `options.apiVersion`. For `.auto` this contacts etcd; a missing config throws
    /// `RegistryError.configNotFound` (the daemon waits and retries, as flannel does).
    public static func make(options: EtcdClientOptions, counters: LeaseCounters = LeaseCounters(),
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                            logger: Logger = Logger(label: "flanneld-xdp.etcd")) async throws -> any SubnetRegistry {
        try await detect(options: options, counters: counters, group: group, logger: logger).registry
    }

    /// `make`, plus how `.auto` chose (for a fixed --etcd-api: "given by --etcd-api").
    public static func detect(options: EtcdClientOptions, counters: LeaseCounters = LeaseCounters(),
                              group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                              logger: Logger = Logger(label: "flanneld-xdp.etcd")) async throws
        -> (registry: any SubnetRegistry, detection: EtcdAPIDetection) {
        let client = try EtcdHTTPClient(options: options, group: group, counters: counters)
        let v2 = EtcdV2Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        let v3 = EtcdV3Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        switch options.apiVersion {
        case .v2: return (v2, EtcdAPIDetection(api: .v2, reason: "given by --etcd-api"))
        case .v3: return (v3, EtcdAPIDetection(api: .v3, reason: "given by --etcd-api"))
        case .auto: break
        }
        // Connection errors propagate (the caller retries); an answer that the keyspace cannot be
        // read (v2 not served, no permission) counts as "no config there" and is said.
        let inV3 = try await configPresence(v3)
        let inV2 = try await configPresence(v2)
        switch (inV3, inV2) {
        case (.present, .present):
            let v3Leases = try await v3.reduceLeases(into: 0) { count, _ in count += 1 }.result
            let v2Leases = try await v2.reduceLeases(into: 0) { count, _ in count += 1 }.result
            if v2Leases > 0 && v3Leases == 0 {
                let detection = EtcdAPIDetection(api: .v2, reason: "auto: \(v2.configKey) is in both keyspaces; following v2, "
                    + "which holds \(v2Leases) lease(s) while v3 holds none (--etcd-api=v2 says so explicitly)")
                logger.warning("etcd API: \(detection.reason)")
                return (v2, detection)
            }
            if v3Leases > 0 && v2Leases == 0 {
                let detection = EtcdAPIDetection(api: .v3, reason: "auto: \(v3.configKey) is in both keyspaces; following v3, "
                    + "which holds \(v3Leases) lease(s) while v2 holds none (--etcd-api=v3 says so explicitly)")
                logger.warning("etcd API: \(detection.reason)")
                return (v3, detection)
            }
            throw EtcdAPIAmbiguity(configKey: v3.configKey, v2Leases: v2Leases, v3Leases: v3Leases)
        case (.present, let other):
            let detection = EtcdAPIDetection(api: .v3, reason: "auto: \(v3.configKey) found in v3 (v2: \(other))")
            logger.info("etcd API: \(detection.reason)")
            return (v3, detection)
        case (let other, .present):
            let detection = EtcdAPIDetection(api: .v2, reason: "auto: \(v2.configKey) found in v2 (v3: \(other))")
            logger.info("etcd API: \(detection.reason)")
            return (v2, detection)
        case (let a, let b):
            throw RegistryError.configNotFound(key: v3.configKey, api: "v3 or v2 (v3: \(a); v2: \(b))")
        }
    }

    enum ConfigPresence: Sendable, Equatable, CustomStringConvertible {
        case present
        case absent
        case unreadable(String)

        var description: String {
            switch self {
            case .present: "present"
            case .absent: "not there"
            case .unreadable(let why): "unreadable: \(why)"
            }
        }
    }

    static func configPresence(_ registry: any SubnetRegistry) async throws -> ConfigPresence {
        do {
            _ = try await registry.getConfigText()
            return .present
        } catch RegistryError.configNotFound {
            return .absent
        } catch let e as RegistryError {
            return .unreadable("\(e)")
        } catch EtcdClientError.authentication(let detail) {
            // v2 and v3 keep separate auth: one keyspace refusing us says nothing about the other.
            return .unreadable("authentication failed: \(detail)")
        }
    }

    /// A registry for a fixed API without contacting etcd (tests, `--etcd-api v2|v3`).
    public static func make(api: EtcdAPIVersion, options: EtcdClientOptions, counters: LeaseCounters = LeaseCounters(),
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws -> any SubnetRegistry {
        let client = try EtcdHTTPClient(options: options, group: group, counters: counters)
        switch api {
        case .v2: return EtcdV2Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        case .v3, .auto: return EtcdV3Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        }
    }
}
