// Packaging: the systemd unit and sysconfig example speak the install guide's variables,
// contrib/mk-docker-opts.sh turns the subnet.env we write into flannel's Docker options, and
// `make install-files` puts everything in place under a DESTDIR.

import Glibc
import Leases
import NetTypes
import TestSupport
import TestTraits
import Testing

/// The repository's root (this file is Tests/FlannelDaemonTests/<name>.swift).
private func repositoryRoot(_ file: String = #filePath) -> String {
    file.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
}

@Suite("Operations: packaging", .ownThreads)
struct OperationsPackagingTests {
    @Test("the unit: Type=notify, the install guide's EnvironmentFile variables, flanneld's ExecStart shape")
    func systemdUnit() throws {
        let unit = try #require(readText(repositoryRoot() + "/contrib/systemd/flanneld-xdp.service"))
        let lines = unit.split(separator: "\n").map(String.init)
        #expect(lines.contains("Type=notify"))
        // The Debian package's conffile, then the install guide's place; either may be missing.
        #expect(lines.contains("EnvironmentFile=-/etc/default/flanneld-xdp"))
        #expect(lines.contains("EnvironmentFile=-/etc/sysconfig/flanneld-xdp"))
        #expect(lines.contains("ExecStart=/usr/local/bin/flanneld-xdp -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS} -etcd-prefix=${FLANNEL_ETCD_PREFIX} $FLANNEL_OPTIONS"))
        #expect(lines.contains("WantedBy=multi-user.target"))
        let sysconfig = try #require(readText(repositoryRoot() + "/contrib/sysconfig/flanneld-xdp"))
        for variable in ["FLANNEL_ETCD_ENDPOINTS=", "FLANNEL_ETCD_PREFIX=", "FLANNEL_OPTIONS="] {
            #expect(sysconfig.split(separator: "\n").contains { $0.hasPrefix(variable) })
        }
    }

    @Test("mk-docker-opts.sh: flannel's variables from the subnet.env we write, each flag")
    func mkDockerOpts() throws {
        let dir = "/tmp/fxops-mkdo-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        let script = repositoryRoot() + "/contrib/mk-docker-opts.sh"
        let env = SubnetEnv(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.72.0/24")!, mtu: 1450, ipMasq: false)
        try env.write(to: dir + "/subnet.env")

        _ = try runTool("/bin/sh", [script, "-f", dir + "/subnet.env", "-d", dir + "/docker_opts.env"])
        #expect(readText(dir + "/docker_opts.env") == """
            DOCKER_OPT_BIP="--bip=10.5.72.1/24"
            DOCKER_OPT_IPMASQ="--ip-masq=true"
            DOCKER_OPT_MTU="--mtu=1450"
            DOCKER_OPTS=" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450"

            """)

        // flanneld's unit: -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker (combined only when -c; both by default).
        _ = try runTool("/bin/sh", [script, "-f", dir + "/subnet.env", "-d", dir + "/docker", "-k", "DOCKER_NETWORK_OPTIONS"])
        #expect(readText(dir + "/docker")?.hasSuffix("DOCKER_NETWORK_OPTIONS=\" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450\"\n") == true)

        // -c only, -m (no --ip-masq); FLANNEL_IPMASQ=true turns Docker's masquerading off.
        var masq = env
        masq.ipMasq = true
        try masq.write(to: dir + "/subnet.env")
        _ = try runTool("/bin/sh", [script, "-f", dir + "/subnet.env", "-d", dir + "/c.env", "-c"])
        #expect(readText(dir + "/c.env") == "DOCKER_OPTS=\" --bip=10.5.72.1/24 --ip-masq=false --mtu=1450\"\n")
        _ = try runTool("/bin/sh", [script, "-f", dir + "/subnet.env", "-d", dir + "/i.env", "-i", "-m"])
        #expect(readText(dir + "/i.env") == "DOCKER_OPT_BIP=\"--bip=10.5.72.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n")

        // FLANNEL_IPMASQ other than true/false is an error, as in flannel's script.
        try writeFile(dir + "/badmasq.env", "FLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=yes\n")
        #expect(try runProgram("/bin/sh", [script, "-f", dir + "/badmasq.env", "-d", dir + "/x.env"]).status != 0)
        // A variable missing from subnet.env leaves its option out.
        try writeFile(dir + "/partial.env", "FLANNEL_SUBNET=10.5.72.1/24\n")
        _ = try runTool("/bin/sh", [script, "-f", dir + "/partial.env", "-d", dir + "/p.env", "-c"])
        #expect(readText(dir + "/p.env") == "DOCKER_OPTS=\" --bip=10.5.72.1/24\"\n")

        // Dual-stack: flannel's script has no IPv6 options; the IPv6 lines change nothing, and an
        // IPv6-only subnet.env gives no --bip.
        let dual = SubnetEnv(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.72.0/24")!, mtu: 1450, ipMasq: false,
                             ipv6Network: IPv6Subnet(cidr: "fd00:5::/48")!, ipv6Subnet: IPv6Subnet(cidr: "fd00:5:0:48::/64")!)
        try dual.write(to: dir + "/dual.env")
        _ = try runTool("/bin/sh", [script, "-f", dir + "/dual.env", "-d", dir + "/dual.opts", "-c"])
        #expect(readText(dir + "/dual.opts") == "DOCKER_OPTS=\" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450\"\n")
        var ipv6Only = dual
        ipv6Only.enableIPv4 = false
        try ipv6Only.write(to: dir + "/v6.env")
        _ = try runTool("/bin/sh", [script, "-f", dir + "/v6.env", "-d", dir + "/v6.opts", "-c"])
        #expect(readText(dir + "/v6.opts") == "DOCKER_OPTS=\" --ip-masq=true --mtu=1450\"\n")

        // Bad input: a missing file, a bad key, an unknown flag — non-zero, nothing written.
        #expect(try runProgram("/bin/sh", [script, "-f", dir + "/absent.env", "-d", dir + "/x.env"]).status != 0)
        #expect(try runProgram("/bin/sh", [script, "-f", dir + "/subnet.env", "-d", dir + "/x.env", "-k", "A B"]).status != 0)
        #expect(try runProgram("/bin/sh", [script, "-z"]).status != 0)
        #expect(readText(dir + "/x.env") == nil)
    }

    @Test("mk-docker-opts.sh -k KEY keeps KEY's existing value in front of the options, byte for byte as flannel's script")
    func mkDockerOptsKeepsExistingKey() throws {
        let dir = "/tmp/fxops-mkdk-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        let script = repositoryRoot() + "/contrib/mk-docker-opts.sh"
        try SubnetEnv(network: IPv4Subnet(cidr: "10.5.0.0/16")!, subnet: IPv4Subnet(cidr: "10.5.72.0/24")!, mtu: 1450, ipMasq: false)
            .write(to: dir + "/subnet.env")
        let path = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
        // The install guide's unit: /etc/sysconfig/docker-network sets DOCKER_NETWORK_OPTIONS, then
        // ExecStartPost=mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS -d /run/flannel/docker.
        let kept = try runProgram("/bin/sh", [script, "-k", "DOCKER_NETWORK_OPTIONS", "-f", dir + "/subnet.env", "-d", dir + "/docker"],
                                  environment: [path, "DOCKER_NETWORK_OPTIONS=--insecure-registry=registry.local:5000 --log-level=warn"])
        #expect(kept.status == 0, "\(kept.output)")
        #expect(readText(dir + "/docker") == """
            DOCKER_OPT_BIP="--bip=10.5.72.1/24"
            DOCKER_OPT_IPMASQ="--ip-masq=true"
            DOCKER_OPT_MTU="--mtu=1450"
            DOCKER_NETWORK_OPTIONS="--insecure-registry=registry.local:5000 --log-level=warn  --bip=10.5.72.1/24 --ip-masq=true --mtu=1450"

            """)
        // Set but empty: as if unset.
        _ = try runProgram("/bin/sh", [script, "-c", "-k", "DOCKER_NETWORK_OPTIONS", "-f", dir + "/subnet.env", "-d", dir + "/empty"],
                           environment: [path, "DOCKER_NETWORK_OPTIONS="])
        #expect(readText(dir + "/empty") == "DOCKER_NETWORK_OPTIONS=\" --bip=10.5.72.1/24 --ip-masq=true --mtu=1450\"\n")
        // A value that would break out of the double quotes is refused, naming the variable; nothing written.
        let quoted = try runProgram("/bin/sh", [script, "-k", "DOCKER_NETWORK_OPTIONS", "-f", dir + "/subnet.env", "-d", dir + "/bad"],
                                    environment: [path, "DOCKER_NETWORK_OPTIONS=--label=\"x\""])
        #expect(quoted.status != 0 && quoted.output.contains("DOCKER_NETWORK_OPTIONS"), "\(quoted.output)")
        #expect(readText(dir + "/bad") == nil)
    }

    @Test("make install-files DESTDIR=… PREFIX=/usr puts binary, BPF objects, unit, script and docs in place")
    func installIntoDestdir() throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let binDir = String(binary.dropLast("/flanneld-xdp".count))
        let destdir = "/tmp/fxops-install-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", destdir]) }
        let make = try runProgram("/usr/bin/make", ["-C", repositoryRoot(), "--no-print-directory", "install-files",
                                                     "BIN_DIR=\(binDir)", "DESTDIR=\(destdir)", "PREFIX=/usr"])
        #expect(make.status == 0, "\(make.output)")
        let root = destdir + "/usr"
        #expect(access(root + "/bin/flanneld-xdp", X_OK) == 0)
        #expect(access(root + "/libexec/flanneld-xdp/mk-docker-opts.sh", X_OK) == 0)
        #expect(access(root + "/lib/flanneld-xdp/flanneld_xdp.bpf.o", R_OK) == 0)
        #expect(access(root + "/share/doc/flanneld-xdp/OPERATIONS.md", R_OK) == 0)
        #expect(access(root + "/share/doc/flanneld-xdp/examples/sysconfig-flanneld-xdp", R_OK) == 0)
        #expect(access(root + "/share/man/man8/flanneld-xdp.8", R_OK) == 0)
        #expect(access(root + "/share/bash-completion/completions/flanneld-xdp", R_OK) == 0)
        #expect(access(root + "/share/doc/flanneld-xdp/examples/grafana-flanneld-xdp.json", R_OK) == 0)
        let unit = try #require(readText(root + "/lib/systemd/system/flanneld-xdp.service"))
        #expect(unit.contains("ExecStart=/usr/bin/flanneld-xdp -etcd-endpoints=${FLANNEL_ETCD_ENDPOINTS}"))
        #expect(unit.contains("ExecStartPost=-/usr/libexec/flanneld-xdp/mk-docker-opts.sh"))
        #expect(!unit.contains("/usr/local"))
        let version = try runProgram(root + "/bin/flanneld-xdp", ["--version"])
        #expect(version.status == 0)
    }
}
