import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import TestSupport
import Testing

@Suite("LeasesTests: config parsing")
struct ConfigParsingTests {
    struct Good: Sendable, CustomTestStringConvertible {
        var json: String
        var network: String
        var subnetLen: Int
        var min: String
        var max: String
        var backend: String
        var vni: UInt32 = 1
        var port: UInt16
        var testDescription: String { json }
    }

    static let good: [Good] = [
        // flannel's documented example and defaults
        Good(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#, network: "10.5.0.0/16", subnetLen: 24,
             min: "10.5.1.0", max: "10.5.255.0", backend: "vxlan", port: 8472),
        // no Backend at all → udp with port 8285
        Good(json: #"{"Network":"10.5.0.0/16"}"#, network: "10.5.0.0/16", subnetLen: 24,
             min: "10.5.1.0", max: "10.5.255.0", backend: "udp", port: 8285),
        Good(json: #"{"Network":"10.5.0.0/16","Backend":null}"#, network: "10.5.0.0/16", subnetLen: 24,
             min: "10.5.1.0", max: "10.5.255.0", backend: "udp", port: 8285),
        // case-insensitive keys, as Go's decoder
        Good(json: #"{"network":"10.6.0.0/16","subnetlen":26,"backend":{"type":"vxlan","vni":42,"port":4789}}"#,
             network: "10.6.0.0/16", subnetLen: 26, min: "10.6.0.64", max: "10.6.255.192", backend: "vxlan", vni: 42, port: 4789),
        Good(json: #"{"NETWORK":"10.7.0.0/16","Backend":{"TYPE":"udp","PORT":9000}}"#, network: "10.7.0.0/16", subnetLen: 24,
             min: "10.7.1.0", max: "10.7.255.0", backend: "udp", port: 9000),
        // SubnetLen default: prefix ≤ 22 → 24; longer → prefix+2
        Good(json: #"{"Network":"10.8.0.0/22","Backend":{"Type":"vxlan"}}"#, network: "10.8.0.0/22", subnetLen: 24,
             min: "10.8.1.0", max: "10.8.3.0", backend: "vxlan", port: 8472),
        Good(json: #"{"Network":"10.9.0.0/26","Backend":{"Type":"vxlan"}}"#, network: "10.9.0.0/26", subnetLen: 28,
             min: "10.9.0.16", max: "10.9.0.48", backend: "vxlan", port: 8472),
        Good(json: #"{"Network":"10.9.0.0/28","Backend":{"Type":"host-gw"}}"#, network: "10.9.0.0/28", subnetLen: 30,
             min: "10.9.0.4", max: "10.9.0.12", backend: "host-gw", port: 0),
        // explicit SubnetMin/Max; an explicit VNI 0 is VNI 0 (flannel presets 1, the JSON overwrites it);
        // Port 0 = default
        Good(json: #"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0","Backend":{"Type":"vxlan","VNI":0,"Port":0}}"#,
             network: "10.5.0.0/16", subnetLen: 24, min: "10.5.10.0", max: "10.5.20.0", backend: "vxlan", vni: 0, port: 8472),
        // SubnetLen bounds: prefix + 2 (four subnets) and /30 are the limits flannel accepts
        Good(json: #"{"Network":"10.5.0.0/16","SubnetLen":18,"Backend":{"Type":"vxlan"}}"#, network: "10.5.0.0/16", subnetLen: 18,
             min: "10.5.64.0", max: "10.5.192.0", backend: "vxlan", port: 8472),
        Good(json: #"{"Network":"10.5.0.0/16","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#, network: "10.5.0.0/16", subnetLen: 30,
             min: "10.5.0.4", max: "10.5.255.252", backend: "vxlan", port: 8472),
        // the largest VNI a v0.17 node can read from a lease
        Good(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":65535}}"#, network: "10.5.0.0/16", subnetLen: 24,
             min: "10.5.1.0", max: "10.5.255.0", backend: "vxlan", vni: 65535, port: 8472),
        // host bits in Network are masked (Go's ParseCIDR), unknown keys ignored, dual-stack
        Good(json: #"{"Network":"10.5.3.4/16","Unknown":1,"EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}"#,
             network: "10.5.0.0/16", subnetLen: 24, min: "10.5.1.0", max: "10.5.255.0", backend: "vxlan", port: 8472),
        // unknown backend types are kept for the daemon to decide
        Good(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#, network: "10.5.0.0/16", subnetLen: 24,
             min: "10.5.1.0", max: "10.5.255.0", backend: "wireguard", port: 0),
    ]

    @Test(arguments: good)
    func parsesWithFlannelDefaults(_ c: Good) throws {
        let config = try NetworkConfig.parse(c.json)
        #expect(config.network == IPv4Subnet(cidr: c.network))
        #expect(config.subnetLen == c.subnetLen)
        #expect(config.subnetMin == IPv4Address(c.min))
        #expect(config.subnetMax == IPv4Address(c.max))
        #expect(config.backend.type == c.backend)
        #expect(config.backend.port == c.port)
        if c.backend == "vxlan" { #expect(config.backend.vni == c.vni) }
    }

    @Test func vxlanOptions() throws {
        let c = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true,"GBP":false,"Learning":true,"MTU":1400}}"#)
        #expect(c.backend.directRouting && !c.backend.gbp && c.backend.learning)
        #expect(c.backend.mtu == 1400, "the underlay MTU, as flannel reads it")
        #expect(c.enableIPv6 == false)
        #expect(c.warnings.isEmpty)
        #expect(try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).backend.mtu == 0)
    }

    @Test("a dual-stack config parses without warnings: IPv6 is served")
    func dualStackParses() throws {
        let c = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}"#)
        #expect(c.enableIPv4 && c.enableIPv6)
        #expect(c.ipv6?.network == IPv6Subnet(cidr: "fd00:10::/48"))
        #expect(c.warnings.isEmpty)
    }

    struct Bad: Sendable, CustomTestStringConvertible {
        var json: String
        var field: String
        var reasonContains: String
        var testDescription: String { json }
    }

    static let bad: [Bad] = [
        Bad(json: "not json", field: "config", reasonContains: "invalid JSON"),
        Bad(json: "[1]", field: "config", reasonContains: "object"),
        Bad(json: "{}", field: "Network", reasonContains: "missing"),
        Bad(json: #"{"Network":42}"#, field: "Network", reasonContains: "must be a CIDR string"),
        Bad(json: #"{"Network":"10.5.0.0"}"#, field: "Network", reasonContains: "not an IPv4 CIDR"),
        Bad(json: #"{"Network":"10.5.0.0/33"}"#, field: "Network", reasonContains: "not an IPv4 CIDR"),
        Bad(json: #"{"Network":"10.5.0.0/29"}"#, field: "Network", reasonContains: "too small"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetLen":31}"#, field: "SubnetLen", reasonContains: "/30"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetLen":16}"#, field: "SubnetLen", reasonContains: "at least /18"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetLen":17}"#, field: "SubnetLen", reasonContains: "fewer than four subnets"),
        Bad(json: #"{"Network":"10.9.0.0/28","SubnetLen":29}"#, field: "SubnetLen", reasonContains: "at least /30"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#, field: "SubnetLen", reasonContains: "integer"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetLen":-1}"#, field: "SubnetLen", reasonContains: "not a prefix length"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#, field: "SubnetMin", reasonContains: "not inside"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMax":"10.6.0.0"}"#, field: "SubnetMax", reasonContains: "not inside"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.5"}"#, field: "SubnetMin", reasonContains: "boundary"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMax":"10.5.1.128"}"#, field: "SubnetMax", reasonContains: "boundary"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.8.0"}"#, field: "SubnetMin", reasonContains: "above SubnetMax"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMin":7}"#, field: "SubnetMin", reasonContains: "address string"),
        Bad(json: #"{"Network":"10.5.0.0/16","SubnetMin":"banana"}"#, field: "SubnetMin", reasonContains: "not an IPv4"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":"vxlan"}"#, field: "Backend", reasonContains: "object"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{}}"#, field: "Backend.Type", reasonContains: "missing"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":""}}"#, field: "Backend.Type", reasonContains: "empty"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":7}}"#, field: "Backend.Type", reasonContains: "string"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#, field: "Backend.VNI", reasonContains: "integer"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#, field: "Backend.VNI", reasonContains: "outside"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#, field: "Backend.VNI", reasonContains: "outside"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":65536}}"#, field: "Backend.VNI", reasonContains: "16-bit"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#, field: "Backend.GBP", reasonContains: "group policy"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","gbp":true}}"#, field: "Backend.GBP", reasonContains: "not supported"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":0}}"#, field: "Backend.MTU", reasonContains: "underlay MTU"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":117}}"#, field: "Backend.MTU", reasonContains: "118 to 65535"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":"1500"}}"#, field: "Backend.MTU", reasonContains: "integer"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#, field: "Backend.Port", reasonContains: "outside"),
        Bad(json: #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#, field: "Backend.DirectRouting", reasonContains: "boolean"),
        Bad(json: #"{"Network":"10.5.0.0/16","EnableIPv4":false}"#, field: "EnableIPv4", reasonContains: "enable at least one"),
    ]

    @Test(arguments: bad)
    func refusesWithFieldAndReason(_ c: Bad) {
        #expect {
            _ = try NetworkConfig.parse(c.json)
        } throws: { error in
            guard let e = error as? ConfigError else { return false }
            return e.field == c.field && e.reason.contains(c.reasonContains)
        }
    }

    @Test func candidateSubnetsAndAllows() throws {
        let c = try NetworkConfig.parse(#"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"vxlan"}}"#)
        #expect(Array(c.candidateSubnets).map(\.description) == ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"])
        #expect(c.allows(subnet("10.9.0.4/30")))
        #expect(!c.allows(subnet("10.9.0.0/30")))  // the first subnet is never handed out
        #expect(!c.allows(subnet("10.9.0.0/29")))
    }
}

@Suite("LeasesTests: lease JSON")
struct LeaseJSONTests {
    @Test func encodesExactlyAsFlannel() {
        let a = LeaseAttributes.vxlan(publicIP: IPv4Address("192.168.64.3")!, vni: 1, vtepMAC: MACAddress("C6:D2:32:6F:8F:44")!)
        #expect(a.json == #"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#)
        let udp = LeaseAttributes.forBackend(BackendConfig(type: "udp"), publicIP: IPv4Address("10.0.0.1")!, vtepMAC: nil)
        #expect(udp.json == #"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#)
        let hostgw = LeaseAttributes.forBackend(BackendConfig(type: "host-gw"), publicIP: IPv4Address("10.0.0.1")!, vtepMAC: nil)
        #expect(hostgw.json == #"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}"#)
    }

    @Test func roundTripsAndReadsFlannelVariants() throws {
        let a = vxlanAttributes("192.168.64.3")
        #expect(try LeaseDecoder.parseAttributes(Array(a.json.utf8)).get() == a)
        // Go's decoder is case-insensitive; flannel also writes PublicIPv6 as a string when dual-stack.
        let variant = #"{"publicip":"192.168.64.3","PublicIPv6":"fd00::1","backendtype":"vxlan","backenddata":{"vni":1,"vtepmac":"C6:D2:32:6F:8F:44"}}"#
        var withIPv6 = a
        withIPv6.publicIPv6 = IPv6Address("fd00::1")
        #expect(try LeaseDecoder.parseAttributes(Array(variant.utf8)).get() == withIPv6)
    }

    @Test func keysIncludingDualStack() {
        #expect(LeaseDecoder.subnet(fromKey: "10.5.52.0-24") == subnet("10.5.52.0/24"))
        #expect(LeaseDecoder.subnet(fromKey: "10.12.13.0-24&fd00:12:13::-56") == subnet("10.12.13.0/24"))
        #expect(LeaseDecoder.subnet(fromKey: "10.5.52.1-24") == nil)
        #expect(LeaseDecoder.subnet(fromKey: "nonsense") == nil)
    }
}

@Suite("LeasesTests: subnet.env, JSON, base64, endpoints")
struct SubnetEnvTests {
    @Test func writesAtomicallyInFlannelOrderAndReadsBack() throws {
        let dir = "/tmp/fxlease-env-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { _ = try? runCommand(["/bin/rm", "-rf", dir]) }
        let path = dir + "/flannel/subnet.env"
        let env = SubnetEnv(network: subnet("10.5.0.0/16"), subnet: subnet("10.5.72.0/24"), mtu: 1450, ipMasq: false)
        let oldMask = umask(0o077)
        defer { umask(oldMask) }
        try env.write(to: path)
        let text = readFile(path)
        #expect(text == "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
        var st = stat()
        stat(path, &st)
        #expect(st.st_mode & 0o777 == 0o644)
        #expect(try SubnetEnv.read(from: path) == env)
        // overwrite: no temp file left behind
        try SubnetEnv(network: subnet("10.5.0.0/16"), subnet: subnet("10.5.9.0/24"), mtu: 1400, ipMasq: true).write(to: path)
        #expect(try SubnetEnv.read(from: path)?.subnet == subnet("10.5.9.0/24"))
        #expect(readFile(path).contains("FLANNEL_IPMASQ=true"))
        #expect(try SubnetEnv.read(from: dir + "/missing.env") == nil)
    }

    @Test func clearErrors() throws {
        #expect(throws: SubnetEnvError.self) { try SubnetEnv.parse("FLANNEL_NETWORK=10.5.0.0/16\n") }
        #expect(throws: SubnetEnvError.self) { try SubnetEnv.parse("FLANNEL_SUBNET=banana\n") }
        do {
            try SubnetEnv(network: subnet("10.5.0.0/16"), subnet: subnet("10.5.1.0/24"), mtu: 1450, ipMasq: false)
                .write(to: "/proc/fxlease-not-writable/subnet.env")
            Issue.record("write to /proc should fail")
        } catch {
            #expect(error.description.contains("--subnet-file"))
        }
    }

    @Test func jsonEdgeCases() throws {
        #expect(try JSONValue.parse(#"{"a":"\u00e9\ud83d\ude00\n","b":[1,-2.5e3,true,null]}"#)["a"]?.stringValue == "é😀\n")
        #expect(throws: JSONParseError.self) { try JSONValue.parse(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(#"{"a":1}x"#) }
        #expect(throws: JSONParseError.self) { try JSONValue.parse(#"{"a":01}"#) }
        #expect(JSONValue.object([JSONMember("k", .string("<&>\"\\"))]).serialized == #"{"k":"\u003c\u0026\u003e\"\\"}"#)
    }

    @Test func base64() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "/coreos.com/network/subnets/"] {
            #expect(Base64.decode(Base64.encode(s)).map { String(decoding: $0, as: UTF8.self) } == s)
        }
        #expect(Base64.encode("foobar") == "Zm9vYmFy")
        #expect(Base64.decode("!!!") == nil)
    }

    @Test func endpoints() throws {
        let e = try EtcdEndpoint(url: "https://10.0.0.1:2379/")
        #expect(e.tls && e.host == "10.0.0.1" && e.port == 2379)
        #expect(try EtcdEndpoint(url: "http://etcd").port == 2379)
        #expect(try EtcdEndpoint(url: "http://[::1]:4001").host == "::1")
        #expect(throws: EtcdClientError.self) { try EtcdEndpoint(url: "etcd:2379") }
        #expect(throws: EtcdClientError.self) { try EtcdEndpoint(url: "http://etcd:99999") }
    }

    /// The start-up warning (docs/SECURITY.md): plain http to anything but this machine.
    @Test func plainHTTPToARemoteEtcd() {
        let local = ["http://127.0.0.1:2379", "http://127.3.4.5:4001", "http://localhost:2379", "http://LOCALHOST",
                     "http://[::1]:2379", "http://[::ffff:127.0.0.1]:2379", "http://[0:0:0:0:0:0:0:1]:2379"]
        let tls = ["https://10.0.0.10:2379", "https://etcd.example:2379", "https://[fd00::1]:2379"]
        let remote = ["http://10.0.0.10:2379", "http://etcd.example:2379", "http://[fd00::1]:2379", "http://128.0.0.1:2379",
                      "http://[::2]:2379", "http://localhost.example:2379", "http://192.168.77.254:2379/"]
        for url in local + tls {
            #expect(EtcdEndpoint.plainTextRemote([url]).isEmpty, "\(url)")
        }
        for url in remote {
            #expect(EtcdEndpoint.plainTextRemote([url]).count == 1, "\(url)")
        }
        // flannel's default endpoints are both local: no warning.
        #expect(EtcdEndpoint.plainTextWarning(EtcdClientOptions.defaultEndpoints) == nil)
        #expect(EtcdEndpoint.plainTextWarning(tls) == nil)
        // One warning naming every remote plain endpoint, comma lists and spaces as the flag allows.
        let warning = EtcdEndpoint.plainTextWarning(["http://127.0.0.1:2379, http://10.0.0.10:2379", "https://10.0.0.11:2379 ", " http://10.0.0.12"])
        #expect(warning?.contains("http://10.0.0.10:2379, http://10.0.0.12:2379 ") == true, "\(warning ?? "nil")")
        #expect(warning?.contains("127.0.0.1") == false && warning?.contains("10.0.0.11") == false)
        #expect(warning?.contains("--etcd-cafile") == true && warning?.contains("https://") == true)
        // Unparseable entries are the client's to report, not this check's.
        #expect(EtcdEndpoint.plainTextRemote(["etcd:2379"]).isEmpty)
    }
}


