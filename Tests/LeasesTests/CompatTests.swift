import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import TestSupport
import TestTraits
import Testing

/// Hostile lease keys/values: (key, value, expected reason).
let hostileLeases: [(String, String, LeaseRejection)] = {
    let ok = #""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}"#
    let big = #"{"PublicIP":"192.0.2.9","Pad":""# + String(repeating: "a", count: 1 << 20) + #"",\#(ok)}"#
    return [
        ("10.5.101.0-24", #"{"PublicIP":"#, .invalidJSON),
        ("10.5.102.0-24", "", .invalidJSON),
        ("10.5.103.0-24", "[1,2,3]", .notAnObject),
        ("10.5.104.0-24", #""just a string""#, .notAnObject),
        ("10.5.105.0-24", "null", .notAnObject),
        ("10.5.106.0-24", "{\(ok)}", .missingPublicIP),
        ("10.5.107.0-24", #"{"PublicIP":3232235777,\#(ok)}"#, .badPublicIP),
        ("10.5.108.0-24", #"{"PublicIP":"not-an-ip",\#(ok)}"#, .badPublicIP),
        ("10.5.109.0-24", #"{"PublicIP":"127.0.0.1",\#(ok)}"#, .badPublicIP),
        ("10.5.110.0-24", #"{"PublicIP":"0.0.0.0",\#(ok)}"#, .badPublicIP),
        ("10.5.111.0-24", #"{"PublicIP":"239.1.1.1",\#(ok)}"#, .badPublicIP),
        ("10.5.112.0-24", #"{"PublicIP":"192.0.2.9","BackendType":7}"#, .badBackendType),
        ("10.5.113.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"warp-drive","BackendData":{}}"#, .unknownBackendType),
        ("10.5.114.0-24", #"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"host-gw"}"#, .backendMismatch),
        ("10.5.115.0-24", #"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#, .backendMismatch),  // a udp node
        ("10.5.116.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":"oops"}"#, .badBackendData),
        ("10.5.117.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":"one","VtepMAC":"0a:00:00:00:00:09"}}"#, .badBackendData),
        ("10.5.118.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":99999999999,"VtepMAC":"0a:00:00:00:00:09"}}"#, .badBackendData),
        ("10.5.119.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1}}"#, .badBackendData),
        ("10.5.120.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz:zz:zz:zz:zz:zz"}}"#, .badVtepMAC),
        ("10.5.121.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#, .badVtepMAC),
        ("10.5.122.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}}"#, .badVtepMAC),
        ("10.5.123.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":42}}"#, .badVtepMAC),
        ("10.5.124.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09:ff"}}"#, .badVtepMAC),
        ("10.5.125.0-24", big, .valueTooLarge),
        ("10.5.126.0-24", String(repeating: "[", count: 200) + String(repeating: "]", count: 200), .invalidJSON),
        ("garbage", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotASubnet),
        // Keys flannel's lenient parser reads as a subnet but no node writes: aliases, ignored.
        ("10.5.127.5-24", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotCanonical),
        ("x10.5.130.0-24", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotCanonical),
        ("old/10.5.131.0-24", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotCanonical),
        ("10.5.129.0-24&fd00:5:129::-064", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotCanonical),
        // Not keys at all, for flannel either.
        ("10.5.132.0-24&junk", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotASubnet),
        ("10.5.133.0-24&FD00::-64", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotASubnet),
        ("10.5.134.0-32", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .keyNotASubnet),
        // Node addresses that would make the pod network a peer.
        ("10.5.135.0-24", #"{"PublicIP":"10.5.9.9",\#(ok)}"#, .publicIPInNetwork),
        ("10.5.136.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09","SourceIP":"10.5.1.1"}}"#, .publicIPInNetwork),
        ("10.5.137.0-24", #"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09","SourceIP":"127.0.0.1"}}"#, .badPublicIP),
        ("10.5.138.0-24", #"{"PublicIP":"255.255.255.255",\#(ok)}"#, .badPublicIP),
        ("192.168.0.0-24", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .subnetOutsideNetwork),
        ("10.5.128.0-26", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .subnetWrongLength),
        ("10.5.0.0-16", #"{"PublicIP":"192.0.2.9",\#(ok)}"#, .subnetWrongLength),
    ]
}()

@Suite("LeasesTests: hostile leases, flannel compatibility, API selection, TLS, auth", .ownThreads)
struct CompatTests {
    @Test func hostileTableDecodesToExpectedReasons() throws {
        #expect(hostileLeases.count >= 20)
        let config = try NetworkConfig.parse(vxlanConfigJSON)
        for (key, value, reason) in hostileLeases {
            let r = LeaseDecoder.decode(key: key, value: Array(value.utf8), isReservation: false, ttl: nil, revision: 1, config: config)
            switch r {
            case .success(let l): Issue.record("\(key) accepted: \(l)")
            case .failure(let e): #expect(e.reason == reason, "\(key): \(e)")
            }
        }
    }

    /// Two keys can name one IPv4 subnet: an IPv4-only and a dual-stack node that raced for it
    /// (both forms are flannel's), or an alias flannel's lenient parser reads as that subnet. The
    /// key created first speaks for the subnet; the others can neither replace it nor, when deleted,
    /// remove it; and no key but our own can make us believe our lease is gone.
    @Test(arguments: bothAPIs)
    func aliasAndDualStackKeysNeitherShadowNorRemoveALease(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "alias") { net in
            let (config, registry, me, own) = try await net.joinAsOwnNode()
            let first = vxlanAttributes("192.0.2.4", mac: "0a:00:00:00:00:04")
            let dualFirst = vxlanAttributes("192.0.2.6", mac: "0a:00:00:00:00:06")
            try await putRaw(registry, name: "10.5.4.0-24", value: first.json)
            // At the first list already: the dual-stack key created before the IPv4 one wins.
            try await putRaw(registry, name: "10.5.6.0-24&fd00:6::-64", value: dualFirst.json)
            try await putRaw(registry, name: "10.5.6.0-24", value: vxlanAttributes("192.0.2.66", mac: "0a:00:00:00:00:66").json)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            #expect(peers.peers[subnet("10.5.4.0/24")]?.attributes == first)
            #expect(peers.peers[subnet("10.5.6.0/24")]?.attributes == dualFirst)

            // Each step is followed by a new peer at a sentinel subnet: once it arrives, the watch
            // has handled every event before it.
            var sentinel = 10
            func settle(_ what: String) async throws {
                sentinel += 1
                let s = "10.5.\(sentinel).0-24"
                try await putRaw(registry, name: s, value: vxlanAttributes("192.0.2.\(sentinel)", mac: "0a:00:00:00:01:\(sentinel)").json)
                try await eventually(what) { peers.peers[IPv4Subnet(leaseKey: s)!] != nil }
            }
            let later = vxlanAttributes("192.0.2.44", mac: "0a:00:00:00:00:44")
            try await putRaw(registry, name: "10.5.4.0-24&fd00:4::-64", value: later.json)
            try await settle("a dual-stack key for the same subnet, created later")
            #expect(peers.peers[subnet("10.5.4.0/24")]?.attributes == first)
            try await putRaw(registry, name: "x10.5.4.0-24", value: vxlanAttributes("192.0.2.99", mac: "0a:00:00:00:00:99").json)
            try await settle("an alias key")
            #expect(peers.peers[subnet("10.5.4.0/24")]?.attributes == first)
            try await registry.deleteLease(name: "x10.5.4.0-24", expectedRevision: nil)
            try await registry.deleteLease(name: "10.5.4.0-24&fd00:4::-64", expectedRevision: nil)
            try await settle("the alias and the later key deleted")
            #expect(peers.peers[subnet("10.5.4.0/24")]?.attributes == first)
            #expect(!peers.events.contains { if case .removed(let l) = $0 { l.subnet == subnet("10.5.4.0/24") } else { false } })
            // The first key gone, the other one speaks for the subnet.
            try await registry.deleteLease(name: "10.5.6.0-24&fd00:6::-64", expectedRevision: nil)
            try await settle("the first of two keys deleted")
            #expect(peers.peers[subnet("10.5.6.0/24")]?.attributes.publicIP == IPv4Address("192.0.2.66"))

            // Another node's keys naming our subnet, then deleted: our lease stands.
            try await putRaw(registry, name: own.subnet.leaseKey + "&fd00:200::-64", value: later.json)
            try await putRaw(registry, name: "y" + own.subnet.leaseKey, value: later.json)
            try await settle("keys naming our subnet")
            try await registry.deleteLease(name: own.subnet.leaseKey + "&fd00:200::-64", expectedRevision: nil)
            try await registry.deleteLease(name: "y" + own.subnet.leaseKey, expectedRevision: nil)
            try await settle("keys naming our subnet deleted")
            #expect(await me.hasLostLease == false)
            #expect(await me.ownLease?.subnet == own.subnet)
            #expect(peers.peers[own.subnet] == nil, "our subnet is never a peer")
            // A subnet that only an alias names is taken for the next node, as flannel sees it.
            try await putRaw(registry, name: "z10.5.7.0-24", value: later.json)
            let other = SubnetManager(registry: registry, counters: LeaseCounters(), options: fastOptions(), logger: quietLogger)
            #expect(try await other.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.70"),
                                                 previousSubnet: subnet("10.5.7.0/24")).subnet != subnet("10.5.7.0/24"))
        }
    }

    @Test(arguments: bothAPIs)
    func hostileLeasesAreSkippedWhileValidOnesArrive(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "hostile") { net in
            let (config, registry, me, _) = try await net.joinAsOwnNode()
            let half = hostileLeases.count / 2
            // Half present at the first list, half arriving through the watch.
            for (key, value, _) in hostileLeases[..<half] { try await putRaw(registry, name: key, value: value) }
            let valid1 = vxlanAttributes("192.0.2.2", mac: "0a:00:00:00:00:02")
            try await putRaw(registry, name: "10.5.2.0-24", value: valid1.json)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            #expect(Set(peers.peers.keys) == [subnet("10.5.2.0/24")])

            for (key, value, _) in hostileLeases[half...] { try await putRaw(registry, name: key, value: value) }
            let valid2 = vxlanAttributes("192.0.2.3", mac: "0a:00:00:00:00:03")
            try await putRaw(registry, name: "10.5.3.0-24", value: valid2.json)
            try await eventually("valid peer after hostile ones") { peers.peers.count == 2 }
            #expect(Set(peers.peers.keys) == [subnet("10.5.2.0/24"), subnet("10.5.3.0/24")])
            #expect(peers.peers[subnet("10.5.2.0/24")]?.attributes == valid1)
            // Every hostile value was counted once, under its reason; no valid peer was removed.
            let snap = me.counters.snapshot()  // the registry counts into the same cells
            #expect(snap.rejectedTotal == hostileLeases.count, "\(snap.rejected)")
            for reason in Set(hostileLeases.map(\.2)) {
                #expect(snap.rejected[reason] == hostileLeases.filter { $0.2 == reason }.count, "\(reason)")
            }
            #expect(!peers.events.contains { if case .removed = $0 { true } else { false } })
            // A valid peer overwritten with garbage is no longer a peer.
            try await putRaw(registry, name: "10.5.3.0-24", value: #"{"PublicIP":"nope"}"#)
            try await eventually("overwritten peer removed") { peers.peers.count == 1 }
        }
    }

    /// Config and leases exactly as flannel writes them with etcdctl, in both API generations.
    @Test(arguments: bothAPIs)
    func readsWhatFlannelWrites(_ api: EtcdAPIVersion) async throws {
        try await withEtcd { server in
            let prefix = "/coreos.com/network"
            // The install guide's config, lower-case keys as some guides write them.
            try await writeConfig(server, api, prefix: prefix, #"{"network":"10.5.0.0/16","backend":{"type":"vxlan","vni":1}}"#)
            let flannelLease = #"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
            try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.52.0-24", value: flannelLease, ttl: 86400)
            // A dual-stack flannel node's key and value.
            let dual = #"{"PublicIP":"192.168.64.4","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#
            try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.53.0-24&fd00:12:13::-56", value: dual, ttl: 86400)

            var options = EtcdClientOptions(endpoints: ["http://127.0.0.1:1", server.clientURL], prefix: prefix, apiVersion: .auto)
            options.connectTimeout = .seconds(2)
            let counters = LeaseCounters()
            let registry = try await EtcdRegistryFactory.make(options: options, counters: counters, logger: quietLogger)
            #expect(registry.apiVersion == api)
            #expect(counters.snapshot().endpointFailovers >= 1)  // the dead first endpoint
            let me = SubnetManager(registry: registry, options: fastOptions(), logger: quietLogger)
            let config = try await me.getConfig()
            #expect(config.network == subnet("10.5.0.0/16") && config.subnetLen == 24 && config.backend.type == "vxlan")

            let ours = vxlanAttributes("192.168.64.5", mac: "0a:0b:0c:0d:0e:0f")
            let own = try await me.acquireLease(config: config, attributes: ours)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            let l = try #require(peers.peers[subnet("10.5.52.0/24")])
            #expect(l.attributes == .vxlan(publicIP: IPv4Address("192.168.64.3")!, vni: 1, vtepMAC: MACAddress("c6:d2:32:6f:8f:44")!))
            #expect(l.peer == Peer(subnet: subnet("10.5.52.0/24"), publicIP: IPv4Address("192.168.64.3")!, vtepMAC: MACAddress("c6:d2:32:6f:8f:44")))
            #expect(peers.peers[subnet("10.5.53.0/24")]?.attributes.publicIP == IPv4Address("192.168.64.4"))

            // What we wrote, read back by etcdctl, is flannel's exact form, and parses with the
            // rules flannel's decoder applies (typed fields, lowercase MAC, VNI a number).
            let key = prefix + "/subnets/" + own.subnet.leaseKey
            let stored = (api == .v2 ? try await server.etcdctlCheckedAsync(api: 2, ["get", key])
                                     : try await server.etcdctlCheckedAsync(api: 3, ["get", "--print-value-only", key])).trimmingCharacters(in: "\n")
            #expect(stored == #"{"PublicIP":"192.168.64.5","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:0b:0c:0d:0e:0f"}}"#)
            let doc = try JSONValue.parse(stored)
            #expect(doc["PublicIP"]?.stringValue == "192.168.64.5")
            #expect(doc["BackendData"]?["VNI"]?.int64Value == 1)
            #expect(doc["PublicIPv6"] == .null)
            // Keys in flannel's form; v2 TTL is flannel's 24 h by default.
            #expect(own.subnet.leaseKey.hasSuffix("-24"))
        }
    }

    @Test func autoDetectionSaysWhereConfigIsMissing() async throws {
        try await withEtcd { server in
            var options = EtcdClientOptions(endpoints: [server.clientURL], prefix: uniquePrefix("none"), apiVersion: .auto)
            options.connectTimeout = .seconds(2)
            do {
                _ = try await EtcdRegistryFactory.make(options: options, logger: quietLogger)
                Issue.record("auto-detection should fail without a config")
            } catch let e as RegistryError {
                guard case .configNotFound(_, let api) = e else { Issue.record("\(e)"); return }
                #expect(api.contains("v3") && api.contains("v2"))
                #expect(e.description.contains("/config"))
            }
            // The daemon's wait-and-retry path: getConfig also reports it plainly.
            let r = try makeRegistry(server, .v3, prefix: uniquePrefix("none"))
            await #expect(throws: RegistryError.self) { _ = try await r.getConfig() }
        }
    }

    @Test func v2DisabledIsReportedPlainly() async throws {
        try await withEtcd(extraArguments: ["--enable-v2=false"]) { server in
            let prefix = uniquePrefix("nov2")
            let v2 = try makeRegistry(server, .v2, prefix: prefix)
            do {
                _ = try await v2.getConfigText()
                Issue.record("v2 answered although disabled")
            } catch {
                #expect("\(error)".contains("--enable-v2=true"), "\(error)")
            }
            // auto still finds a v3 config.
            try await writeConfig(server, .v3, prefix: prefix, vxlanConfigJSON)
            let auto = try await EtcdRegistryFactory.make(options: EtcdClientOptions(endpoints: [server.clientURL], prefix: prefix),
                                                          logger: quietLogger)
            #expect(auto.apiVersion == .v3)
        }
    }

    @Test func tlsWithClientCertificates() async throws {
        let certs = try await TLSTestCerts.generate(tag: "lease")
        defer { certs.remove() }
        let serverTLS = EtcdServerTLS(certFile: certs.serverCert, keyFile: certs.serverKey, trustedCAFile: certs.caCert)
        try await withEtcd(tls: serverTLS, etcdctlTLS: (certs.caCert, certs.clientCert, certs.clientKey)) { server in
            let prefix = uniquePrefix("tls")
            #expect(server.clientURL.hasPrefix("https://"))
            for api in bothAPIs {
                try await writeConfig(server, api, prefix: prefix, vxlanConfigJSON)
                let good = try makeRegistry(server, api, prefix: prefix) {
                    $0.caFile = certs.caCert
                    $0.certFile = certs.clientCert
                    $0.keyFile = certs.clientKey
                }
                #expect(try await good.getConfig().network == subnet("10.5.0.0/16"))
                let me = SubnetManager(registry: good, options: fastOptions(), logger: quietLogger)
                let lease = try await me.acquireLease(config: try await good.getConfig(), attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
                let peers = PeerCollector(me.watchPeers(config: try await good.getConfig()))
                defer { peers.stop() }
                try await eventually("TLS watch snapshot") { peers.gotSnapshot }
                try await etcdctlWriteLease(server, api, prefix: prefix, name: "10.5.250.0-24", value: vxlanAttributes("192.0.2.250").json, ttl: 60)
                try await eventually("TLS watch event") { peers.peers[subnet("10.5.250.0/24")] != nil }
                try await me.releaseLease()
                _ = lease

                // Wrong CA: the server is not trusted.
                let wrongCA = try makeRegistry(server, api, prefix: prefix) {
                    $0.caFile = certs.otherCACert
                    $0.certFile = certs.clientCert
                    $0.keyFile = certs.clientKey
                }
                await expectTLSRefusal(wrongCA, naming: "--etcd-cafile", "wrong CA accepted")
                // No client certificate: the server refuses us.
                let noCert = try makeRegistry(server, api, prefix: prefix) { $0.caFile = certs.caCert }
                await expectTLSRefusal(noCert, naming: "--etcd-certfile", "connection without a client certificate accepted")
            }
            // Unreadable key file: a setup error naming the file.
            #expect(throws: EtcdClientError.self) {
                _ = try makeRegistry(server, .v3, prefix: prefix) {
                    $0.caFile = certs.caCert
                    $0.certFile = certs.clientCert
                    $0.keyFile = certs.dir + "/missing.key"
                }
            }
        }
    }

    /// Tokens live 1 s here (etcd's default is 5 min) and vanish on restart: requests and the watch
    /// re-authenticate by themselves.
    @Test func v3AuthenticationWithUsernameAndPassword() async throws {
        try await withEtcd(extraArguments: ["--auth-token-ttl=1"]) { server in
            let prefix = uniquePrefix("auth")
            try await writeConfig(server, .v3, prefix: prefix, vxlanConfigJSON)
            // Credentials for an etcd without auth: not an error (as etcd's own client), and once
            // auth is enabled the same registry logs in.
            let early = try makeRegistry(server, .v3, prefix: prefix) {
                $0.username = "root"
                $0.password = "rootpw"
            }
            #expect(try await early.getConfig().network == subnet("10.5.0.0/16"))
            try await server.etcdctlCheckedAsync(api: 3, ["user", "add", "root:rootpw"])
            try await server.etcdctlCheckedAsync(api: 3, ["auth", "enable"])
            #expect(try await early.getConfig().network == subnet("10.5.0.0/16"))
            let good = try makeRegistry(server, .v3, prefix: prefix) {
                $0.username = "root"
                $0.password = "rootpw"
            }
            #expect(try await good.getConfig().network == subnet("10.5.0.0/16"))
            let me = SubnetManager(registry: good, options: fastOptions(), logger: quietLogger)
            let config = try await good.getConfig()
            _ = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("authenticated watch snapshot") { peers.gotSnapshot }
            try await server.etcdctlCheckedAsync(api: 3, ["--user=root:rootpw", "put", prefix + "/subnets/10.5.9.0-24", vxlanAttributes("192.0.2.9").json])
            try await eventually("authenticated watch event") { peers.peers.count == 1 }
            try await Task.sleep(for: .seconds(2))
            try await me.renewLease()  // with an expired token
            try await server.restart()  // the watch comes back with a token etcd has never seen
            try await server.etcdctlCheckedAsync(api: 3, ["--user=root:rootpw", "put", prefix + "/subnets/10.5.10.0-24", vxlanAttributes("192.0.2.10").json])
            try await eventually(timeout: .seconds(15), "watch event after restart") { peers.peers.count == 2 }

            let bad = try makeRegistry(server, .v3, prefix: prefix) {
                $0.username = "root"
                $0.password = "wrong"
            }
            do {
                _ = try await bad.getConfigText()
                Issue.record("v3 accepted a wrong password")
            } catch let e as EtcdClientError {
                guard case .credentialsRejected(let user, _) = e else { Issue.record("\(e)"); return }
                #expect(user == "root" && e.description.contains("user \"root\""), "\(e)")
            }
            let anonymous = try makeRegistry(server, .v3, prefix: prefix)
            await #expect(throws: RegistryError.permissionDenied(operation: "get config", key: prefix + "/config", user: nil)) {
                _ = try await anonymous.getConfigText()
            }
        }
    }

    @Test func v2BasicAuthentication() async throws {
        try await withEtcd { server in
            let prefix = uniquePrefix("auth2")
            try await server.etcdctlCheckedAsync(api: 2, ["user", "add", "root:rootpw"])
            try await server.etcdctlCheckedAsync(api: 2, ["auth", "enable"])
            try await server.etcdctlCheckedAsync(api: 2, ["--username", "root:rootpw", "role", "revoke", "guest", "--path", "/*", "--readwrite"])
            try await server.etcdctlCheckedAsync(api: 2, ["--username", "root:rootpw", "set", prefix + "/config", vxlanConfigJSON])
            let good = try makeRegistry(server, .v2, prefix: prefix) {
                $0.username = "root"
                $0.password = "rootpw"
            }
            let config = try await good.getConfig()
            let me = SubnetManager(registry: good, options: fastOptions(), logger: quietLogger)
            let lease = try await me.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("authenticated v2 snapshot") { peers.gotSnapshot }
            try await server.etcdctlCheckedAsync(api: 2, ["--username", "root:rootpw", "set", prefix + "/subnets/10.5.9.0-24", vxlanAttributes("192.0.2.9").json])
            try await eventually("authenticated v2 watch event") { peers.peers.count == 1 }
            try await me.renewLease()
            #expect(try await good.getLease(name: lease.subnet.leaseKey) != nil)

            for creds in [("root", "wrong"), nil] {
                let bad = try makeRegistry(server, .v2, prefix: prefix) {
                    $0.username = creds?.0
                    $0.password = creds?.1
                }
                do {
                    _ = try await bad.getConfigText()
                    Issue.record("v2 accepted bad credentials \(String(describing: creds))")
                } catch let e as EtcdClientError {
                    #expect(e.description.contains("--etcd-username"), "\(e)")
                }
            }
        }
    }
}

/// A registry whose TLS handshake the server refuses: reading the config fails with a TLS error
/// that names `flag`, the option to fix; `accepted` is the issue when it does not fail.
func expectTLSRefusal(_ registry: any SubnetRegistry, naming flag: String, _ accepted: String) async {
    do {
        _ = try await registry.getConfigText()
        Issue.record(Comment(rawValue: accepted))
    } catch let e as EtcdClientError {
        guard case .tls = e else {
            Issue.record("not a TLS error: \(e)")
            return
        }
        #expect(e.description.contains(flag), "\(e)")
    } catch {
        Issue.record("not an etcd client error: \(error)")
    }
}
