import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import Synchronization
import TestSupport
import Testing

let dualConfigJSON = #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan","VNI":1}}"#
let ipv6OnlyConfigJSON = #"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:6::/56","Backend":{"Type":"vxlan"}}"#

func subnet6(_ cidr: String) -> IPv6Subnet { IPv6Subnet(cidr: cidr)! }
func address6(_ text: String) -> IPv6Address { IPv6Address(text)! }

/// A dual-stack (or, with `ipv4` nil, IPv6-only) vxlan node's attributes, as flannel writes them.
func dualAttributes(_ ipv4: String?, _ ipv6: String, mac: String = "0a:00:00:00:00:01", mac6: String = "0a:00:00:00:06:01") -> LeaseAttributes {
    .vxlan(publicIP: ipv4.map { IPv4Address($0)! } ?? IPv4Address(0), vni: 1, vtepMAC: ipv4 == nil ? nil : MACAddress(mac)!,
           publicIPv6: address6(ipv6), ipv6VtepMAC: MACAddress(mac6)!)
}

@Suite("LeasesTests: dual-stack and IPv6-only config, keys and JSON as flannel writes them")
struct DualStackParsingTests {
    @Test func dualStackDefaultsAreFlannels() throws {
        let c = try NetworkConfig.parse(dualConfigJSON)
        let v6 = try #require(c.ipv6)
        #expect(c.enableIPv4 && c.enableIPv6)
        #expect(v6.network == subnet6("fd00:5::/48") && v6.subnetLen == 64)
        // The first subnet is never handed out; the last one is.
        #expect(v6.subnetMin == address6("fd00:5:0:1::") && v6.subnetMax == address6("fd00:5:0:ffff::"))
        #expect(Array(v6.candidateSubnets.prefix(2)) == [subnet6("fd00:5:0:1::/64"), subnet6("fd00:5:0:2::/64")])
        #expect(v6.allows(subnet6("fd00:5:0:ffff::/64")) && !v6.allows(subnet6("fd00:5::/64")) && !v6.allows(subnet6("fd00:5:0:1::/80")))
        // A network smaller than /62 is split into four (prefix + 2); keys are case-insensitive;
        // host bits in IPv6Network are masked as Go's ParseCIDR does.
        let small = try NetworkConfig.parse(#"{"network":"10.5.0.0/16","enableipv6":true,"ipv6network":"fd00:7::1/120"}"#)
        #expect(small.ipv6 == IPv6NetworkConfig(network: subnet6("fd00:7::/120"), subnetLen: 122,
                                                 subnetMin: address6("fd00:7::40"), subnetMax: address6("fd00:7::c0")))
        #expect(Array(small.ipv6!.candidateSubnets).map(\.description) == ["fd00:7::40/122", "fd00:7::80/122", "fd00:7::c0/122"])
        let explicit = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fd00:5:0:1000::","IPv6SubnetMax":"fd00:5:0:2000::"}"#)
        #expect(explicit.ipv6 == IPv6NetworkConfig(network: subnet6("fd00:5::/48"), subnetLen: 56,
                                                    subnetMin: address6("fd00:5:0:1000::"), subnetMax: address6("fd00:5:0:2000::")))
        // IPv6 fields without EnableIPv6 are read but not used.
        let off = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","IPv6Network":"fd00:5::/48"}"#)
        #expect(off.ipv6 == nil && !off.enableIPv6)
    }

    @Test func ipv6OnlyHoldsFlannelsZeroIPv4Half() throws {
        let c = try NetworkConfig.parse(ipv6OnlyConfigJSON)
        #expect(!c.enableIPv4 && c.enableIPv6)
        // Go's zero values, which make flannel's keys start with "0.0.0.0-0".
        #expect(c.network == subnet("0.0.0.0/0") && c.subnetLen == 0)
        #expect(c.allows(subnet("0.0.0.0/0")) && !c.allows(subnet("10.5.1.0/24")))
        #expect(c.ipv6?.subnetLen == 64 && c.ipv6?.subnetMin == address6("fd00:6:0:1::"))
        #expect(c.networksDescription.contains("IPv6 only"))
    }

    typealias Bad = ConfigParsingTests.Bad

    static let bad: [Bad] = [
        Bad(json: #"{"EnableIPv4":false}"#, field: "EnableIPv4", reasonContains: "none defined stack"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true}"#, field: "IPv6Network", reasonContains: "missing"),
        Bad(json: #"{"EnableIPv4":false,"EnableIPv6":true}"#, field: "IPv6Network", reasonContains: "missing"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":"yes","IPv6Network":"fd00::/48"}"#, field: "EnableIPv6", reasonContains: "boolean"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"10.6.0.0/16"}"#, field: "IPv6Network", reasonContains: "not an IPv6 CIDR"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::"}"#, field: "IPv6Network", reasonContains: "not an IPv6 CIDR"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":42}"#, field: "IPv6Network", reasonContains: "CIDR string"),
        // Malformed IPv6 fields fail the document even without EnableIPv6, as Go's decoder does.
        Bad(json: #"{"Network":"10.5.0.0/16","IPv6Network":"banana"}"#, field: "IPv6Network", reasonContains: "not an IPv6 CIDR"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#, field: "IPv6Network", reasonContains: "/124"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#, field: "IPv6SubnetLen", reasonContains: "/126"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":49}"#, field: "IPv6SubnetLen", reasonContains: "at least /50"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":129}"#, field: "IPv6SubnetLen", reasonContains: "not an IPv6 prefix"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}"#, field: "IPv6SubnetMin", reasonContains: "not inside"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:1::1"}"#, field: "IPv6SubnetMax", reasonContains: "boundary"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:8::"}"#, field: "IPv6SubnetMin", reasonContains: "above IPv6SubnetMax"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"nope"}"#, field: "IPv6SubnetMin", reasonContains: "not an IPv6 address"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":7}"#, field: "IPv6SubnetMin", reasonContains: "address string"),
    ]

    @Test(arguments: bad)
    func refusesWithFieldAndReason(_ c: Bad) { ConfigParsingTests().refusesWithFieldAndReason(c) }

    /// Go's net.IP text: lowercase, no leading zeros, the longest zero run (first on a tie, at
    /// least two groups) as "::".
    @Test func ipv6TextIsGos() {
        let cases: [(String, String)] = [
            ("FD00:0000:0000:0001:0000:0000:0000:0000", "fd00:0:0:1::"), ("fd00:12:13::", "fd00:12:13::"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"), ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
            ("fd00:1:0:1:1:1:1:1", "fd00:1:0:1:1:1:1:1"), ("::", "::"), ("::1", "::1"), ("::ffff:10.0.0.1", "10.0.0.1"),
            ("fe80::a:b", "fe80::a:b"),
        ]
        for (input, go) in cases { #expect(IPv6Address(input)?.description == go, "\(input)") }
        for bad in ["", ":", "1:2:3:4:5:6:7:8:9", "12345::", "fd00::g", "1::2::3", "fd00:::1"] {
            #expect(IPv6Address(bad) == nil, "\(bad)")
        }
    }

    /// flannel's pkg/subnet subnet_test.go keys, read and written back.
    @Test func keysAsFlannelsTestsHaveThem() {
        let key = LeaseKey("10.12.13.0-24&fd00:12:13::-56")
        #expect(key?.subnet == subnet("10.12.13.0/24") && key?.ipv6Subnet == subnet6("fd00:12:13::/56"))
        #expect(key?.description == "10.12.13.0-24&fd00:12:13::-56")
        #expect(LeaseKey(subnet: subnet("0.0.0.0/0"), ipv6Subnet: subnet6("fd00:6:0:1::/64")).description == "0.0.0.0-0&fd00:6:0:1::-64")
        #expect(LeaseKey("0.0.0.0-0&fd00:6:0:1::-64")?.ipv6Subnet == subnet6("fd00:6:0:1::/64"))
        for invalid in ["10", "10.12.13.0", "10.12.13-24", "10.12.13.300-24", "10.12.13.0-24hi", "&2001::-56", "10.12.13.0-24&:12:13:-56",
                        "10.12.13.0-24&20011::-56", "10.12.13.0-24&2001-56", "10.12.13.0-24&2001::", "10.12.13.0-24&2001::-56hi"] {
            #expect(LeaseKey(invalid) == nil, "\(invalid)")
            #expect(LeaseDecoder.flannelSubnets(fromKey: invalid) == nil, "flannel reads no subnet in \(invalid)")
        }
        // flannel's lenient reading of a non-canonical IPv6 half still marks the subnet taken.
        #expect(LeaseDecoder.flannelSubnets(fromKey: "x10.5.1.0-24&fd00:0:0:1::1-64")?.ipv6 == subnet6("fd00:0:0:1::/64"))
    }

    /// flannel's LeaseAttrs marshalled by Go: field order PublicIP, PublicIPv6, BackendType,
    /// BackendData, BackendV6Data (RawMessage, omitempty), IP6 as a quoted string, nil as null.
    @Test func encodesDualStackAndIPv6OnlyAsFlannel() throws {
        let dual = dualAttributes("192.168.64.3", "fd00::3", mac: "C6:D2:32:6F:8F:44", mac6: "c6:d2:32:6f:8f:45")
        let dualJSON = #"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#
        #expect(dual.json == dualJSON)
        #expect(try LeaseDecoder.parseAttributes(Array(dualJSON.utf8)).get() == dual)
        // An IPv6-only vxlan node: PublicIP is Go's zero IP4, BackendData is left out.
        let v6only = dualAttributes(nil, "fd00::4", mac6: "c6:d2:32:6f:8f:46")
        let v6onlyJSON = #"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00::4","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#
        #expect(v6only.json == v6onlyJSON)
        #expect(try LeaseDecoder.parseAttributes(Array(v6onlyJSON.utf8)).get() == v6only)
        // host-gw in dual-stack: PublicIPv6, no backend data.
        let hostgw = LeaseAttributes.forBackend(BackendConfig(type: "host-gw"), publicIP: IPv4Address("10.0.0.1")!, vtepMAC: nil,
                                                publicIPv6: address6("fd00::1"))
        #expect(hostgw.json == #"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"host-gw"}"#)
        // flannel's own fuzz seed.
        let seed = try LeaseDecoder.parseAttributes(Array(#"{"PublicIP":"192.168.0.1","PublicIPv6":"fc00::1"}"#.utf8)).get()
        #expect(seed.publicIPv6 == address6("fc00::1") && seed.backendType == nil)
    }

    /// Each half of a lease is used where the network runs that family, as flannel's vxlan backend.
    @Test func halvesAreUsedPerFamily() throws {
        let v4 = try NetworkConfig.parse(vxlanConfigJSON)
        let dual = try NetworkConfig.parse(dualConfigJSON)
        let v6only = try NetworkConfig.parse(ipv6OnlyConfigJSON)
        let dualValue = Array(dualAttributes("192.0.2.7", "fd01::7").json.utf8)
        func decode(_ key: String, _ value: [UInt8], _ config: NetworkConfig) -> Result<Lease, LeaseRejected> {
            LeaseDecoder.decode(key: key, value: value, isReservation: false, ttl: nil, revision: 1, config: config)
        }
        // A dual-stack lease on an IPv4-only node: its IPv4 half; the IPv6 half is not checked.
        let onV4 = try decode("10.5.7.0-24&fd99::-64", dualValue, v4).get()
        #expect(onV4.peer == Peer(subnet: subnet("10.5.7.0/24"), publicIP: IPv4Address("192.0.2.7")!, vtepMAC: MACAddress("0a:00:00:00:00:01")))
        #expect(onV4.key == "10.5.7.0-24&fd99::-64")
        // On a dual-stack node: both halves, each with its own VtepMAC.
        let onDual = try decode("10.5.7.0-24&fd00:5:0:7::-64", dualValue, dual).get()
        #expect(onDual.ipv6Peer == IPv6Peer(subnet: subnet6("fd00:5:0:7::/64"), publicIP: address6("fd01::7"), vtepMAC: MACAddress("0a:00:00:00:06:01")))
        // An IPv4-only lease on a dual-stack node is an IPv4 peer.
        let plain = try decode("10.5.8.0-24", Array(vxlanAttributes("192.0.2.8").json.utf8), dual).get()
        #expect(plain.ipv6Peer == nil && plain.peer.publicIP == IPv4Address("192.0.2.8"))
        // IPv6-only: the "0.0.0.0-0" half and PublicIP 0.0.0.0 are fine; an IPv4-only lease is not.
        let only = try decode("0.0.0.0-0&fd00:6:0:9::-64", Array(dualAttributes(nil, "fd01::9").json.utf8), v6only).get()
        #expect(only.ipv6Peer?.subnet == subnet6("fd00:6:0:9::/64"))
        #expect(throws: LeaseRejected.self) { try decode("10.5.8.0-24", Array(vxlanAttributes("192.0.2.8").json.utf8), v6only).get() }
    }

    static let hostile: [(String, String, LeaseRejection)] = {
        let v6 = #""BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:06:09"}"#
        let v4 = #""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}"#
        return [
            ("10.5.140.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9",\#(v4),\#(v6)}"#, .missingPublicIPv6) as (String, String, LeaseRejection),
            ("10.5.141.0-24&fd00:6::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),\#(v6)}"#, .ipv6SubnetOutsideNetwork),
            ("10.5.142.0-24&fd00:5::-56", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),\#(v6)}"#, .ipv6SubnetWrongLength),
            ("10.5.143.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"banana",\#(v4),\#(v6)}"#, .badPublicIPv6),
            ("10.5.144.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":6,\#(v4),\#(v6)}"#, .badPublicIPv6),
            ("10.5.145.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"::1",\#(v4),\#(v6)}"#, .badPublicIPv6),
            ("10.5.146.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"ff02::1",\#(v4),\#(v6)}"#, .badPublicIPv6),
            ("10.5.147.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"::ffff:1.2.3.4",\#(v4),\#(v6)}"#, .badPublicIPv6),
            ("10.5.148.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd00:5:0:2::1",\#(v4),\#(v6)}"#, .publicIPInNetwork),
            ("10.5.149.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4)}"#, .badBackendData),
            ("10.5.150.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),"BackendV6Data":[]}"#, .badBackendData),
            ("10.5.151.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),"BackendV6Data":{"VNI":1,"VtepMAC":"33:33:00:00:00:01"}}"#, .badVtepMAC),
            ("10.5.152.0-24&fd00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),"BackendV6Data":{"VNI":"x","VtepMAC":"0a:00:00:00:06:09"}}"#, .badBackendData),
            ("10.5.153.0-24&FD00:5:0:1::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),\#(v6)}"#, .keyNotASubnet),
            ("10.5.154.0-24&fd00:5:0:1:0::-64", #"{"PublicIP":"192.0.2.9","PublicIPv6":"fd01::9",\#(v4),\#(v6)}"#, .keyNotCanonical),
        ]
    }()

    @Test func hostileIPv6HalvesAreRefusedWithReasons() throws {
        let config = try NetworkConfig.parse(dualConfigJSON)
        for (key, value, reason) in Self.hostile {
            switch LeaseDecoder.decode(key: key, value: Array(value.utf8), isReservation: false, ttl: nil, revision: 1, config: config) {
            case .success(let l): Issue.record("\(key) accepted: \(l)")
            case .failure(let e): #expect(e.reason == reason, "\(key): \(e)")
            }
        }
    }

    @Test func subnetEnvAsFlannelWritesIt() throws {
        let dual = SubnetEnv(network: subnet("10.42.0.0/16"), subnet: subnet("10.42.0.0/24"), mtu: 1450, ipMasq: true,
                             ipv6Network: subnet6("2001:cafe:42::/56"), ipv6Subnet: subnet6("2001:cafe:42::/64"))
        // flannel's documented example (Documentation/configuration.md, "Dual-stack").
        #expect(dual.contents == """
            FLANNEL_NETWORK=10.42.0.0/16
            FLANNEL_SUBNET=10.42.0.1/24
            FLANNEL_IPV6_NETWORK=2001:cafe:42::/56
            FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64
            FLANNEL_MTU=1450
            FLANNEL_IPMASQ=true

            """)
        #expect(try SubnetEnv.parse(dual.contents) == dual)
        let config = try NetworkConfig.parse(ipv6OnlyConfigJSON)
        let lease = Lease(subnet: config.network, ipv6Subnet: subnet6("fd00:6:0:3::/64"), attributes: dualAttributes(nil, "fd01::3"))
        let only = SubnetEnv(config: config, lease: lease, mtu: 1450, ipMasq: false)
        #expect(only.contents == "FLANNEL_IPV6_NETWORK=fd00:6::/56\nFLANNEL_IPV6_SUBNET=fd00:6:0:3::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        let back = try SubnetEnv.parse(only.contents)
        #expect(back == only && !back.enableIPv4 && back.ipv6Subnet == subnet6("fd00:6:0:3::/64"))
        #expect(throws: SubnetEnvError.self) { try SubnetEnv.parse("FLANNEL_IPV6_SUBNET=fd00::zz/64\n") }
        #expect(throws: SubnetEnvError.self) { try SubnetEnv.parse("FLANNEL_MTU=1450\n") }
    }
}

/// A registry that lets a competing node create its key right before ours, inside the window no
/// compare-and-swap can close (the two keys differ), then forwards to the real etcd registry.
final class RacingRegistry: SubnetRegistry {
    let inner: any SubnetRegistry
    let competitor: @Sendable (String) async throws -> Void
    private let raced = Mutex(false)

    init(_ inner: any SubnetRegistry, competitor: @escaping @Sendable (String) async throws -> Void) {
        self.inner = inner
        self.competitor = competitor
    }

    var apiVersion: EtcdAPIVersion { inner.apiVersion }
    var prefix: String { inner.prefix }
    func getConfigText() async throws -> String { try await inner.getConfigText() }
    func listLeases(_ body: (LeaseRecord) throws -> Void) async throws -> Int64 { try await inner.listLeases(body) }
    func createLease(name: String, value: String, ttl: Duration?) async throws -> Int64 {
        let first = raced.withLock { done in defer { done = true }; return !done }
        if first { try await competitor(name) }
        return try await inner.createLease(name: name, value: value, ttl: ttl)
    }
    func updateLease(name: String, value: String, ttl: Duration?, expectedRevision: Int64) async throws -> Int64 {
        try await inner.updateLease(name: name, value: value, ttl: ttl, expectedRevision: expectedRevision)
    }
    func getLease(name: String) async throws -> LeaseRecord? { try await inner.getLease(name: name) }
    func deleteLease(name: String, expectedRevision: Int64?) async throws { try await inner.deleteLease(name: name, expectedRevision: expectedRevision) }
    func watchLeases(fromRevision: Int64) -> AsyncThrowingStream<[LeaseWatchEvent], any Error> { inner.watchLeases(fromRevision: fromRevision) }
}

@Suite("LeasesTests: dual-stack and IPv6-only leases in etcd (v2 and v3)")
struct DualStackLeaseTests {
    func storedValue(_ server: EtcdServer, _ api: EtcdAPIVersion, _ key: String) async throws -> String {
        (api == .v2 ? try await server.etcdctlCheckedAsync(api: 2, ["get", key])
                    : try await server.etcdctlCheckedAsync(api: 3, ["get", "--print-value-only", key])).trimmingCharacters(in: "\n")
    }

    @Test(arguments: bothAPIs)
    func acquiresRenewsAndReusesBothFamilies(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "dual", config: dualConfigJSON) { net in
            let registry = try net.registry()
            let config = try await registry.getConfig()
            let a = net.manager(registry)
            let attrsA = dualAttributes("192.0.2.1", "fd01::1")
            // No PublicIPv6 in a dual-stack network: refused with what to do.
            await #expect { _ = try await a.acquireLease(config: config, attributes: vxlanAttributes("192.0.2.1")) } throws: { e in
                "\(e)".contains("--public-ipv6")
            }
            let own = try await a.acquireLease(config: config, attributes: attrsA, previousSubnet: ownTestSubnet,
                                               previousIPv6Subnet: subnet6("fd00:5:0:c8::/64"))
            #expect(own.subnet == ownTestSubnet && own.ipv6Subnet == subnet6("fd00:5:0:c8::/64"))
            #expect(own.key == "10.5.200.0-24&fd00:5:0:c8::-64")
            // etcdctl reads flannel's exact bytes under flannel's key.
            let stored = try await storedValue(net.server, api, net.prefix + "/subnets/" + own.key)
            #expect(stored == #"{"PublicIP":"192.0.2.1","PublicIPv6":"fd01::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:06:01"}}"#)

            // Another node gets other subnets in both families.
            let b = net.manager(registry)
            let other = try await b.acquireLease(config: config, attributes: dualAttributes("192.0.2.2", "fd01::2", mac: "0a:00:00:00:00:02", mac6: "0a:00:00:00:06:02"))
            #expect(other.subnet != own.subnet && other.ipv6Subnet != own.ipv6Subnet)
            #expect(config.allows(other.subnet) && config.ipv6!.allows(other.ipv6Subnet!))

            // Renewal rewrites the same key; a restart (same PublicIP) reuses it.
            let renewed = try await a.renewLease()
            #expect(renewed.key == own.key && renewed.revision > own.revision)
            let restarted = net.manager(registry)
            let again = try await restarted.acquireLease(config: config, attributes: attrsA)
            #expect(again.key == own.key)
            #expect(try await registry.listLeases().records.count == 2)
        }
    }

    /// A node that held an IPv4-only key when the network turns dual-stack: its key is replaced by a
    /// dual-stack one for the same IPv4 subnet (flannel deletes it too, then takes a random one).
    @Test(arguments: bothAPIs)
    func turningDualStackKeepsTheIPv4Subnet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "turn") { net in
            let registry = try net.registry()
            let before = try await net.manager(registry)
                .acquireLease(config: try await registry.getConfig(), attributes: vxlanAttributes("192.0.2.1"), previousSubnet: ownTestSubnet)
            #expect(before.key == "10.5.200.0-24")
            try await writeConfig(net.server, api, prefix: net.prefix, dualConfigJSON)
            let after = try await net.manager(registry)
                .acquireLease(config: try await registry.getConfig(), attributes: dualAttributes("192.0.2.1", "fd01::1"),
                              previousSubnet: before.subnet)
            #expect(after.subnet == before.subnet && after.ipv6Subnet != nil)
            #expect(try await registry.listLeases().records.map(\.name) == [after.key])
        }
    }

    /// The race no compare-and-swap closes: a dual-stack node creates `10.5.200.0-24&…` while we
    /// create `10.5.200.0-24`. The key created first keeps the subnet; ours is given up.
    @Test(arguments: bothAPIs)
    func ourKeyNoLongerRacesADualStackKeyForTheSameSubnet(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "race") { net in
            let real = try net.registry()
            let theirs = dualAttributes("192.0.2.9", "fd01::9")
            let registry = RacingRegistry(real) { name in
                // A dual-stack flannel node, writing with etcdctl as flannel would.
                try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: name + "&fd00:5:0:9::-64", value: theirs.json, ttl: 86400)
            }
            let counters = LeaseCounters()
            let me = net.manager(registry, counters: counters)
            let own = try await me.acquireLease(config: try await real.getConfig(), attributes: vxlanAttributes("192.0.2.1"),
                                                previousSubnet: ownTestSubnet)
            #expect(own.subnet != ownTestSubnet, "the dual-stack key created first holds 10.5.200.0/24")
            #expect(counters.snapshot().acquireConflicts >= 1)
            let names = Set(try await real.listLeases().records.map(\.name))
            #expect(names == ["10.5.200.0-24&fd00:5:0:9::-64", own.key])

            // The other way round: a dual-stack node of ours loses to an IPv4-only key created first.
            try await writeConfig(net.server, api, prefix: net.prefix, dualConfigJSON)
            let registry2 = RacingRegistry(real) { name in
                let v4 = String(name.prefix { $0 != "&" })
                try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: v4, value: vxlanAttributes("192.0.2.10").json, ttl: 86400)
            }
            let dual = net.manager(registry2)
            let dualLease = try await dual.acquireLease(config: try await real.getConfig(), attributes: dualAttributes("192.0.2.11", "fd01::11"),
                                                        previousSubnet: subnet("10.5.201.0/24"))
            #expect(dualLease.subnet != subnet("10.5.201.0/24"))
            #expect(try await real.listLeases().records.contains { $0.name == "10.5.201.0-24" })
        }
    }

    @Test(arguments: bothAPIs)
    func ipv6OnlyNodesTakeIPv6SubnetsUnderFlannelsKeys(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "v6only", config: ipv6OnlyConfigJSON) { net in
            let registry = try net.registry()
            let config = try await registry.getConfig()
            let (a, b) = (net.manager(registry), net.manager(registry))
            let leaseA = try await a.acquireLease(config: config, attributes: dualAttributes(nil, "fd01::1"))
            // Both publish PublicIP 0.0.0.0: PublicIPv6 tells the nodes apart (flannel's etcd manager
            // matches on PublicIP and would hand b a's lease).
            let leaseB = try await b.acquireLease(config: config, attributes: dualAttributes(nil, "fd01::2", mac6: "0a:00:00:00:06:02"))
            #expect(leaseA.key.hasPrefix("0.0.0.0-0&fd00:6:") && leaseB.key.hasPrefix("0.0.0.0-0&fd00:6:"))
            #expect(leaseA.ipv6Subnet != leaseB.ipv6Subnet)
            let stored = try await storedValue(net.server, api, net.prefix + "/subnets/" + leaseA.key)
            #expect(stored == #"{"PublicIP":"0.0.0.0","PublicIPv6":"fd01::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"0a:00:00:00:06:01"}}"#)
            #expect(try await a.renewLease().key == leaseA.key)

            let peers = PeerCollector(a.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("b as a's peer") { peers.bySlot[leaseB.ipv6Subnet!.description] != nil }
            #expect(peers.bySlot.count == 1)
            #expect(peers.bySlot[leaseB.ipv6Subnet!.description]?.ipv6Peer?.publicIP == address6("fd01::2"))
        }
    }

    /// In a dual-stack network two keys can also name one IPv6 subnet; the later one's IPv6 half
    /// is left out (counted), and comes back when the earlier key goes.
    @Test(arguments: bothAPIs)
    func aLaterKeysIPv6HalfDoesNotShadowAnEarlierOne(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "v6race", config: dualConfigJSON) { net in
            let counters = LeaseCounters()
            let registry = try net.registry(counters: counters)
            let config = try await registry.getConfig()
            let me = net.manager(registry, counters: counters)
            _ = try await me.acquireLease(config: config, attributes: dualAttributes("192.0.2.1", "fd01::1"), previousSubnet: ownTestSubnet,
                                          previousIPv6Subnet: subnet6("fd00:5:0:c8::/64"))
            try await putRaw(registry, name: "10.5.3.0-24&fd00:5:0:3::-64", value: dualAttributes("192.0.2.3", "fd01::3").json)
            try await putRaw(registry, name: "10.5.4.0-24&fd00:5:0:3::-64", value: dualAttributes("192.0.2.4", "fd01::4").json)
            // A key whose IPv6 half is ours.
            try await putRaw(registry, name: "10.5.5.0-24&fd00:5:0:c8::-64", value: dualAttributes("192.0.2.5", "fd01::5").json)
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            #expect(peers.peers[subnet("10.5.3.0/24")]?.ipv6Subnet == subnet6("fd00:5:0:3::/64"))
            #expect(peers.peers[subnet("10.5.4.0/24")]?.ipv6Subnet == nil)
            #expect(peers.peers[subnet("10.5.4.0/24")]?.ipv6Peer == nil)
            #expect(peers.peers[subnet("10.5.5.0/24")]?.ipv6Subnet == nil, "our IPv6 subnet is never a peer's")
            #expect(counters.snapshot().rejected[.ipv6SubnetTaken] == 2)
            try await registry.deleteLease(name: "10.5.3.0-24&fd00:5:0:3::-64", expectedRevision: nil)
            try await eventually("the later key's IPv6 half counts once the earlier key is gone") {
                peers.peers[subnet("10.5.4.0/24")]?.ipv6Subnet == subnet6("fd00:5:0:3::/64")
            }
            #expect(peers.peers[subnet("10.5.3.0/24")] == nil)
        }
    }

    /// A dual-stack flannel node's lease written with etcdctl becomes a peer with both halves.
    @Test(arguments: bothAPIs)
    func readsADualStackFlannelNode(_ api: EtcdAPIVersion) async throws {
        try await withNetwork(api, "flannel6", config: dualConfigJSON) { net in
            let value = #"{"PublicIP":"192.168.64.4","PublicIPv6":"fd01::4","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}}"#
            try await etcdctlWriteLease(net.server, api, prefix: net.prefix, name: "10.5.53.0-24&fd00:5:0:35::-64", value: value, ttl: 86400)
            let registry = try net.registry()
            let config = try await registry.getConfig()
            let me = net.manager(registry)
            let own = try await me.acquireLease(config: config, attributes: dualAttributes("192.168.64.5", "fd01::5"))
            #expect(own.subnet != subnet("10.5.53.0/24") && own.ipv6Subnet != subnet6("fd00:5:0:35::/64"))
            let peers = PeerCollector(me.watchPeers(config: config))
            defer { peers.stop() }
            try await eventually("snapshot") { peers.gotSnapshot }
            let l = try #require(peers.peers[subnet("10.5.53.0/24")])
            #expect(l.peer == Peer(subnet: subnet("10.5.53.0/24"), publicIP: IPv4Address("192.168.64.4")!, vtepMAC: MACAddress("c6:d2:32:6f:8f:45")))
            #expect(l.ipv6Peer == IPv6Peer(subnet: subnet6("fd00:5:0:35::/64"), publicIP: address6("fd01::4"), vtepMAC: MACAddress("c6:d2:32:6f:8f:46")))
        }
    }
}

@Suite("LeasesTests: the last known state file in dual-stack and IPv6-only networks")
struct DualStackLastKnownTests {
    @Test("both halves of our lease and of the peers' are kept; a saved lease that lost its IPv6 half is refused")
    func roundTrip() throws {
        for (json, ownV4, peerV4) in [(dualConfigJSON, "10.5.3.0/24", "10.5.7.0/24"), (ipv6OnlyConfigJSON, "0.0.0.0/0", "0.0.0.0/0")] {
            let config = try NetworkConfig.parse(json)
            let v6 = try #require(config.ipv6)
            let ipv4 = config.enableIPv4
            let own = Lease(subnet: subnet(ownV4), ipv6Subnet: IPv6Subnet(containing: v6.subnetMin, prefixLength: v6.subnetLen),
                            attributes: dualAttributes(ipv4 ? "192.168.1.3" : nil, "fd01::3"))
            let peer = Lease(subnet: subnet(peerV4), ipv6Subnet: IPv6Subnet(containing: v6.subnetMax, prefixLength: v6.subnetLen),
                             attributes: dualAttributes(ipv4 ? "192.168.1.7" : nil, "fd01::7", mac: "0a:00:00:00:00:07", mac6: "0a:00:00:00:06:07"))
            let state = LastKnownLeases(savedAt: 1_800_000_000, etcdAPI: .v2, config: config, own: own, ownExpiresAt: 1_800_086_400, peers: [peer])
            let (read, skipped) = try LastKnownLeases.parse(state.json, path: "mem")
            #expect(skipped.isEmpty, "\(skipped)")
            #expect(read.own == own && read.peers == [peer])
            #expect(read.own.key == own.key && read.peers.first?.ipv6Peer?.publicIP == IPv6Address("fd01::7"))
            // Our lease saved without its IPv6 half (an older file) does not fit the config.
            let stale = LastKnownLeases(savedAt: 1_800_000_000, etcdAPI: .v2, config: config,
                                        own: Lease(subnet: own.subnet, attributes: own.attributes), ownExpiresAt: 1_800_086_400, peers: [])
            #expect(throws: LastKnownLeasesError.self) { try LastKnownLeases.parse(stale.json, path: "mem") }
        }
    }
}

@Suite("LeasesTests: a daemon that does not run IPv6 networks is told so by name")
struct DualStackRefusalTests {
    @Test func getConfigRefusesIPv6NetworksUntilTheCallerServesThem() async throws {
        try await withNetwork(.v3, "refuse6", config: dualConfigJSON) { net in
            let registry = try net.registry()
            let plain = net.manager(registry)
            await #expect { _ = try await plain.getConfig() } throws: { e in
                guard let e = e as? ConfigError else { return false }
                return e.field == "EnableIPv6" && e.reason.contains("dual-stack") && e.reason.contains("fd00:5::/48")
            }
            var options = fastOptions()
            options.servesIPv6Networks = true
            #expect(try await net.manager(registry, options: options).getConfig().enableIPv6)
        }
    }
}
