// Drop-in, end to end: flanneld-xdp started exactly as the install guide's unit starts flanneld
// (environment file, TLS etcd with client certificates, /kube-centos/network, the config written by
// etcdctl), and nodes whose FORWARD policy is DROP as Docker leaves it. "Containers" are the lab's
// pod namespaces; they talk TCP to each other through the overlay both ways.

import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

/// A TCP connection from a socket made in `clientNS` to `address`:`port`, listened on in
/// `serverNS`; a line is sent and read back by the server. nil on success, else what failed.
/// The connect waits at most `timeoutMilliseconds` (a dropped SYN is never answered).
func tcpExchange(from clientNS: String, to serverNS: String, address: IPv4Address, port: UInt16,
                 timeoutMilliseconds: Int32 = 3000) throws -> String? {
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = port.bigEndian
    sa.sin_addr.s_addr = address.value.bigEndian
    let length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let listener: Int32 = try NetnsThread.run(namespace: serverNS) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ToolFailure(command: "socket", status: errno, output: "") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, listen(fd, 4) == 0 else { close(fd); throw ToolFailure(command: "bind/listen \(address):\(port)", status: errno, output: "") }
        return fd
    }
    defer { close(listener) }
    let client: Int32 = try NetnsThread.run(namespace: clientNS) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw ToolFailure(command: "socket", status: errno, output: "") }
        return fd
    }
    defer { close(client) }
    let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) } }
    if rc != 0 && errno != EINPROGRESS { return "connect: errno \(errno)" }
    var out = pollfd(fd: client, events: Int16(POLLOUT), revents: 0)
    guard poll(&out, 1, timeoutMilliseconds) == 1 else { return "connect to \(address):\(port) from \(clientNS): no answer within \(timeoutMilliseconds) ms" }
    var soError: Int32 = 0
    var soLength = socklen_t(MemoryLayout<Int32>.size)
    getsockopt(client, SOL_SOCKET, SO_ERROR, &soError, &soLength)
    if soError != 0 { return "connect to \(address):\(port) from \(clientNS): \(String(cString: strerror(soError)))" }
    var incoming = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    guard poll(&incoming, 1, timeoutMilliseconds) == 1 else { return "the server in \(serverNS) saw no connection" }
    let accepted = accept(listener, nil, nil)
    guard accepted >= 0 else { return "accept: errno \(errno)" }
    defer { close(accepted) }
    let message = Array("flanneld-xdp drop-in\n".utf8)
    guard write(client, message, message.count) == message.count else { return "write: errno \(errno)" }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 64)
    while received.count < message.count {
        var readable = pollfd(fd: accepted, events: Int16(POLLIN), revents: 0)
        guard poll(&readable, 1, timeoutMilliseconds) == 1 else { return "the server got \(received.count) of \(message.count) bytes" }
        let n = read(accepted, &buffer, buffer.count)
        guard n > 0 else { return "the server's read ended after \(received.count) bytes" }
        received += buffer[0..<n]
    }
    return received == message ? nil : "the server got other bytes than were sent"
}

/// A unit file's ExecStart= (or another key's) command line, expanded as systemd does: `${VAR}` is one
/// word, `$VAR` is split at whitespace, from `environment`.
func systemdCommandLine(unit: String, key: String = "ExecStart", environment: [String: String]) -> [String] {
    guard let line = unit.split(separator: "\n").first(where: { $0.hasPrefix(key + "=") }) else { return [] }
    var words: [String] = []
    for word in line.dropFirst(key.count + 1).split(separator: " ") {
        if word.hasPrefix("$") && !word.hasPrefix("${") {
            words += (environment[String(word.dropFirst())] ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            continue
        }
        var expanded = ""
        var rest = Substring(word)
        while let open = rest.firstRange(of: "${"), let close = rest[open.upperBound...].firstIndex(of: "}") {
            expanded += rest[..<open.lowerBound] + (environment[String(rest[open.upperBound..<close])] ?? "")
            rest = rest[rest.index(after: close)...]
        }
        words.append(expanded + rest)
    }
    return words.first.map { [String($0.drop { $0 == "-" })] + words.dropFirst() } ?? []
}

/// An EnvironmentFile as systemd reads it: KEY=value or KEY="value", comments and blanks skipped.
func systemdEnvironmentFile(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let eq = line.firstIndex(of: "=") else { continue }
        var value = String(line[line.index(after: eq)...])
        if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
        result[String(line[..<eq])] = value
    }
    return result
}

private func repositoryRoot(_ file: String = #filePath) -> String {
    file.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
}

@Suite("Drop-in: flanneld-xdp where flanneld ran (root, netns, real etcd)", .serialized,
       .needsRoot, .ownThreads)
struct DropInClusterTests {
    @Test("the install guide's unit: environment file, TLS etcd with client certificates, /kube-centos/network; containers on two nodes reach each other")
    func installGuideUnit() async throws {
        let certs = try await TLSTestCerts.generate(tag: "guide", serverIPs: [FlannelCluster.etcdAddress.description])
        defer { certs.remove() }
        let prefix = "/kube-centos/network"
        let cluster = try FlannelCluster(tag: "dg", api: .v2, daemonPath: TestBinaries.flanneldXDP(), nodes: 2,
                                         prefix: prefix, tls: certs)
        defer { cluster.cleanup() }
        // The guide: `etcdctl mk /kube-centos/network/config '{...}'` (v2, flannel v0.17's keyspace).
        try cluster.delete(prefix + "/config")
        let mk = try cluster.etcdctl(2, ["mk", prefix + "/config",
                                         #"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#])
        #expect(mk.status == 0, "\(mk.stderr)")

        let unit = readFile(repositoryRoot() + "/contrib/systemd/flanneld-xdp.service")
        for node in cluster.nodes {
            // /etc/sysconfig/flanneld as the guide writes it (FLANNEL_OPTIONS with the three TLS flags).
            let sysconfig = """
                # Flanneld configuration options
                FLANNEL_ETCD_ENDPOINTS="\(cluster.etcdEndpoint)"
                FLANNEL_ETCD_PREFIX="\(prefix)"
                FLANNEL_OPTIONS="-etcd-cafile=\(certs.caCert) -etcd-certfile=\(certs.clientCert) -etcd-keyfile=\(certs.clientKey) -iface=\(node.underlayIfname)"
                """
            try writeFile(cluster.nodeDir(node) + "/sysconfig-flanneld", sysconfig)
            var command = systemdCommandLine(unit: unit, environment: systemdEnvironmentFile(readFile(cluster.nodeDir(node) + "/sysconfig-flanneld")))
            #expect(command.first == "/usr/local/bin/flanneld-xdp", "\(command)")
            command[0] = TestBinaries.flanneldXDP()
            #expect(command.contains("-etcd-prefix=\(prefix)") && command.contains("-etcd-cafile=\(certs.caCert)"), "\(command)")
            // What a real node has in fixed places, pointed into the lab through flanneld's own variables
            // (as a unit's Environment= would), plus one value flanneld cannot parse: logged and ignored.
            let env = [
                "FLANNELD_SUBNET_FILE": cluster.subnetFile(node), "FLANNELD_BPFFS": cluster.bpffs(node),
                "FLANNELD_LAST_KNOWN_STATE": cluster.lastKnownStateFile(node),
                "FLANNELD_HEALTHZ_PORT": "\(cluster.healthPort)", "FLANNELD_HEALTHZ_IP": "127.0.0.1",
                "FLANNELD_IPTABLES_RESYNC": "soon",
            ]
            try cluster.startDaemon(node, command: command, env: env)
            let log = cluster.daemonLog(node)
            #expect(log.contains(#"FLANNELD_IPTABLES_RESYNC="soon" is ignored"#), "\(log.suffix(2000))")
            #expect(log.contains("found in v2"), "\(log.suffix(2000))")
            #expect(readFile(cluster.subnetFile(node)) == "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=\(node.podSubnet.host(1))/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")

            // ExecStartPost: the Docker options, with /etc/sysconfig/docker-network's value kept.
            var post = systemdCommandLine(unit: unit, key: "ExecStartPost", environment: [:])
            #expect(post.first == "/usr/local/libexec/flanneld-xdp/mk-docker-opts.sh", "\(post)")
            post[0] = repositoryRoot() + "/contrib/mk-docker-opts.sh"
            let dockerFile = cluster.nodeDir(node) + "/docker"
            if let d = post.firstIndex(of: "-d") { post[d + 1] = dockerFile }
            let opts = try cluster.lab.run(node.name, ["/usr/bin/env", "DOCKER_NETWORK_OPTIONS=--insecure-registry=registry.local:5000",
                                                       "FLANNEL_SUBNET_FILE_UNUSED=1", "/bin/sh"] + post + ["-f", cluster.subnetFile(node)])
            #expect(opts.status == 0, "\(opts.stderr)")
            #expect(readFile(dockerFile).contains(#"DOCKER_NETWORK_OPTIONS="--insecure-registry=registry.local:5000  --bip=\#(node.podSubnet.host(1))/24 --ip-masq=true --mtu=1450""#),
                    "\(readFile(dockerFile))")
        }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        #expect(try cluster.lab.waitForPing(from: a.podNamespace, to: b.podIP, timeout: 5))
        #expect(try cluster.lab.waitForPing(from: b.podNamespace, to: a.podIP, timeout: 5))
        #expect(try tcpExchange(from: a.podNamespace, to: b.podNamespace, address: b.podIP, port: 7001) == nil)
        #expect(try tcpExchange(from: b.podNamespace, to: a.podNamespace, address: a.podIP, port: 7002) == nil)
        // The leases are in the guide's prefix, where flannel v0.17 nodes look.
        #expect(try cluster.leasedSubnets() == [a.podSubnet, b.podSubnet])
        let status = try cluster.runTool(a, ["status", "--subnet-file", cluster.subnetFile(a), "--bpffs", cluster.bpffs(a)])
        #expect(status.stdout.contains("etcd API:") && status.stdout.contains("found in v2"), "\(status.stdout)")
    }

    @Test("FORWARD policy DROP (as Docker leaves it): TCP between containers on different nodes both ways; -iptables-forward-rules=false leaves FORWARD alone")
    func forwardPolicyDrop() async throws {
        let cluster = try FlannelCluster(tag: "dfw", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 3,
                                         backend: #"{"Type":"vxlan","MTU":1400}"#)
        defer { cluster.cleanup() }
        try cluster.dropForwardedTrafficByDefault()
        let (a, b, c) = (cluster.nodes[0], cluster.nodes[1], cluster.nodes[2])
        try cluster.startDaemon(a, extra: ["-iptables-resync=1"])
        try cluster.startDaemon(b, extra: ["-iptables-resync=1"])
        try cluster.startDaemon(c, extra: ["-iptables-forward-rules=false"])
        func forwardRules(_ node: LabNode) throws -> [String] {
            try cluster.lab.sh(node.name, ["/usr/sbin/iptables", "-w", "5", "-t", "filter", "-S"]).split(separator: "\n")
                .map(String.init).filter { $0.contains("flanneld forward") }
        }
        let wanted = [
            "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
            "-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
            "-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT",
        ]
        #expect(try forwardRules(a) == wanted)
        #expect(try forwardRules(b) == wanted)
        #expect(try forwardRules(c).isEmpty, "-iptables-forward-rules=false must leave FORWARD alone")
        #expect(try cluster.lab.sh(c.name, ["/usr/sbin/iptables", "-w", "5", "-t", "filter", "-S"]).contains("-P FORWARD DROP"))

        // Backend.MTU is the underlay MTU, as in flannel: FLANNEL_MTU and flannel.1 get MTU - 50.
        #expect(readFile(cluster.subnetFile(a)).contains("FLANNEL_MTU=1350\n"))
        #expect(try cluster.lab.sh(a.name, ["link", "show", "flannel.1"]).contains("mtu 1350"))

        for node in cluster.nodes {
            let others = cluster.nodes.filter { $0.name != node.name }.map(\.podSubnet).sorted()
            #expect(try waitUntil(5) { try cluster.pinnedPeerSubnets(node) == others } != nil, "\(node.name) peers")
        }
        // Containers on a and b, both with the accepts: TCP both ways.
        #expect(try tcpExchange(from: a.podNamespace, to: b.podNamespace, address: b.podIP, port: 7011) == nil)
        #expect(try tcpExchange(from: b.podNamespace, to: a.podNamespace, address: a.podIP, port: 7012) == nil)
        // c kept Docker's DROP and no accepts: its containers are cut off, as under stock flanneld with the flag off.
        #expect(try tcpExchange(from: a.podNamespace, to: c.podNamespace, address: c.podIP, port: 7013, timeoutMilliseconds: 1500) != nil)

        // Removed by someone: back within a resync (1 s here).
        try cluster.lab.sh(a.name, ["/usr/sbin/iptables", "-w", "5", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward",
                                    "-j", "FLANNEL-FWD"])
        let readded = try waitUntil(10) { try forwardRules(a) == wanted }
        #expect(readded != nil, "the jump was not re-added: \((try? forwardRules(a)) ?? [])")
        #expect(try tcpExchange(from: b.podNamespace, to: a.podNamespace, address: a.podIP, port: 7014) == nil)
        let status = try cluster.runTool(a, ["status", "--subnet-file", cluster.subnetFile(a), "--bpffs", cluster.bpffs(a)])
        #expect(status.stdout.contains("forward:") && status.stdout.contains("FORWARD policy DROP"), "\(status.stdout)")
        let statusC = try cluster.runTool(c, ["status", "--subnet-file", cluster.subnetFile(c), "--bpffs", cluster.bpffs(c)])
        #expect(statusC.stdout.contains("--iptables-forward-rules=false"), "\(statusC.stdout)")

        // cleanup removes them (the daemon stopped first: it would put them back).
        cluster.stopDaemon(b)
        let cleanup = try cluster.runTool(b, ["cleanup", "--bpffs", cluster.bpffs(b)])
        #expect(cleanup.status == 0, "\(cleanup.stderr)")
        #expect(try forwardRules(b).isEmpty)
        #expect(try cluster.lab.sh(b.name, ["/usr/sbin/iptables", "-w", "5", "-t", "filter", "-S"]).contains("-P FORWARD DROP"))
    }
}
