// Hostile etcd data: whoever can write under the prefix can put anything in the config, in lease
// values, in lease key names, and a broken disk can leave anything in subnet.env. Random and mutated
// inputs go through the Leases parsers (the same functions the daemon calls); each must return in
// bounded time, never crash (a crash kills this whole test process), and every refusal must be a
// typed error that names the field it refused. Accepted values must be what the daemon can use
// (round trips, canonical subnets, unicast MACs, plausible node addresses).
// `make test`: a few thousand per parser; `make fuzz` (FXDP_FUZZ_LONG=1): 100 000+ each.

import Leases
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("EtcdDataFuzzTests: config, lease JSON, lease keys and subnet.env under random and mutated input", .ownThreads)
struct EtcdDataFuzzTests {
    static let count = FuzzBudget.iterations(short: 4_000, long: 120_000)
    /// No single parse may take longer: 250 ms plus 3 µs per byte (a debug build on a shared machine
    /// parses ~1 µs/byte); a hang or a quadratic blow-up on the 500 KB inputs shows up as minutes.
    static func perInputLimit(_ bytes: Int) -> Duration { .milliseconds(250) + .microseconds(3 * bytes) }

    static let configSeeds = [
        #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        #"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.200.192","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":true,"GBP":false,"Learning":false}}"#,
        #"{"network":"172.16.0.0/12","backend":{"type":"udp","port":8285}}"#,
        #"{"Network":"10.5.0.0/16","EnableIPv4":true,"EnableIPv6":false,"IPv6Network":"fd00::/48","Backend":{"Type":"host-gw"}}"#,
        #"{"Network":"10.0.0.0/8"}"#,
    ]
    static let configFields: Set<String> = [
        "config", "Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6", "Backend",
        "Backend.Type", "Backend.VNI", "Backend.Port", "Backend.MTU", "Backend.DirectRouting", "Backend.GBP",
        "Backend.Learning", "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax",
    ]

    static let leaseSeeds = [
        #"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:c0:a8:4d:01"}}"#,
        #"{"PublicIP":"10.0.0.2","BackendType":"udp"}"#,
        #"{"publicip":"10.0.0.3","backendtype":"vxlan","backenddata":{"vni":4096,"vtepmac":"02:00:00:00:00:09"}}"#,
        #"{"PublicIP":"10.0.0.4"}"#,
    ]

    static func measure<T>(_ body: () -> T) -> (T, Duration) {
        let start = ContinuousClock.now
        let value = body()
        return (value, ContinuousClock.now - start)
    }

    /// Parses `bytes` (as UTF-8 text) with `parse`, timed. An input over its time limit is parsed
    /// and timed once more, since a descheduled thread on a loaded machine is not a hang: `slow` is
    /// the first time when both runs were over the limit, nil otherwise.
    static func timedParse<T, E: Error>(_ bytes: [UInt8], _ parse: (String) throws(E) -> T) -> (result: Result<T, E>, slow: Duration?) {
        let text = String(decoding: bytes, as: UTF8.self)
        let attempt = { Result { () throws(E) in try parse(text) } }
        let (result, took) = measure(attempt)
        guard took > perInputLimit(bytes.count), measure(attempt).1 > perInputLimit(bytes.count) else { return (result, nil) }
        return (result, took)
    }

    static func input(_ n: Int, seeds: [String], _ rng: inout SplitMix64) -> [UInt8] {
        switch n % 10 {
        case 0: return Mutate.randomBytes(Int.random(in: 0...300, using: &rng), &rng)
        case 1: return Array(seeds.randomElement(using: &rng)!.utf8.prefix(Int.random(in: 0...200, using: &rng)))
        default: return Mutate.text(seeds.randomElement(using: &rng)!, &rng)
        }
    }

    /// Pathological documents every JSON reader here must refuse or accept quickly.
    static let pathological: [String] = [
        String(repeating: "[", count: 200_000),
        String(repeating: "{\"a\":", count: 100_000),
        "{\"Network\":\"" + String(repeating: "9", count: 500_000) + "\"}",
        "{\"Network\":\"10.5.0.0/16\",\"SubnetLen\":" + String(repeating: "9", count: 100_000) + "}",
        "{" + (0..<20_000).map { "\"k\($0)\":\($0)" }.joined(separator: ",") + "}",
        "{\"Network\":\"10.5.0.0/16\"" + String(repeating: ",\"Network\":\"10.6.0.0/16\"", count: 20_000) + "}",
        "\"" + String(repeating: "\\u0000", count: 100_000) + "\"",
        "{\"Network\":\"\u{FEFF}10.5.0.0/16\"}", "\u{FEFF}{}", "", " ", "null", "0", "-", "1e999999999",
    ]

    @Test func networkConfig() {
        let seed = FuzzBudget.seed()
        var rng = SplitMix64(state: seed)
        var accepted = 0
        var problems: [String] = []
        let inputs = (0..<EtcdDataFuzzTests.count).map { EtcdDataFuzzTests.input($0, seeds: EtcdDataFuzzTests.configSeeds, &rng) }
            + EtcdDataFuzzTests.pathological.map { Array($0.utf8) }
        for (n, bytes) in inputs.enumerated() where problems.count < 10 {
            let text = String(decoding: bytes, as: UTF8.self)
            let (result, slow) = EtcdDataFuzzTests.timedParse(bytes) { text throws(ConfigError) in try NetworkConfig.parse(text) }
            if let slow { problems.append("seed \(seed) #\(n): \(slow) for \(text.prefix(120))") }
            switch result {
            case .success(let c):
                accepted += 1
                // What the daemon relies on when it accepts a config.
                let v4 = !c.enableIPv4 || c.subnetLen > c.network.prefixLength && c.subnetLen <= 30 && c.network.contains(c.subnetMin)
                    && c.network.contains(c.subnetMax) && c.subnetMin <= c.subnetMax
                let v6 = c.ipv6.map { v6 in
                    v6.subnetLen > v6.network.prefixLength && v6.subnetLen <= 126 && v6.network.contains(v6.subnetMin)
                        && v6.network.contains(v6.subnetMax) && v6.subnetMin <= v6.subnetMax
                } ?? c.enableIPv4
                if !(v4 && v6 && c.backend.vni <= 0xFF_FFFF) {
                    problems.append("seed \(seed) #\(n): accepted an unusable config \(c) from \(text.prefix(200))")
                }
            case .failure(let e):
                if !EtcdDataFuzzTests.configFields.contains(e.field) || e.reason.isEmpty {
                    problems.append("seed \(seed) #\(n): refusal names no known field: \(e) for \(text.prefix(200))")
                }
            }
        }
        print("EtcdDataFuzzTests.networkConfig: \(inputs.count) inputs, \(accepted) accepted, seed \(seed)")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(accepted > 0, "the mutator never produced a valid config: the test would prove nothing")
    }

    @Test func leaseValues() throws {
        let seed = FuzzBudget.seed()
        var rng = SplitMix64(state: seed)
        let config = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
        var accepted = 0
        var reasons: Set<LeaseRejection> = []
        var problems: [String] = []
        let inputs = (0..<EtcdDataFuzzTests.count).map { EtcdDataFuzzTests.input($0, seeds: EtcdDataFuzzTests.leaseSeeds, &rng) }
            + EtcdDataFuzzTests.pathological.map { Array($0.utf8) } + [Array(repeating: 0x20, count: 70_000)]
        for (n, bytes) in inputs.enumerated() where problems.count < 10 {
            let (result, took) = EtcdDataFuzzTests.measure {
                LeaseDecoder.decode(key: "10.5.7.0-24", value: bytes, isReservation: false, ttl: nil, revision: 1, config: config)
            }
            if took > EtcdDataFuzzTests.perInputLimit(bytes.count), EtcdDataFuzzTests.measure({
                LeaseDecoder.decode(key: "10.5.7.0-24", value: bytes, isReservation: false, ttl: nil, revision: 1, config: config)
            }).1 > EtcdDataFuzzTests.perInputLimit(bytes.count) {
                problems.append("seed \(seed) #\(n): \(took)")
            }
            switch result {
            case .success(let lease):
                accepted += 1
                let ip = lease.attributes.publicIP
                let mac = lease.attributes.vtepMAC
                // Accepted leases become map entries and routes: only plausible unicast values.
                if ip.value == 0 || ip.value >> 24 == 127 || ip.value >> 24 >= 224 || mac == nil || mac!.isZero || mac!.isMulticast
                    || lease.subnet != IPv4Subnet(cidr: "10.5.7.0/24")! {
                    problems.append("seed \(seed) #\(n): accepted \(lease) from \(String(decoding: bytes.prefix(200), as: UTF8.self))")
                }
            case .failure(let e):
                reasons.insert(e.reason)
                if e.detail.isEmpty || e.key != "10.5.7.0-24" { problems.append("seed \(seed) #\(n): untyped/unnamed refusal \(e)") }
            }
        }
        print("EtcdDataFuzzTests.leaseValues: \(inputs.count) inputs, \(accepted) accepted, refusal reasons \(reasons.map(\.rawValue).sorted()), seed \(seed)")
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(accepted > 0)
        #expect(reasons.count >= 5, "the mutator reached only \(reasons)")
    }

    @Test func leaseKeys() {
        let seed = FuzzBudget.seed()
        var rng = SplitMix64(state: seed)
        let seeds = ["10.5.52.0-24", "10.12.13.0-24&fd00:12:13::-56", "0.0.0.0-0", "255.255.255.252-30"]
        var accepted = 0
        var problems: [String] = []
        for n in 0..<EtcdDataFuzzTests.count * 2 where problems.count < 10 {
            let bytes = n % 5 == 0 ? Mutate.randomBytes(Int.random(in: 0...40, using: &rng), &rng)
                : Mutate.text(seeds.randomElement(using: &rng)!, &rng)
            let key = String(decoding: bytes, as: UTF8.self)
            let (subnet, took) = EtcdDataFuzzTests.measure { LeaseDecoder.subnet(fromKey: key) }
            if took > EtcdDataFuzzTests.perInputLimit(bytes.count) {
                // A slow input is measured again: a descheduled test thread on a loaded machine is not a hang.
                let (_, again) = EtcdDataFuzzTests.measure { LeaseDecoder.subnet(fromKey: key) }
                if again > EtcdDataFuzzTests.perInputLimit(bytes.count) { problems.append("seed \(seed) #\(n): \(took), again \(again) for \(key.debugDescription)") }
            }
            guard let subnet else { continue }
            accepted += 1
            // A key the daemon accepts names exactly one canonical subnet: its own key spelling
            // parses back to it, and no host bits are set (IPv4Subnet refuses those).
            let v4Part = key.split(separator: "&", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            if IPv4Subnet(leaseKey: subnet.leaseKey) != subnet || !(0...32).contains(subnet.prefixLength)
                || subnet.address.value & ~subnet.mask != 0 || !v4Part.hasPrefix("\(subnet.address)") {
                problems.append("seed \(seed) #\(n): key \(key.debugDescription) → \(subnet)")
            }
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(accepted > 0)
    }

    @Test func subnetEnvFiles() {
        let seed = FuzzBudget.seed()
        var rng = SplitMix64(state: seed)
        let seeds = [
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "# written by flanneld\nFLANNEL_NETWORK=\"10.244.0.0/16\"\r\nFLANNEL_SUBNET=10.244.1.1/24\r\nFLANNEL_MTU=8951\r\nFLANNEL_IPMASQ=true\r\n",
            "FLANNEL_SUBNET=10.5.3.1/24\n",
        ]
        var accepted = 0
        var problems: [String] = []
        for n in 0..<EtcdDataFuzzTests.count where problems.count < 10 {
            let bytes = EtcdDataFuzzTests.input(n, seeds: seeds, &rng)
            let (result, slow) = EtcdDataFuzzTests.timedParse(bytes) { text throws(SubnetEnvError) in
                try SubnetEnv.parse(text, path: "/fuzz/subnet.env")
            }
            if let slow { problems.append("seed \(seed) #\(n): \(slow)") }
            switch result {
            case .success(let env):
                accepted += 1
                // What it accepted must survive a write/read cycle unchanged (the daemon rewrites it).
                if (try? SubnetEnv.parse(env.contents)) != env {
                    problems.append("seed \(seed) #\(n): \(env) does not round-trip: \(env.contents.debugDescription)")
                }
            case .failure(let e):
                if !(e.detail.hasPrefix("FLANNEL_SUBNET:") || e.detail.hasPrefix("FLANNEL_NETWORK:")) || e.path != "/fuzz/subnet.env" {
                    problems.append("seed \(seed) #\(n): refusal names no variable: \(e)")
                }
            }
        }
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(accepted > 0)
    }
}
