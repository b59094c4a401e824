// The package as a node gets it: `make package` builds the .deb and the tarball from the test
// build's binary (linked with the Swift runtime inside, as `make dist` links the release one),
// lintian finds no errors, and the binary unpacked from the .deb runs where the Swift toolchain's
// folder is hidden (its own mount namespace, tmpfs over /opt/swift): --version, --help, and a real
// node in the netns lab, under the unit's privileges (the capability bounding set, no new
// privileges) with the file system read-only except the node's own folder and bpffs, as
// ProtectSystem=strict with ReadWritePaths leaves it. Also: the unit through systemd-analyze
// (verify, and security with the exposure score SECURITY.md records), and the daemon's log lines
// (journald prefixes, JSON) from the binary itself.

@testable import Dataplane
@testable import FlannelDaemon
import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import TestSupport
import TestTraits
import Testing
import UserspaceDataplane

private func repositoryRoot(_ file: String = #filePath) -> String {
    file.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
}

/// Where the Swift toolchain lives on this machine (the package must not need it).
private let toolchainDirectory = "/opt/swift"

/// A shell script that runs "$@" the way the unit runs the daemon, in a mount namespace of its own:
/// the toolchain hidden, everything read-only but `writable` (bind-mounted onto themselves first, so
/// they stay writable when / is remounted read-only), the unit's capability bounding set, no new
/// privileges. Mounts made here never reach the host (`unshare --propagation private`).
private func sandboxCommand(writable: [String], _ command: [String]) -> [String] {
    let binds = writable.map { "mount --bind '\($0)' '\($0)'" }.joined(separator: " && ")
    let script = """
        set -e
        mount -t tmpfs -o ro,size=4k none \(toolchainDirectory)
        \(binds.isEmpty ? ":" : binds)
        mount -o remount,bind,ro /
        exec setpriv --bounding-set=-all,+bpf,+net_admin,+perfmon,+net_raw --no-new-privs "$@"
        """
    return ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sandbox"] + command
}

extension DaemonSuite {
@Suite("The package (root, netns, real etcd)", .serialized, .needsRoot)
struct PackageTests {
    @Test("make package: .deb and tarball; lintian clean; unpacked, it runs without the toolchain and carries a node under the unit's sandbox")
    func packageRunsWithoutToolchain() async throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let out = "/tmp/fxpkg-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", out]) }
        let make = try runProgram("/usr/bin/make", ["-C", repositoryRoot(), "--no-print-directory", "package",
                                                    "BIN_DIR=\(String(binary.dropLast("/flanneld-xdp".count)))", "DIST_DIR=\(out)"])
        try #require(make.status == 0, "make package failed:\n\(make.output.suffix(3000))")
        let version = FlannelDaemonVersion.string
        let arch = try runTool("/usr/bin/dpkg", ["--print-architecture"]).trimmingNewlines
        let deb = "\(out)/flanneld-xdp_\(version)_\(arch).deb"
        let tarball = "\(out)/flanneld-xdp-\(version)-linux-\(unameMachine()).tar.gz"
        #expect(access(deb, R_OK) == 0 && access(tarball, R_OK) == 0, "\(make.output.suffix(500))")

        // The control fields the package promises.
        let depends = try runTool("/usr/bin/dpkg-deb", ["-f", deb, "Depends"])
        for package in ["libbpf1", "libelf1", "libmnl0", "zlib1g", "libc6"] { #expect(depends.contains(package), "\(depends)") }
        #expect(try runTool("/usr/bin/dpkg-deb", ["-f", deb, "Recommends"]).contains("nftables, iptables"))
        let control = "\(out)/control"
        _ = try runTool("/usr/bin/dpkg-deb", ["-e", deb, control])
        #expect(readText(control + "/conffiles") == "/etc/default/flanneld-xdp\n")

        if access("/usr/bin/lintian", X_OK) == 0 {
            let lintian = try runProgram("/usr/bin/lintian", ["--tag-display-limit", "0", deb])
            let errors = lintian.output.split(separator: "\n").filter { $0.hasPrefix("E: ") }
            #expect(lintian.status == 0 && errors.isEmpty, "lintian:\n\(lintian.output)")
        }

        // Unpacked as dpkg would (without running anything): the files a node needs.
        let root = "\(out)/root"
        _ = try runTool("/usr/bin/dpkg-deb", ["-x", deb, root])
        for path in ["/usr/bin/flanneld-xdp", "/usr/lib/systemd/system/flanneld-xdp.service", "/etc/default/flanneld-xdp",
                     "/usr/libexec/flanneld-xdp/mk-docker-opts.sh", "/usr/share/man/man8/flanneld-xdp.8.gz",
                     "/usr/share/bash-completion/completions/flanneld-xdp", "/usr/share/zsh/vendor-completions/_flanneld-xdp",
                     "/usr/share/fish/vendor_completions.d/flanneld-xdp.fish", "/usr/share/doc/flanneld-xdp/copyright",
                     "/usr/share/doc/flanneld-xdp/changelog.gz", "/usr/lib/flanneld-xdp/flanneld_xdp.bpf.o"] {
            #expect(access(root + path, R_OK) == 0, "\(path) missing from the package")
        }
        let defaults = try #require(readText(root + "/etc/default/flanneld-xdp"))
        for variable in ["FLANNEL_ETCD_ENDPOINTS=", "FLANNEL_ETCD_PREFIX=", "FLANNEL_OPTIONS="] {
            #expect(defaults.split(separator: "\n").contains { $0.hasPrefix(variable) }, "the install guide's \(variable)")
        }
        let unit = try #require(readText(root + "/usr/lib/systemd/system/flanneld-xdp.service"))
        #expect(unit.contains("EnvironmentFile=-/etc/default/flanneld-xdp") && unit.contains("ExecStart=/usr/bin/flanneld-xdp "))
        // The tarball holds the same tree.
        let listing = try runTool("/bin/tar", ["-tzf", tarball])
        #expect(listing.contains("./usr/bin/flanneld-xdp\n") && listing.contains("./etc/default/flanneld-xdp\n"))

        // No shared Swift runtime needed: not in the ELF, and it runs with the toolchain hidden.
        let packaged = root + "/usr/bin/flanneld-xdp"
        let needed = try runTool("/usr/bin/objdump", ["-p", packaged]).split(separator: "\n").filter { $0.contains("NEEDED") }
        #expect(!needed.isEmpty && !needed.contains { $0.contains("swift") || $0.contains("Foundation") }, "\(needed)")
        let hiddenVersion = try runProgram(sandboxCommand(writable: [], [packaged, "--version"])[0],
                                           Array(sandboxCommand(writable: [], [packaged, "--version"]).dropFirst()))
        #expect(hiddenVersion.status == 0 && hiddenVersion.output == version + "\n", "\(hiddenVersion.output)")
        let help = sandboxCommand(writable: [], [packaged, "--help"])
        let hiddenHelp = try runProgram(help[0], Array(help.dropFirst()))
        #expect(hiddenHelp.status == 0 && hiddenHelp.output.hasPrefix("OVERVIEW: flannel's node agent"), "\(hiddenHelp.output.prefix(300))")
        // The toolchain really is hidden in there (a control for the two runs above).
        let look = sandboxCommand(writable: [], ["/bin/ls", "-A", toolchainDirectory])
        let lookInside = try runProgram(look[0], Array(look.dropFirst()))
        #expect(lookInside.status == 0 && lookInside.output.isEmpty, "\(lookInside.output)")

        // A real node: node 1 runs the packaged binary in the sandbox, node 2 the test build.
        let cluster = try FlannelCluster(tag: "pkg", api: .v3, daemonPath: packaged, nodes: 2)
        defer { cluster.cleanup() }
        let (n1, n2) = (cluster.nodes[0], cluster.nodes[1])
        let command = sandboxCommand(writable: [cluster.nodeDir(n1)], cluster.daemonArguments(n1))
        let daemon = try cluster.startDaemon(n1, command: command)
        try cluster.startDaemon(n2, command: [binary] + Array(cluster.daemonArguments(n2).dropFirst()))
        #expect(try waitUntil(10) { try cluster.pinnedPeerSubnets(n1) == [n2.podSubnet] } != nil)
        #expect(try cluster.lab.waitForPing(from: n1.podNamespace, to: n2.podIP, timeout: 5))
        #expect(try cluster.lab.waitForPing(from: n2.podNamespace, to: n1.podIP, timeout: 5))
        // The running daemon maps no Swift runtime library, from the toolchain or anywhere.
        let maps = readFile("/proc/\(daemon.pid)/maps")
        #expect(maps.contains("/usr/bin/flanneld-xdp"), "pid \(daemon.pid) is not the packaged daemon:\n\(maps.prefix(500))")
        #expect(!maps.contains(toolchainDirectory) && !maps.contains("libswift"), "\(maps)")
        // Its bounding set is the unit's: CAP_NET_ADMIN(12) CAP_NET_RAW(13) CAP_PERFMON(38) CAP_BPF(39).
        let capBnd = readFile("/proc/\(daemon.pid)/status").split(separator: "\n").first { $0.hasPrefix("CapBnd:") }
        #expect(capBnd?.hasSuffix("000000c000003000") == true, "\(capBnd ?? "none")")
        #expect(cluster.daemonLog(n1).contains("data path: BPF"), "\(cluster.daemonLog(n1).suffix(2000))")
        // The sockets it holds are of the families the unit allows (RestrictAddressFamilies=AF_UNIX
        // AF_INET AF_INET6 AF_NETLINK): every socket inode is in one of those tables, none in packet's.
        // (Sockets this test process holds too were inherited through the spawn, not opened by it.)
        let families = SocketFamilies.ofProcess(daemon.pid, excluding: SocketFamilies.inodes(of: getpid()))
        #expect(!families.isEmpty && families.allSatisfy { ["unix", "netlink", "tcp", "tcp6", "udp", "udp6", "raw"].contains($0.value) },
                "\(families)")
        let status = try cluster.lab.run(n1.name, sandboxCommand(writable: [], [packaged, "status", "--bpffs", cluster.bpffs(n1),
                                                                              "--subnet-file", cluster.subnetFile(n1)]))
        #expect(status.status == 0 && status.stdout.contains("ready:      yes"), "\(status.stdout)\(status.stderr)")
    }

    @Test("systemd-analyze verify and security --offline=true on the unit; the exposure score is the one SECURITY.md records",
          .enabled(if: access("/usr/bin/systemd-analyze", X_OK) == 0, "systemd-analyze is not installed"))
    func unitVerifyAndSecurity() throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let dir = "/tmp/fxops-unit-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        _ = try runTool("/bin/mkdir", ["-p", dir + "/man/man8"])
        // The man page the unit's Documentation= names (verify looks it up with man).
        let docs = try runProgram("/usr/bin/make", ["-C", repositoryRoot(), "--no-print-directory", "generated-docs",
                                                    "BIN_DIR=\(String(binary.dropLast("/flanneld-xdp".count)))", "GEN_DIR=\(dir)/gen"])
        try #require(docs.status == 0, "\(docs.output.suffix(2000))")
        _ = try runTool("/bin/cp", [dir + "/gen/flanneld-xdp.8", dir + "/man/man8/"])
        // The unit as `make install-files` lays it out, pointed at this build's binary and script
        // (verify checks that every command exists and is executable).
        let unit = try #require(readText(repositoryRoot() + "/contrib/systemd/flanneld-xdp.service"))
            .replacing("/usr/local/bin/flanneld-xdp", with: binary)
            .replacing("/usr/local/libexec/flanneld-xdp/mk-docker-opts.sh", with: repositoryRoot() + "/contrib/mk-docker-opts.sh")
        try writeFile(dir + "/flanneld-xdp.service", unit)
        let path = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
        let verify = try runProgram("/usr/bin/systemd-analyze", ["verify", dir + "/flanneld-xdp.service"],
                                    environment: [path, "MANPATH=\(dir)/man"])
        #expect(verify.status == 0, "\(verify.output)")
        // Unknown keys and bad values are only warnings for verify: there must be none.
        #expect(!verify.output.contains("flanneld-xdp.service:"), "\(verify.output)")

        let security = try runProgram("/usr/bin/systemd-analyze", ["security", "--offline=true", "--no-pager", dir + "/flanneld-xdp.service"],
                                      environment: [path])
        // "→ Overall exposure level for flanneld-xdp.service: 3.7 OK :-)" (the face may hold a colon).
        let marker = "Overall exposure level for flanneld-xdp.service:"
        let scoreLine = security.output.split(separator: "\n").first { $0.contains(marker) }
        let score = try #require(scoreLine.flatMap { line in
            line.firstRange(of: marker).flatMap { line[$0.upperBound...].split(separator: " ").first.map(String.init) }
        }, "\(security.output.suffix(1000))")
        let recorded = try #require(readText(repositoryRoot() + "/docs/SECURITY.md"))
        #expect(recorded.contains("exposure level **\(score)**"),
                "systemd-analyze security says \(score): update SECURITY.md's recorded exposure level (and say what changed)")
        // The capability set is exactly the one SECURITY.md's table argues for.
        #expect(unit.contains("\nCapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW\n"))
        for key in ["NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/run/flannel /sys/fs/bpf",
                    "StateDirectory=flanneld-xdp", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "WatchdogSec=",
                    "Type=notify"] {
            #expect(unit.contains("\n" + key), "the unit lost \(key)")
        }
    }

    @Test("the binary's log: journald priority prefixes when JOURNAL_STREAM names its stderr, none otherwise; --log-format=json lines parse")
    func logLinesFromTheBinary() throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let dir = "/tmp/fxlog-\(getpid())-\(UInt16.random(in: 0...UInt16.max))"
        _ = try runTool("/bin/mkdir", ["-p", dir])
        defer { _ = try? runProgram("/bin/rm", ["-rf", dir]) }
        /// Runs the daemon in a network namespace of its own with nothing in it (it logs its start and
        /// the ignored variable, then stops: no interface to use); stderr to `log`.
        func run(_ name: String, journalStream: ((String) -> String)?, extra: [String]) throws -> [String] {
            let log = "\(dir)/\(name).log"
            let fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            var info = stat()
            fstat(fd, &info)
            close(fd)
            var environment = ["PATH=/usr/sbin:/usr/bin:/bin", "FLANNELD_IP_MASQ=maybe"]
            if let journalStream { environment.append("JOURNAL_STREAM=" + journalStream("\(info.st_dev):\(info.st_ino)")) }
            let script = #"exec 2>>"$0"; exec /usr/bin/unshare --net "$@""#
            let result = try runProgram("/bin/sh", ["-c", script, log, binary, "--etcd-endpoints", "http://127.0.0.1:1",
                                                    "--last-known-state", "\(dir)/lk.json", "--subnet-file", "\(dir)/subnet.env"] + extra,
                                        environment: environment)
            #expect(result.status != 0, "no interface to use: the daemon must stop")
            return readFile(log).split(separator: "\n").map(String.init)
        }
        let journal = try run("journal", journalStream: { $0 }, extra: [])
        #expect(journal.contains { $0.hasPrefix("<6>") && $0.contains("flanneld-xdp \(FlannelDaemonVersion.string) starting") }, "\(journal)")
        #expect(journal.contains { $0.hasPrefix("<4>") && $0.contains("FLANNELD_IP_MASQ=\"maybe\"") }, "\(journal)")
        // Every log line is prefixed; only argument-parser's own "Error:" line (not a log line) is not.
        #expect(journal.allSatisfy { $0.hasPrefix("<") || $0.hasPrefix("Error:") }, "\(journal)")

        // Inherited from a parent whose stderr was the journal: the stream is another file now.
        let inherited = try run("inherited", journalStream: { "\($0)9" }, extra: [])
        #expect(!inherited.isEmpty && !inherited.contains { $0.hasPrefix("<") }, "\(inherited)")

        let json = try run("json", journalStream: nil, extra: ["--log-format", "json"])
        let objects = json.filter { !$0.hasPrefix("Error:") }
        #expect(objects.count >= 2, "\(json)")
        for line in objects {
            let fields = try FlatJSON.parse(line)
            #expect(fields["level"] != nil && fields["msg"] != nil && fields["logger"] == .string("flanneld-xdp"), "\(line)")
            if case .string(let time)? = fields["time"] { #expect(time.hasSuffix("Z") && time.count == 24, "\(time)") }
        }
        #expect(objects.contains { $0.contains(#""level":"warning""#) && $0.contains("FLANNELD_IP_MASQ") }, "\(objects)")
    }

    @Test("the Grafana dashboard parses as JSON and the alert rules and dashboard name only series the daemon exports")
    func dashboardAndAlerts() throws {
        let dashboard = try #require(readText(repositoryRoot() + "/contrib/grafana/flanneld-xdp.json"))
        let parsed = try JSONValue.parse(dashboard)
        let panels = try #require(parsed["panels"]?.arrayValue)
        #expect(panels.count >= 10)
        let rules = try #require(readText(repositoryRoot() + "/contrib/prometheus/flanneld-xdp.rules.yml"))
        for alert in ["FlanneldXDPEtcdDown", "FlanneldXDPLeaseExpiringSoon", "FlanneldXDPDrops", "FlanneldXDPUserspacePath",
                      "FlanneldXDPReconcileFailing"] {
            #expect(rules.contains("- alert: \(alert)\n"), "\(alert) missing")
        }
        #expect(!rules.contains("\t"), "YAML must be indented with spaces")
        // Every series name in both files is one the daemon's exposition declares (# TYPE lines).
        let exported = Set(MetricNames.declared(in: MetricNames.fullExposition()))
        for name in MetricNames.referenced(in: dashboard + rules) {
            #expect(exported.contains(name), "\(name) is not exported by the daemon")
        }
    }
}
}

/// Series names in exposition text and in PromQL.
enum MetricNames {
    /// An exposition with every family the daemon can export: the daemon's metrics over a pinned
    /// data path are covered by OperationsClusterTests; here the families whose names the code
    /// fixes, plus the userspace path's.
    static func fullExposition() -> String {
        let metrics = DaemonMetrics(bpffs: nil, dataplane: "bpf-tc", backend: "vxlan")
        metrics.observePass(ReconcileReport(outcomes: [], desiredCount: 0, duration: .milliseconds(1)))
        metrics.observeLease(expiryUnixSeconds: 1, etcdReachable: true)
        metrics.observeLeaseCounters(LeaseCounters().snapshot())
        // The BPF families appear once a pinned counter map is read; their names are fixed here.
        let bpf = ["flanneld_xdp_bpf_packets_total", "flanneld_xdp_bpf_bytes_total", "flanneld_xdp_drops_total",
                   "flanneld_xdp_encap_packets_total", "flanneld_xdp_decap_packets_total"]
            .map { "# TYPE \($0) counter\n" }.joined()
        return metrics.render() + bpf + UserspaceCounters().prometheusText()
    }

    static func declared(in exposition: String) -> [String] {
        exposition.split(separator: "\n").compactMap { line in
            line.hasPrefix("# TYPE ") ? line.split(separator: " ").dropFirst(2).first.map(String.init) : nil
        }
    }

    /// flanneld_xdp_* and process_* names in PromQL, histogram suffixes folded into the family.
    static func referenced(in text: String) -> Set<String> {
        var names: Set<String> = []
        var current = ""
        func flush() {
            if current.hasPrefix("flanneld_xdp_") || current.hasPrefix("process_") {
                var name = current
                for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) && name.contains("duration") {
                    name = String(name.dropLast(suffix.count))
                }
                names.insert(name)
            }
            current = ""
        }
        for c in text {
            if c.isLetter || c.isNumber || c == "_" { current.append(c) } else { flush() }
        }
        flush()
        return names
    }
}

/// The address family of each socket a process holds: its fds' socket inodes, looked up in the
/// per-family tables of its network namespace (/proc/<pid>/net/*).
enum SocketFamilies {
    static func ofProcess(_ pid: pid_t, excluding inherited: Set<UInt64>) -> [UInt64: String] {
        let inodes = inodes(of: pid).subtracting(inherited)
        var result: [UInt64: String] = [:]
        for inode in inodes { result[inode] = "unknown" }
        // Column of the inode in each table (header names differ: "Inode" / "inode").
        for table in ["unix", "netlink", "tcp", "tcp6", "udp", "udp6", "raw", "raw6", "packet"] {
            let lines = readFile("/proc/\(pid)/net/\(table)").split(separator: "\n")
            guard let header = lines.first?.split(separator: " "),
                  let column = header.firstIndex(where: { $0.lowercased() == "inode" }) else { continue }
            for line in lines.dropFirst() {
                let fields = line.split(separator: " ")
                // In the tcp/udp/raw tables the header's "tx_queue rx_queue" and "tr tm->when" are
                // one field each in the rows ("00000000:00000000"), so the row's inode is 2 earlier.
                let index = ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"].contains(table) ? column - 2 : column
                guard index < fields.count, let inode = UInt64(fields[index]), inodes.contains(inode) else { continue }
                result[inode] = table
            }
        }
        return result
    }

    /// The inodes of the sockets among `pid`'s file descriptors.
    static func inodes(of pid: pid_t) -> Set<UInt64> {
        var inodes: Set<UInt64> = []
        let fdDir = "/proc/\(pid)/fd"
        for name in Directory.entryNames(at: fdDir) ?? [] {
            var buffer = [CChar](repeating: 0, count: 256)
            let n = readlink(fdDir + "/" + name, &buffer, buffer.count - 1)
            guard n > 0 else { continue }
            let target = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.hasPrefix("socket:["), let inode = UInt64(target.dropFirst(8).dropLast()) { inodes.insert(inode) }
        }
        return inodes
    }
}

private func unameMachine() -> String {
    var name = utsname()
    uname(&name)
    return withUnsafeBytes(of: name.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
}

private extension String {
    var trimmingNewlines: String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
