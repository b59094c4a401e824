// Builds the registry the flags ask for. `.auto` looks for `<prefix>/config` in v3, then in v2
// (etcd 3.4+ serves v2 only with --enable-v2=true), and says plainly when it is in neither.

import Logging
import NIOCore
import NIOPosix

public enum EtcdRegistryFactory {
    /// A registry for `options.apiVersion`. For `.auto` this contacts etcd; a missing config throws
    /// `RegistryError.configNotFound` (the daemon waits and retries, as flannel does).
    public static func make(options: EtcdClientOptions, counters: LeaseCounters = LeaseCounters(),
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                            logger: Logger = Logger(label: "flanneld-xdp.etcd")) async throws -> any SubnetRegistry {
        let client = try EtcdHTTPClient(options: options, group: group, counters: counters)
        let v2 = EtcdV2Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        let v3 = EtcdV3Registry(client: client, prefix: options.prefix, username: options.username, password: options.password)
        switch options.apiVersion {
        case .v2: return v2
        case .v3: return v3
        case .auto:
            var notes: [String] = []
            do {
                _ = try await v3.getConfigText()
                logger.info("etcd API: v3 (found \(v3.configKey))")
                return v3
            } catch RegistryError.configNotFound {
                notes.append("not in v3")
            } catch let e as RegistryError {
                notes.append("v3: \(e)")
            }
            do {
                _ = try await v2.getConfigText()
                logger.info("etcd API: v2 (found \(v2.configKey))")
                return v2
            } catch RegistryError.configNotFound {
                notes.append("not in v2")
            } catch let e as RegistryError {
                notes.append("v2: \(e)")
            }
            throw RegistryError.configNotFound(key: v3.configKey, api: "v3 or v2 (\(notes.joined(separator: "; ")))")
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
