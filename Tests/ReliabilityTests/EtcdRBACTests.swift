// etcd v3 RBAC limited to the flannel prefix, against a real etcd 3.4 (the FlannelCluster's, on the
// lab's wire): the role and users are made by running the `etcdctl` lines of docs/SECURITY.md
// ("RBAC limited to the prefix") as they are written, so the documentation cannot drift from what
// is tested. Then daemons logged in as prefix-limited users acquire, renew (a 4 s TTL), watch and
// carry traffic; the same user cannot write outside the prefix; wrong credentials end start-up at
// once with a line naming the user; a user without the role gets a clear, rate-limited
// permission error.

import Foundation
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("EtcdRBACTests: etcd v3 RBAC limited to the prefix, as docs/SECURITY.md sets it up", .serialized,
       .needsRoot, .ownThreads)
struct EtcdRBACTests {
    static let rootPassword = "fx-root-pw"
    static let nodePasswords = ["node1": "fx-node1-pw", "node2": "fx-node2-pw"]

    /// The `etcdctl` lines of the first ```sh block under "### RBAC limited to the prefix" in
    /// docs/SECURITY.md, each `node1` line followed by its `node2` twin (the doc says to repeat them
    /// per node).
    static func documentedCommands() throws -> [String] {
        let text = try String(contentsOfFile: NoShellTests.repositoryRoot + "/docs/SECURITY.md", encoding: .utf8)
        guard let section = text.range(of: "### RBAC limited to the prefix"),
              let open = text.range(of: "```sh\n", range: section.upperBound..<text.endIndex),
              let close = text.range(of: "```", range: open.upperBound..<text.endIndex) else {
            throw LabError(command: [], message: "docs/SECURITY.md: no ```sh block under \"### RBAC limited to the prefix\"")
        }
        var commands: [String] = []
        for line in text[open.upperBound..<close.lowerBound].split(separator: "\n").map(String.init) where line.hasPrefix("etcdctl ") {
            commands.append(line)
            if line.contains("node1") {
                commands.append(line.replacingOccurrences(of: "node1", with: "node2").replacingOccurrences(of: "NODE1", with: "NODE2"))
            }
        }
        return commands
    }

    /// etcdctl (v3) in the wire namespace as `user` (nil: no credentials).
    static func etcdctl(_ cluster: FlannelCluster, user: String?, _ args: [String]) throws -> LabCommandResult {
        let login = user.map { ["--user=\($0):\($0 == "root" ? rootPassword : nodePasswords[$0] ?? "")"] } ?? []
        return try cluster.etcdctl(3, login + args)
    }

    /// The daemon binary started by hand in `node` (no health port: it may run beside the node's own
    /// daemon), under `timeout -s KILL`, with `extra` flags; returns its status and output.
    static func runDaemonOnce(_ cluster: FlannelCluster, _ node: LabNode, seconds: Int, _ extra: [String]) throws -> (status: Int32, output: String, seconds: Double) {
        let dir = cluster.nodeDir(node) + "/once"
        try cluster.lab.sh(nil, ["/bin/mkdir", "-p", dir])
        let argv = ["/usr/bin/timeout", "-s", "KILL", "\(seconds)", cluster.daemonPath, "--iface", node.underlayIfname,
                    "--etcd-endpoints", cluster.etcdEndpoint, "--subnet-file", dir + "/subnet.env", "--bpffs", dir + "/bpf"] + extra
        let start = monotonicSeconds()
        let r = try cluster.lab.run(node.name, argv)
        return (r.status, r.stdout + r.stderr, monotonicSeconds() - start)
    }

    @Test("daemons as prefix-limited users acquire, renew, watch and carry traffic; nothing outside the prefix is writable; bad credentials are named")
    func daemonUnderPrefixRole() throws {
        let cluster = try FlannelCluster(tag: "rbac", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        let prefix = cluster.prefix

        // 1. The documented set-up, line by line.
        let commands = try EtcdRBACTests.documentedCommands()
        #expect(commands.count >= 8 && commands.last == "etcdctl auth enable", "\(commands)")
        for command in commands {
            let r = try cluster.lab.run(cluster.lab.wireNamespace, [
                "/usr/bin/env", "ETCDCTL_API=3", "ETCDCTL_ENDPOINTS=\(cluster.etcdEndpoint)",
                "ROOT_PASSWORD=\(EtcdRBACTests.rootPassword)", "NODE1_PASSWORD=\(EtcdRBACTests.nodePasswords["node1"]!)",
                "NODE2_PASSWORD=\(EtcdRBACTests.nodePasswords["node2"]!)", "/bin/sh", "-ec", command,
            ])
            try #require(r.status == 0, "documented command failed: \(command)\n\(r.stderr)\(r.stdout)")
        }
        // Auth is on: anonymous reads are refused now.
        #expect(try EtcdRBACTests.etcdctl(cluster, user: nil, ["get", prefix + "/config"]).status != 0)

        // 2. Each node as its own user (password through the environment), with a short TTL so
        //    renewals happen within the test.
        let ttl = 4
        for (node, user) in [(a, "node1"), (b, "node2")] {
            try cluster.startDaemon(node, extra: ["--etcd-username=\(user)", "--subnet-lease-ttl=\(ttl)"],
                                    env: ["FLANNELD_ETCD_PASSWORD": EtcdRBACTests.nodePasswords[user]!])
        }
        #expect(try waitUntil(10) { try pinnedPeers(cluster, a) == [b.podSubnet] && pinnedPeers(cluster, b) == [a.podSubnet] } != nil)
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP))
        // A peer written meanwhile (by root) reaches the maps: the watch works under the role.
        let joiner = IPv4Subnet(cidr: "10.5.230.0/24")!
        let joinerValue = #"{"PublicIP":"192.168.77.230","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:e6:01"}}"#
        let put = try EtcdRBACTests.etcdctl(cluster, user: "root", ["put", cluster.leaseKey(joiner), joinerValue])
        #expect(put.status == 0, "\(put.stderr)")
        #expect(try waitUntil(10) { try pinnedPeers(cluster, a) == [b.podSubnet, joiner] } != nil)
        // Renewals: both 4 s leases are still held three TTLs later.
        usleep(UInt32(3 * ttl) * 1_000_000)
        for node in [a, b] {
            let r = try EtcdRBACTests.etcdctl(cluster, user: "root", ["get", "--print-value-only", cluster.leaseKey(node.podSubnet)])
            #expect(r.stdout.contains("\"PublicIP\":\"\(node.nodeIP)\""), "\(node.name)'s lease was not renewed: \(r.stdout) \(r.stderr); log:\n\(cluster.daemonLog(node).suffix(1500))")
            #expect(cluster.daemons[node.name]?.isRunning == true, "\(node.name) exited:\n\(cluster.daemonLog(node).suffix(1500))")
            #expect(!cluster.daemonLog(node).contains("permission denied"), "\(node.name):\n\(cluster.daemonLog(node).suffix(1500))")
        }

        // 3. The same user, directly: nothing outside the prefix (nor the config) is writable.
        for key in [prefix + "/config", "/fx-outside-the-prefix", prefix + "/subnetsX", "/coreos.com/other"] {
            let r = try EtcdRBACTests.etcdctl(cluster, user: "node1", ["put", key, "x"])
            #expect(r.status != 0 && r.stderr.contains("permission denied"), "node1 could write \(key): \(r.stdout) \(r.stderr)")
        }
        #expect(try EtcdRBACTests.etcdctl(cluster, user: "node1", ["get", "/fx-outside-the-prefix"]).status != 0, "node1 may read outside the prefix")
        #expect(try EtcdRBACTests.etcdctl(cluster, user: "node1", ["get", prefix + "/config"]).stdout.contains("10.5.0.0/16"))
        let inside = prefix + "/subnets/fx-rbac-probe"
        #expect(try EtcdRBACTests.etcdctl(cluster, user: "node1", ["put", inside, "x"]).status == 0)
        #expect(try EtcdRBACTests.etcdctl(cluster, user: "node1", ["del", inside]).status == 0)

        // 4. Wrong password, unknown user: start-up ends at once with one line naming the user
        //    (fixed API and auto-detection take different paths to etcd). The timeout only nets a
        //    hang: the refusal comes at once, but at once can be many seconds on a loaded machine.
        for (user, password, api) in [("node1", "fx-bad-pw", "v3"), ("node1", "fx-bad-pw", "auto"), ("nobody", "fx-bad-pw", "v3")] {
            let r = try EtcdRBACTests.runDaemonOnce(cluster, a, seconds: 180,
                                                    ["--etcd-api", api, "--etcd-username", user, "--etcd-password", password])
            let said = r.output.split(separator: "\n").filter { $0.contains("rejected") }
            print("EtcdRBACTests: \(user)/\(api): exit \(r.status) after \(String(format: "%.2f", r.seconds)) s: \(said)")
            #expect(r.status != 0 && r.status < 124, "\(user)/\(api): exit \(r.status) (137: retried until killed)\n\(r.output.suffix(1500))")
            #expect(r.output.contains("etcd rejected the credentials of user \"\(user)\""), "\(user)/\(api):\n\(r.output.suffix(1500))")
            #expect(occurrences(of: "invalid user ID or password", in: r.output) <= 2, "\(user)/\(api): repeated:\n\(r.output.suffix(2000))")
            #expect(!r.output.contains(password), "the password was logged")
        }

        // 5. A user without the role: a permission error naming user and key, retried quietly.
        let add = try EtcdRBACTests.etcdctl(cluster, user: "root", ["user", "add", "node9", "--new-user-password=n9pw", "--interactive=false"])
        #expect(add.status == 0, "\(add.stderr)")
        let r = try EtcdRBACTests.runDaemonOnce(cluster, a, seconds: 8,
                                                ["--etcd-api", "v3", "--etcd-username", "node9", "--etcd-password", "n9pw"])
        print("EtcdRBACTests: node9 (no role): \(r.output.split(separator: "\n").filter { $0.contains("permission denied") })")
        #expect(r.status == 137, "a permission error should be waited out, not fatal: exit \(r.status)\n\(r.output.suffix(1500))")
        #expect(r.output.contains("permission denied on \(prefix)/config for user \"node9\""), "\(r.output.suffix(1500))")
        #expect(occurrences(of: "permission denied", in: r.output) <= 2, "not rate-limited:\n\(r.output.suffix(2000))")
    }
}
