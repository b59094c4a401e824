import ArgumentParser
import FlannelDaemon
import Glibc
import NetTypes
import Testing

/// Parses like the binary does (Go forms + env) and returns the root command's options.
private func parseRun(_ arguments: [String], env: [String: String] = [:]) throws -> FlannelOptions {
    let command = try FlanneldXDP.parseGoStyle(arguments, environment: env)
    let root = try #require(command as? FlanneldXDP, "parsed \(type(of: command)), expected the root command")
    return root.options
}

/// The message and exit code argument-parser would print for arguments that must fail.
private func failure(_ arguments: [String], env: [String: String] = [:]) -> (message: String, code: Int32) {
    do {
        _ = try FlanneldXDP.parseGoStyle(arguments, environment: env)
        return ("parsed without error", 0)
    } catch {
        return (FlanneldXDP.fullMessage(for: error), FlanneldXDP.exitCode(for: error).rawValue)
    }
}

extension DaemonSuite {
@Suite("Flags: flanneld's spellings, Go forms and FLANNELD_* environment")
struct FlagTests {
    @Test("defaults match flanneld's")
    func defaults() throws {
        let o = try parseRun([])
        #expect(o.interface.iface.isEmpty)
        #expect(o.interface.ifaceRegex.isEmpty)
        #expect(o.interface.publicIP == nil)
        #expect(o.etcd.endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379")
        #expect(o.etcd.endpointList == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"])
        #expect(o.etcd.prefix == "/coreos.com/network")
        #expect(o.etcd.api == .auto)
        #expect(o.subnet.subnetFile == "/run/flannel/subnet.env")
        #expect(o.subnet.subnetLeaseRenewMargin == 60)
        #expect(o.subnet.subnetLeaseTTL == 24 * 3600)
        #expect(o.subnet.ipMasq == false)
        #expect(o.serving.healthzIP == IPv4Address(0, 0, 0, 0))
        #expect(o.serving.healthzPort == 0)
        #expect(o.serving.metricsPort == 0)
        #expect(o.dataplane.dataplane == .auto)
        #expect(o.dataplane.bpffs == "/sys/fs/bpf")
        #expect(o.logging.logLevel == .info)
    }

    @Test("all four Go forms of a value flag", arguments: [
        ["-iface=eth0"], ["-iface", "eth0"], ["--iface=eth0"], ["--iface", "eth0"],
    ])
    func goForms(_ arguments: [String]) throws {
        #expect(try parseRun(arguments).interface.iface == ["eth0"])
    }

    @Test("boolean forms", arguments: [
        (["-ip-masq"], true), (["--ip-masq"], true), (["--ip-masq=true"], true), (["-ip-masq=1"], true),
        (["--ip-masq=false"], false), (["-ip-masq=F"], false), ([], false), (["--ip-masq", "--ip-masq=false"], false),
    ])
    func booleans(_ arguments: [String], _ expected: Bool) throws {
        #expect(try parseRun(arguments).subnet.ipMasq == expected)
    }

    @Test("repeatable --iface and --iface-regex keep their order")
    func repeatable() throws {
        let o = try parseRun(["-iface", "eth1", "--iface=10.0.0.5", "-iface-regex=^en", "--iface-regex", "eth[0-9]"])
        #expect(o.interface.iface == ["eth1", "10.0.0.5"])
        #expect(o.interface.ifaceRegex == ["^en", "eth[0-9]"])
    }

    @Test("every flag, typed values")
    func everyFlag() throws {
        let o = try parseRun([
            "-public-ip=192.0.2.7", "-etcd-endpoints=https://10.0.0.1:2379", "-etcd-prefix", "/kube-centos/network",
            "-etcd-cafile=/ca.pem", "-etcd-certfile=/c.pem", "-etcd-keyfile=/k.pem", "-etcd-username=u", "-etcd-password=p",
            "-etcd-api=v2", "-subnet-file=/tmp/s.env", "-subnet-lease-renew-margin=30", "-healthz-ip=127.0.0.1",
            "-healthz-port=8471", "-metrics-port", "9101", "-dataplane=userspace", "-bpffs=/run/x/bpf", "-log-level=debug",
        ])
        #expect(o.interface.publicIP == IPv4Address(192, 0, 2, 7))
        #expect(o.etcd.endpointList == ["https://10.0.0.1:2379"])
        #expect(o.etcd.prefix == "/kube-centos/network")
        #expect(o.etcd.caFile == "/ca.pem" && o.etcd.certFile == "/c.pem" && o.etcd.keyFile == "/k.pem")
        #expect(o.etcd.username == "u" && o.etcd.password == "p")
        #expect(o.etcd.api == .v2)
        #expect(o.subnet.subnetFile == "/tmp/s.env")
        #expect(o.subnet.subnetLeaseRenewMargin == 30)
        #expect(o.serving.healthzIP == IPv4Address(127, 0, 0, 1))
        #expect(o.serving.healthzPort == 8471)
        #expect(o.serving.metricsPort == 9101)
        #expect(o.dataplane.dataplane == .userspace)
        #expect(o.dataplane.bpffs == "/run/x/bpf")
        #expect(o.logging.logLevel == .debug)
    }

    @Test("FLANNELD_* environment fills unset flags; a flag beats its variable")
    func environment() throws {
        let env = [
            "FLANNELD_IFACE": "eth7", "FLANNELD_ETCD_ENDPOINTS": "http://10.1.1.1:2379",
            "FLANNELD_IP_MASQ": "true", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "15", "FLANNELD_ETCD_PREFIX": "/env/prefix",
            "FLANNELD_DATAPLANE": "tc", "FLANNELD_HEALTHZ_PORT": "", // empty: ignored, like unset
        ]
        let fromEnv = try parseRun([], env: env)
        #expect(fromEnv.interface.iface == ["eth7"])
        #expect(fromEnv.etcd.endpointList == ["http://10.1.1.1:2379"])
        #expect(fromEnv.subnet.ipMasq)
        #expect(fromEnv.subnet.subnetLeaseRenewMargin == 15)
        #expect(fromEnv.dataplane.dataplane == .tc)
        #expect(fromEnv.serving.healthzPort == 0)

        let flagsWin = try parseRun(["-iface=eth0", "--ip-masq=false", "--etcd-prefix", "/flag/prefix"], env: env)
        #expect(flagsWin.interface.iface == ["eth0"])
        #expect(flagsWin.subnet.ipMasq == false)
        #expect(flagsWin.etcd.prefix == "/flag/prefix")
        #expect(flagsWin.etcd.endpointList == ["http://10.1.1.1:2379"])
    }

    @Test("--subnet-lease-ttl (ours, not flanneld's): seconds, its variable, the shortest renewable TTL")
    func subnetLeaseTTL() throws {
        #expect(try parseRun(["--subnet-lease-ttl=4"]).subnet.subnetLeaseTTL == 4)
        #expect(try parseRun(["-subnet-lease-ttl", "2"]).subnet.subnetLeaseTTL == 2)
        #expect(try parseRun([], env: ["FLANNELD_SUBNET_LEASE_TTL": "30"]).subnet.subnetLeaseTTL == 30)
        #expect(try parseRun(["--subnet-lease-ttl=7"], env: ["FLANNELD_SUBNET_LEASE_TTL": "30"]).subnet.subnetLeaseTTL == 7)
        for bad in ["1", "0", "-5", "31536001", "4s", "24h", ""] {
            let (message, code) = failure(["--subnet-lease-ttl=\(bad)"])
            #expect(code != 0, "--subnet-lease-ttl=\(bad) must fail")
            #expect(message.contains("subnet-lease-ttl"), "\(bad): \(message)")
        }
        // (The binary adds the variable's name: FlagErrorTests.)
        let (message, code) = failure([], env: ["FLANNELD_SUBNET_LEASE_TTL": "1"])
        #expect(code != 0 && message.contains("--subnet-lease-ttl=1"), "\(message)")
    }

    @Test("env names are FLANNELD_ + upper case with underscores")
    func environmentNames() {
        #expect(GoFlagSpec("iface-regex").environmentName == "FLANNELD_IFACE_REGEX")
        #expect(GoFlagSpec("subnet-lease-renew-margin").environmentName == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN")
    }

    @Test("a value that starts with '-' is still the flag's value, as in Go")
    func dashValue() throws {
        #expect(try parseRun(["--iface-regex", "-x"]).interface.ifaceRegex == ["-x"])
    }

    @Test("unknown and malformed flags fail with the flag and the value named", arguments: [
        (["--bogus"], "--bogus"),
        (["-bogus=1"], "--bogus"),
        (["--healthz-port=abc"], "abc"),
        (["--healthz-port=70000"], "--healthz-port=70000"),
        (["--public-ip=1.2.3"], "1.2.3"),
        (["--dataplane=ebpf"], "ebpf"),
        (["--etcd-api", "v4"], "v4"),
        (["--ip-masq=yes"], "\"yes\" for --ip-masq"),
        (["--iface"], "flag needs an argument: --iface"),
        (["--subnet-lease-renew-margin=0"], "--subnet-lease-renew-margin=0"),
        (["--subnet-lease-renew-margin=1440"], "--subnet-lease-renew-margin=1440"),
        (["--etcd-endpoints=127.0.0.1:2379"], "127.0.0.1:2379"),
        (["--etcd-certfile=/c.pem"], "--etcd-keyfile"),
        (["--iface-regex=("], "--iface-regex=("),
        (["--bpffs=relative/path"], "relative/path"),
        (["stray"], "stray"),
    ])
    func malformed(_ arguments: [String], _ mentions: String) {
        let (message, code) = failure(arguments)
        #expect(code != 0, "\(arguments) must fail")
        #expect(message.contains(mentions), "message for \(arguments): \(message)")
    }

    @Test("a bad boolean in the environment names the variable")
    func badEnvironmentBoolean() {
        let (message, code) = failure([], env: ["FLANNELD_IP_MASQ": "maybe"])
        #expect(code != 0)
        #expect(message.contains("FLANNELD_IP_MASQ"))
    }

    @Test("subcommands and their flags")
    func subcommands() throws {
        let cleanup = try FlanneldXDP.parseGoStyle(["cleanup", "-keep-kernel-path", "-bpffs", "/run/b"], environment: [:])
        let c = try #require(cleanup as? Cleanup)
        #expect(c.keepKernelPath)
        #expect(c.inspection.bpffs == "/run/b")
        let plain = try #require(try FlanneldXDP.parseGoStyle(["cleanup"], environment: ["FLANNELD_BPFFS": "/run/e"]) as? Cleanup)
        #expect(!plain.keepKernelPath)
        #expect(plain.inspection.bpffs == "/run/e")
        let peers = try #require(try FlanneldXDP.parseGoStyle(["peers", "--json"], environment: [:]) as? Peers)
        #expect(peers.json)
        #expect(try FlanneldXDP.parseGoStyle(["status"], environment: [:]) is Status)
        #expect(try FlanneldXDP.parseGoStyle(["stats"], environment: [:]) is Stats)
        // A daemon flag is not a cleanup flag.
        #expect(failure(["cleanup", "--iface=eth0"]).code != 0)
    }

    @Test("the normaliser table and the help text name the same flags")
    func normalizerMatchesHelp() {
        func longFlags(_ help: String) -> Set<String> {
            var names: Set<String> = []
            for word in help.split(whereSeparator: { " ,[]<>()\n".contains($0) }) where word.hasPrefix("--") {
                let name = word.dropFirst(2).prefix { $0.isLetter || $0 == "-" }
                if !name.isEmpty && name.first!.isLetter { names.insert(String(name)) }
            }
            return names
        }
        let normalizer = FlanneldXDP.flagNormalizer
        let rootHelp = FlanneldXDP.helpMessage(columns: 200)
        let rootFromHelp = longFlags(rootHelp)
        #expect(Set(normalizer.rootFlags.map(\.name)) == rootFromHelp, "\(rootHelp)")
        for (name, command) in [("cleanup", Cleanup.self), ("status", Status.self), ("peers", Peers.self), ("stats", Stats.self)] as [(String, any ParsableCommand.Type)] {
            let help = FlanneldXDP.helpMessage(for: command, columns: 200)
            #expect(Set(normalizer.subcommandFlags[name]?.map(\.name) ?? []) == longFlags(help), "\(name): \(help)")
        }
    }
}
}
