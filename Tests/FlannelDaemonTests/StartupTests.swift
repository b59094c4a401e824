import Dataplane
import FlannelDaemon
import Glibc
import Leases
import Logging
import NetTypes
import ServiceLifecycle
import TestSupport
import Testing

private let vxlanConfig = #"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#

private func etcdOptions(_ etcd: EtcdServer, prefix: String, api: String = "auto") throws -> EtcdOptions {
    try EtcdOptions.parse(["--etcd-endpoints=\(etcd.clientURL)", "--etcd-prefix=\(prefix)", "--etcd-api=\(api)"])
}

private func leaseJSON(_ ip: String, mac: String?, type: String = "vxlan") -> String {
    if let mac {
        return #"{"PublicIP":"\#(ip)","PublicIPv6":null,"BackendType":"\#(type)","BackendData":{"VNI":1,"VtepMAC":"\#(mac)"}}"#
    }
    return #"{"PublicIP":"\#(ip)","PublicIPv6":null,"BackendType":"\#(type)"}"#
}

extension DaemonSuite {
@Suite("Start-up stages against a real etcd", .serialized)
struct StartupTests {
    let logger = Logger(label: "startup-test")

    @Test("--etcd-api=auto finds the config in v3 or in v2")
    func autoDetect() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        try await etcd.put("/v3net/config", vxlanConfig)
        try await etcd.put("/v2net/config", vxlanConfig, v2: true)
        let v3 = try await Startup.connectRegistry(try etcdOptions(etcd, prefix: "/v3net"), logger: logger)
        #expect(v3.apiVersion == .v3)
        let v2 = try await Startup.connectRegistry(try etcdOptions(etcd, prefix: "/v2net"), logger: logger)
        #expect(v2.apiVersion == .v2)
    }

    @Test("--etcd-api=auto with a config in both keyspaces: follows the one holding leases and says so, else refuses at once naming both")
    func autoWithBothKeyspaces() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        let lease = leaseJSON("192.0.2.7", mac: "0a:00:00:00:00:07")
        func detect(_ prefix: String) async throws -> (any SubnetRegistry, EtcdAPIDetection) {
            try await Startup.connectRegistryDetecting(try etcdOptions(etcd, prefix: prefix), logger: logger,
                                                       retryInitial: .milliseconds(50))
        }
        for prefix in ["/both-empty", "/both-v2", "/both-v3", "/both-split"] {
            try await etcd.put("\(prefix)/config", vxlanConfig)
            try await etcd.put("\(prefix)/config", vxlanConfig, v2: true)
        }
        // flannel ≤ 0.17 nodes hold leases in v2 only: follow them, whatever v3 says.
        try await etcd.put("/both-v2/subnets/10.5.7.0-24", lease, v2: true)
        let (v2, v2Why) = try await detect("/both-v2")
        #expect(v2.apiVersion == .v2)
        #expect(v2Why.reason.contains("both keyspaces") && v2Why.reason.contains("following v2") && v2Why.reason.contains("--etcd-api=v2"), "\(v2Why)")
        // flannel ≥ 0.18 (or flanneld-xdp v3) nodes hold them in v3 only.
        try await etcd.put("/both-v3/subnets/10.5.7.0-24", lease)
        let (v3, v3Why) = try await detect("/both-v3")
        #expect(v3.apiVersion == .v3)
        #expect(v3Why.reason.contains("following v3"), "\(v3Why)")
        // Neither or both hold leases: no guess. A configuration error, so no retrying either.
        try await etcd.put("/both-split/subnets/10.5.7.0-24", lease)
        try await etcd.put("/both-split/subnets/10.5.8.0-24", lease, v2: true)
        for (prefix, words) in [("/both-empty", "neither holds a lease"), ("/both-split", "already split")] {
            do {
                _ = try await detect(prefix)
                Issue.record("\(prefix): auto chose a keyspace although both hold a config")
            } catch let error as EtcdAPIAmbiguity {
                let text = error.description
                for word in [words, "\(prefix)/config", "--etcd-api=v2", "--etcd-api=v3", "v2", "v3"] {
                    #expect(text.contains(word), "\(prefix): \(text)")
                }
            }
        }
        // With the flag given, nothing is detected: the keyspace is the flag's.
        let (fixed, fixedWhy) = try await Startup.connectRegistryDetecting(try etcdOptions(etcd, prefix: "/both-empty", api: "v2"), logger: logger)
        #expect(fixed.apiVersion == .v2 && fixedWhy.reason == "given by --etcd-api")
        // One keyspace only: the plain answer, with where it was found.
        try await etcd.put("/only-v3/config", vxlanConfig)
        let (only, onlyWhy) = try await detect("/only-v3")
        #expect(only.apiVersion == .v3 && onlyWhy.reason.contains("found in v3"), "\(onlyWhy)")
    }

    @Test("auto waits while the config is missing, then connects")
    func autoWaitsForConfig() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        let options = try etcdOptions(etcd, prefix: "/late")
        let connecting = Task { try await Startup.connectRegistry(options, logger: logger, retryInitial: .milliseconds(100)) }
        try await Task.sleep(for: .milliseconds(500))
        try await etcd.put("/late/config", vxlanConfig)
        let registry = try await connecting.value
        #expect(registry.apiVersion == .v3)
    }

    @Test("a bad config is retried until fixed; the backend is mapped")
    func badConfigRetried() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        try await etcd.put("/bad/config", #"{"Network":"10.5.0.0/33"}"#)
        let registry = try await Startup.connectRegistry(try etcdOptions(etcd, prefix: "/bad", api: "v3"), logger: logger)
        let manager = SubnetManager(registry: registry, logger: logger)
        let reading = Task { try await Startup.readConfig(manager, logger: logger, retryInitial: .milliseconds(100)) }
        try await Task.sleep(for: .milliseconds(400))
        try await etcd.put("/bad/config", #"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#) // valid JSON, unsupported backend
        try await Task.sleep(for: .milliseconds(400))
        try await etcd.put("/bad/config", #"{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#)
        let (config, backend) = try await reading.value
        #expect(config.network == IPv4Subnet(cidr: "10.6.0.0/16"))
        #expect(backend == .vxlan(directRouting: true))
    }

    @Test("backend types: vxlan, host-gw, udp; others refused with a reason")
    func backendKinds() throws {
        #expect(try Startup.backendKind(BackendConfig(type: "vxlan")) == .vxlan(directRouting: false))
        #expect(try Startup.backendKind(BackendConfig(type: "host-gw")) == .hostGW)
        #expect(try Startup.backendKind(BackendConfig(type: "udp")) == .udp)
        #expect(throws: StartupError.self) { try Startup.backendKind(BackendConfig(type: "ipip")) }
    }

    @Test("MTU: underlay − 50 for vxlan, − 28 for udp; Backend.MTU is the underlay MTU, as in flannel")
    func mtu() throws {
        let config = try NetworkConfig.parse(vxlanConfig)
        #expect(Startup.overlayMTU(underlayMTU: 1500, config: config, backend: .vxlan(directRouting: false)) == 1450)
        #expect(Startup.overlayMTU(underlayMTU: 1500, config: config, backend: .udp) == 1472)
        #expect(Startup.overlayMTU(underlayMTU: 1500, config: config, backend: .hostGW) == 1500)
        // flannel: FLANNEL_MTU and the vxlan device get Backend.MTU − 50, whatever the interface says.
        let withMTU = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#)
        #expect(Startup.overlayMTU(underlayMTU: 9000, config: withMTU, backend: .vxlan(directRouting: false)) == 1350)
        #expect(Startup.overlayMTU(underlayMTU: 1500, config: withMTU, backend: .vxlan(directRouting: true)) == 1350)
        let jumbo = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","mtu":9000}}"#)
        #expect(Startup.overlayMTU(underlayMTU: 9000, config: jumbo, backend: .vxlan(directRouting: false)) == 8950)
    }

    @Test("the previous subnet.env's subnet is taken again when free; a restart keeps the same lease")
    func previousSubnet() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        try await etcd.put("/prev/config", vxlanConfig)
        let file = "/tmp/\(uniqueTag("s"))/subnet.env"
        defer { _ = try? runProgram("/bin/rm", ["-rf", String(file.dropLast("/subnet.env".count))]) }
        try SubnetEnv(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.77.0/24")!, mtu: 1450, ipMasq: false)
            .write(to: file)
        let previous = Startup.previousSubnet(subnetFile: file, network: IPv4Subnet(cidr: "10.5.0.0/16")!, logger: logger)
        #expect(previous == IPv4Subnet(cidr: "10.5.77.0/24"))
        #expect(Startup.previousSubnet(subnetFile: file, network: IPv4Subnet(cidr: "10.9.0.0/16")!, logger: logger) == nil)
        #expect(Startup.previousSubnet(subnetFile: file + ".absent", network: IPv4Subnet(cidr: "10.5.0.0/16")!, logger: logger) == nil)

        let registry = try await Startup.connectRegistry(try etcdOptions(etcd, prefix: "/prev"), logger: logger)
        let manager = SubnetManager(registry: registry, logger: logger)
        let (config, _) = try await Startup.readConfig(manager, logger: logger)
        let mac = MACAddress("0a:00:00:00:00:01")!
        let attributes = LeaseAttributes.forBackend(config.backend, publicIP: IPv4Address("192.0.2.10")!, vtepMAC: mac)
        let lease = try await Startup.acquireLease(manager, config: config, attributes: attributes, previousSubnet: previous, logger: logger)
        #expect(lease.subnet == IPv4Subnet(cidr: "10.5.77.0/24"))
        let stored = try await etcd.get("/prev/subnets/10.5.77.0-24")
        #expect(stored.contains("\"VtepMAC\":\"0a:00:00:00:00:01\""))

        // A restarted daemon (new manager, no subnet.env) gets its own lease back by PublicIP.
        let again = SubnetManager(registry: registry, logger: logger)
        let relet = try await Startup.acquireLease(again, config: config, attributes: attributes, previousSubnet: nil, logger: logger)
        #expect(relet.subnet == lease.subnet)
    }

    @Test("the userspace path's VtepMAC is stable and locally administered")
    func stableMAC() {
        let mac = DataplaneComposer.stableUserspaceVTEPMAC(publicIP: IPv4Address("192.0.2.10")!)
        #expect(mac.description == "0e:fd:c0:00:02:0a")
        #expect(!mac.isMulticast && mac.bytes[0] & 0x02 != 0)
    }

    @Test("the loopback's MAC reads as all zero; a missing interface is an error naming it")
    func interfaceMAC() throws {
        #expect(try Interfaces.mac(named: "lo").isZero)
        #expect { try Interfaces.mac(named: "nosuchif0") } throws: { "\($0)".contains("nosuchif0") && ($0 as? OperationsError)?.errno == ENODEV }
    }

    @Test("snapshot then watch events reach the reconciler's desired set, filtered as flannel does")
    func watchToReconciler() async throws {
        let etcd = try await EtcdServer.start(tag: "fxd")
        defer { etcd.cleanup() }
        try await etcd.put("/w/config", vxlanConfig)
        try await etcd.put("/w/subnets/10.5.2.0-24", leaseJSON("192.0.2.12", mac: "0a:00:00:00:00:02"))
        try await etcd.put("/w/subnets/10.5.9.0-24", leaseJSON("192.0.2.19", mac: nil, type: "host-gw"))

        let registry = try await Startup.connectRegistry(try etcdOptions(etcd, prefix: "/w"), logger: logger)
        let manager = SubnetManager(registry: registry, logger: logger)
        let (config, backend) = try await Startup.readConfig(manager, logger: logger)
        let own = try await Startup.acquireLease(
            manager, config: config,
            attributes: LeaseAttributes.forBackend(config.backend, publicIP: IPv4Address("192.0.2.11")!, vtepMAC: MACAddress("0a:00:00:00:00:01")),
            previousSubnet: IPv4Subnet(cidr: "10.5.1.0/24"), logger: logger)
        #expect(own.subnet == IPv4Subnet(cidr: "10.5.1.0/24"))

        let policy = DesiredPeerPolicy(ownSubnet: own.subnet, backend: backend, underlaySubnet: IPv4Subnet(cidr: "192.0.2.0/24"))
        let events = PeerEventCursor(manager.watchPeers(config: config))
        let snapshot = try await Startup.firstSnapshot(events)
        // (The Leases module may already drop the host-gw lease; the policy drops it either way.)
        #expect(snapshot.contains { $0.subnet == IPv4Subnet(cidr: "10.5.2.0/24") })
        let reconciler = Reconciler(tables: [], logger: logger)
        await reconciler.setDesired(policy.peers(from: snapshot.map(RemoteLease.init)).peers)
        #expect(await reconciler.desired.map(\.subnet) == [IPv4Subnet(cidr: "10.5.2.0/24")!])

        let service = LeaseWatchService(events: events, policy: policy, reconciler: reconciler, logger: logger)
        let group = ServiceGroup(services: [service], logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await etcd.put("/w/subnets/10.5.3.0-24", leaseJSON("192.0.2.13", mac: "0a:00:00:00:00:03"))
            try await waitUntil { await reconciler.desired.count == 2 }
            try await etcd.put("/w/subnets/10.5.2.0-24", leaseJSON("192.0.2.12", mac: "0a:00:00:00:00:22"))
            try await waitUntil {
                await reconciler.desired.first { $0.subnet == IPv4Subnet(cidr: "10.5.2.0/24") }?.vtepMAC == MACAddress("0a:00:00:00:00:22")
            }
            try await etcd.delete("/w/subnets/10.5.3.0-24")
            try await waitUntil { await reconciler.desired.map(\.subnet) == [IPv4Subnet(cidr: "10.5.2.0/24")!] }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        // Shutdown leaves our lease in etcd.
        #expect(try await etcd.get("/w/subnets/10.5.1.0-24").contains("192.0.2.11"))
    }
}
}
