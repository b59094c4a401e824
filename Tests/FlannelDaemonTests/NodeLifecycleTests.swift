import FlannelDaemon
import Glibc
import NetTypes
import TestSupport
import Testing

/// Starts `path` in the background with stdout/stderr to `logPath`; returns its pid.
private func spawnBackground(_ path: String, _ arguments: [String], environment: [String], logPath: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let envp = environment.map { strdup($0) } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
    guard rc == 0 else { throw ToolFailure(command: path, status: rc, output: "posix_spawn") }
    return pid
}

/// Waits up to `seconds` for `pid` to exit; its exit code, or nil if it is still running.
private func waitExit(_ pid: pid_t, seconds: Double) async throws -> Int32? {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid {
            return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        try await Task.sleep(for: .milliseconds(50))
    }
    return nil
}

/// One node in its own network namespace, with its own etcd, bpffs and notify socket: the daemon
/// binary's whole life — start, READY=1, /readyz, peers arriving and leaving, SIGTERM leaving
/// everything in place, a restart that keeps subnet and VtepMAC, and `cleanup`.
@Suite("The daemon binary on one netns node", .serialized, .enabled(if: Privileges.isRoot, Privileges.skipReason))
struct NodeLifecycleTests {
    @Test("start → READY → peers → SIGTERM keeps all → restart keeps subnet and MAC → cleanup removes ours")
    func lifecycle() async throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests")
        let tag = "fxd\(getpid() % 100_000)l"
        let ns = "\(tag)-ns"
        let work = "/tmp/\(tag)"
        let bpffs = "/run/\(tag)-bpf"
        let notifyPath = "\(work)/notify.sock"
        let subnetFile = "\(work)/subnet.env"
        let daemonLog = "\(work)/daemon.log"
        let healthzPort = 18471
        func ip(_ arguments: String...) throws -> String { try runTool("/usr/sbin/ip", arguments) }
        func inNS(_ arguments: [String]) throws -> (output: String, status: Int32) {
            try runProgram("/usr/sbin/ip", ["netns", "exec", ns] + arguments)
        }

        _ = try? runProgram("/usr/sbin/ip", ["netns", "del", ns]) // left by a killed earlier run of this pid
        _ = try runTool("/bin/mkdir", ["-p", work, bpffs])
        _ = try ip("netns", "add", ns)
        var daemonPID: pid_t = 0
        var etcd: DaemonTestEtcd?
        defer {
            if daemonPID > 0 { kill(daemonPID, SIGKILL); waitpid(daemonPID, nil, 0) }
            etcd?.stop()
            _ = try? runProgram("/bin/umount", [bpffs])
            _ = try? runProgram("/usr/sbin/ip", ["netns", "del", ns])
            _ = try? runProgram("/bin/rm", ["-rf", work, bpffs])
        }
        _ = try runTool("/bin/mount", ["-t", "bpf", "bpf", bpffs])
        _ = try ip("-n", ns, "link", "set", "lo", "up")
        _ = try ip("-n", ns, "link", "add", "fxdu0", "type", "veth", "peer", "name", "fxdu1")
        _ = try ip("-n", ns, "addr", "add", "192.0.2.10/24", "dev", "fxdu0")
        _ = try ip("-n", ns, "link", "set", "fxdu0", "up")
        _ = try ip("-n", ns, "link", "set", "fxdu1", "up")

        let server = try await DaemonTestEtcd(namespace: ns)
        etcd = server
        try server.put("/coreos.com/network/config", #"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":1}}"#)
        try server.put("/coreos.com/network/subnets/10.5.9.0-24",
                       #"{"PublicIP":"192.0.2.19","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}}"#)

        let arguments = ["netns", "exec", ns, binary, "-iface=fxdu0", "--etcd-endpoints", server.url, "-bpffs", bpffs,
                         "--subnet-file=\(subnetFile)", "-healthz-ip=127.0.0.1", "-healthz-port=\(healthzPort)"]
        let environment = ["NOTIFY_SOCKET=\(notifyPath)", "PATH=/usr/sbin:/usr/bin:/bin"]
        func startDaemon() async throws -> String {
            let listener = try NotifyListener(name: notifyPath)
            daemonPID = try spawnBackground("/usr/sbin/ip", arguments, environment: environment, logPath: daemonLog)
            var ready: String?
            for _ in 0..<6 where ready == nil { // 5 s receive timeout each
                if let message = listener.receive(), message.hasPrefix("READY=1") { ready = message }
                if let code = try await waitExit(daemonPID, seconds: 0) {
                    daemonPID = 0
                    Issue.record("daemon exited \(code) before READY: \(readText(daemonLog) ?? "")")
                    throw CancellationError()
                }
            }
            return try #require(ready, "no READY=1 within 30 s: \(readText(daemonLog) ?? "")")
        }
        func stopDaemon(_ signal: Int32) async throws {
            kill(daemonPID, signal)
            let code = try await waitExit(daemonPID, seconds: 10)
            #expect(code == 0, "graceful stop must exit 0: \(readText(daemonLog) ?? "")")
            if code != nil { daemonPID = 0 }
        }
        func readyz() throws -> String {
            try inNS(["/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(healthzPort)/readyz"]).output
        }
        func route(_ subnet: String) throws -> String { try ip("-n", ns, "route", "show", subnet) }
        func flannelMAC() throws -> String? {
            let text = try inNS(["/usr/sbin/ip", "link", "show", "flannel.1"])
            guard text.status == 0 else { return nil }
            let words = text.output.split(whereSeparator: { $0 == " " || $0 == "\n" })
            return words.firstIndex(of: "link/ether").map { String(words[$0 + 1]) }
        }

        // Start: READY=1 after subnet.env, /readyz 200, the snapshot's peer in the kernel.
        let ready = try await startDaemon()
        #expect(ready.contains("STATUS=subnet 10.5."))
        let env = try #require(readText(subnetFile))
        #expect(env.hasPrefix("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5."))
        #expect(env.contains("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"))
        #expect(try readyz() == "200")
        #expect(try route("10.5.9.0/24").contains("via 10.5.9.0 dev flannel.1 onlink"))
        let mac = try #require(try flannelMAC())
        let pins = try runTool("/bin/ls", [bpffs + "/flanneld-xdp"])
        #expect(pins.contains("fxdp_peers_v1"))

        // A peer joins, changes its MAC, leaves: the kernel follows.
        try server.put("/coreos.com/network/subnets/10.5.20.0-24",
                       #"{"PublicIP":"192.0.2.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:20"}}"#)
        try await waitUntil { (try? route("10.5.20.0/24"))?.contains("flannel.1") == true }
        try server.put("/coreos.com/network/subnets/10.5.20.0-24",
                       #"{"PublicIP":"192.0.2.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:21"}}"#)
        try await waitUntil { (try? ip("-n", ns, "neigh", "show", "10.5.20.0", "dev", "flannel.1"))?.contains("0a:00:00:00:00:21") == true }
        try server.delete("/coreos.com/network/subnets/10.5.20.0-24")
        try await waitUntil { (try? route("10.5.20.0/24"))?.isEmpty == true }

        // SIGTERM: exit 0, and the device, its routes, the pins and the lease all stay.
        try await stopDaemon(SIGTERM)
        #expect(try flannelMAC() == mac)
        #expect(try route("10.5.9.0/24").contains("flannel.1"))
        #expect(try runTool("/bin/ls", [bpffs + "/flanneld-xdp"]).contains("fxdp_peers_v1"))
        let subnetLine = env.split(separator: "\n")[1]
        let leaseKey = subnetLine.dropFirst("FLANNEL_SUBNET=".count).replacingOccurrences(of: ".1/24", with: ".0-24")
        #expect(try server.get("/coreos.com/network/subnets/\(leaseKey)").contains(mac))

        // Restart (SIGINT this time): same subnet, same VtepMAC.
        _ = try await startDaemon()
        #expect(readText(subnetFile) == env)
        #expect(try flannelMAC() == mac)
        try await stopDaemon(SIGINT)

        // cleanup: our device and programs and pins go; the underlay stays as it was.
        let cleanup = try inNS([binary, "cleanup", "--bpffs", bpffs])
        #expect(cleanup.status == 0, "\(cleanup.output)")
        #expect(try flannelMAC() == nil)
        #expect(try route("10.5.9.0/24").isEmpty)
        #expect(try runProgram("/bin/ls", [bpffs + "/flanneld-xdp"]).status != 0)
        #expect(try ip("-n", ns, "-4", "addr", "show", "dev", "fxdu0").contains("192.0.2.10/24"))
        #expect(!(try runTool("/usr/sbin/tc", ["-n", ns, "filter", "show", "dev", "fxdu0", "ingress"]).contains("fxdp")))
    }
}

extension Substring {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        var text = String(self)
        if text.hasSuffix(target) { text = String(text.dropLast(target.count)) + replacement }
        return text
    }
}
