// --ip-masq as flannel does it, in nftables: pods talking to anything outside the cluster network
// leave with the node's address; pod-to-pod traffic keeps pod addresses. flannel's four rules, in
// its order (the MASQUERADE/RETURN rules flanneld ≤ 0.17 puts in iptables' nat POSTROUTING):
//   1. network → network                      return      (pod to pod: no NAT)
//   2. network → not multicast                masquerade  (pod to outside)
//   3. not network → our subnet               return      (outside to our pods: no NAT)
//   4. not network → network                  masquerade  (host/outside to other nodes' pods: replies
//                                                          come back through the overlay)
//
// The rules live in their own table, `ip flanneld-xdp`, with one postrouting NAT chain, so we never
// touch anyone else's rules (kube-proxy's, docker's, the admin's) and `cleanup` deletes exactly ours.
// The ruleset text is generated only from IPv4Subnet values (the config's Network and our own lease,
// both validated types whose description is digits and dots): nothing from other nodes' leases and
// no free text ever reaches the nft command line. The whole table is replaced in one nft
// transaction (add, delete, define), so a reader never sees half a table. A periodic check compares
// `nft list table` with the wanted text and replaces the table if it was removed or edited.

import Glibc
import Logging
import NetTypes
import ServiceLifecycle

public enum Masquerade {
    public static let tableName = "flanneld-xdp"
    public static let chainName = "postrouting"

    /// The table's text, formatted exactly as `nft list table` prints it (tabs), so that the drift
    /// check can compare the two line by line.
    public static func ruleset(network: IPv4Subnet, subnet: IPv4Subnet) -> String {
        """
        table ip \(tableName) {
        \tchain \(chainName) {
        \t\ttype nat hook postrouting priority srcnat; policy accept;
        \t\tip saddr \(network) ip daddr \(network) return
        \t\tip saddr \(network) ip daddr != 224.0.0.0/4 masquerade fully-random
        \t\tip saddr != \(network) ip daddr \(subnet) return
        \t\tip saddr != \(network) ip daddr \(network) masquerade fully-random
        \t}
        }

        """
    }

    /// One nft transaction that replaces the table whether or not it exists.
    static func replaceScript(network: IPv4Subnet, subnet: IPv4Subnet) -> String {
        "add table ip \(tableName)\ndelete table ip \(tableName)\n" + ruleset(network: network, subnet: subnet)
    }

    /// Installs (or replaces) the table in the calling thread's network namespace.
    public static func install(network: IPv4Subnet, subnet: IPv4Subnet) throws(OperationsError) {
        let result = try NFT.run(["-f", "-"], stdin: replaceScript(network: network, subnet: subnet))
        guard result.status == 0 else {
            throw OperationsError(operation: "nft -f (table ip \(tableName))", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "is the nf_tables kernel module available? install Debian's nftables package")
        }
    }

    /// The table as nft lists it, nil when it does not exist.
    public static func current() throws(OperationsError) -> String? {
        let result = try NFT.run(["list", "table", "ip", tableName], stdin: nil)
        if result.status != 0 {
            // "No such file or directory": the table is absent; anything else is a real failure.
            if result.output.contains("No such file") { return nil }
            throw OperationsError(operation: "nft list table ip \(tableName)", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "install Debian's nftables package and run as root")
        }
        return result.output
    }

    /// True when the table holds exactly the wanted rules (whitespace aside).
    public static func isCurrent(network: IPv4Subnet, subnet: IPv4Subnet) throws(OperationsError) -> Bool {
        guard let listed = try current() else { return false }
        return normalized(listed) == normalized(ruleset(network: network, subnet: subnet))
    }

    /// Installs the table when it is missing or differs; returns true when it had to.
    @discardableResult
    public static func ensure(network: IPv4Subnet, subnet: IPv4Subnet) throws(OperationsError) -> Bool {
        if try isCurrent(network: network, subnet: subnet) { return false }
        try install(network: network, subnet: subnet)
        return true
    }

    /// Deletes our table; absent is fine. Returns true when a table was deleted.
    @discardableResult
    public static func remove() throws(OperationsError) -> Bool {
        // Without nft on the node there can be no table of ours.
        guard NFT.path != nil, try current() != nil else { return false }
        let result = try NFT.run(["delete", "table", "ip", tableName], stdin: nil)
        guard result.status == 0 else {
            throw OperationsError(operation: "nft delete table ip \(tableName)", detail: "exit \(result.status): \(result.output.trimmed)",
                                  hint: "run as root")
        }
        return true
    }

    /// For `status`: whether the table is there, without needing the wanted subnets.
    public static func status() -> MasqueradeStatus {
        do {
            guard let listed = try current() else { return .missing }
            let rules = listed.split(separator: "\n").filter { $0.contains("masquerade") || $0.contains("return") }.count
            return .present(rules: rules)
        } catch {
            return .unknown("\(error)")
        }
    }

    static func normalized(_ text: String) -> [String] {
        text.split(separator: "\n").map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }
            .filter { !$0.isEmpty }
    }
}

public enum MasqueradeStatus: Sendable, Equatable, CustomStringConvertible {
    case present(rules: Int)
    case missing
    case unknown(String)

    public var description: String {
        switch self {
        case .present(let rules): "on: nftables table ip \(Masquerade.tableName), \(rules) rules"
        case .missing: "MISSING: table ip \(Masquerade.tableName) is not installed (the daemon recreates it within its check interval)"
        case .unknown(let why): "unknown: \(why)"
        }
    }
}

/// Keeps the masquerade table in place while the daemon runs: checked every `interval`, recreated
/// when removed or edited. On shutdown the table stays (like the data path: pods keep reaching out
/// across a restart); `cleanup` removes it.
public struct MasqueradeService: Service {
    public let network: IPv4Subnet
    public let subnet: IPv4Subnet
    public let interval: Duration
    public let logger: Logger

    public init(network: IPv4Subnet, subnet: IPv4Subnet, interval: Duration = .seconds(10), logger: Logger) {
        self.network = network
        self.subnet = subnet
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        var failing = false
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                if try Masquerade.ensure(network: network, subnet: subnet) {
                    logger.warning("masquerade table ip \(Masquerade.tableName) was missing or changed: recreated")
                }
                if failing { logger.info("masquerade check recovered") }
                failing = false
            } catch {
                if !failing { logger.error("masquerade check failed (will retry every \(interval)): \(error)") }
                failing = true
            }
            // Woken early by graceful shutdown; the table stays (see above).
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// Runs nft (found in /usr/sbin or /sbin) with posix_spawn, stdin from a pipe, stdout+stderr captured.
enum NFT {
    static let candidates = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]

    static var path: String? { candidates.first { access($0, X_OK) == 0 } }

    static func run(_ arguments: [String], stdin: String?) throws(OperationsError) -> (status: Int32, output: String) {
        guard let path else {
            throw OperationsError(operation: "find nft", detail: "none of \(candidates.joined(separator: ", ")) exists",
                                  hint: "install Debian's nftables package (apt-get install nftables) for --ip-masq")
        }
        return try Subprocess.run([path] + arguments, stdin: stdin)
    }
}

enum Subprocess {
    /// Runs argv[0] (absolute path) and waits; output is stdout and stderr together.
    static func run(_ argv: [String], stdin: String?) throws(OperationsError) -> (status: Int32, output: String) {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0 else {
            throw OperationsError(operation: "pipe2", detail: "for \(argv[0])", errno: errno, hint: "too many open files?")
        }
        // Close-on-exec so no other child (or nft itself) keeps a pipe end open; dup2 clears it on 0-2.
        for fd in inPipe + outPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 2)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        let env: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), strdup("LC_ALL=C"), nil]
        defer { for p in env { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, env)
        close(inPipe[0])
        close(outPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            throw OperationsError(operation: "posix_spawn \(argv[0])", detail: "cannot start it", errno: rc, hint: "is it installed?")
        }
        if let stdin {
            let bytes = Array(stdin.utf8)
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(inPipe[1], $0.baseAddress! + written, bytes.count - written) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                written += n
            }
        }
        close(inPipe[1])
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(outPipe[0], $0.baseAddress, 4096) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if output.count < 1 << 20 { output += buffer[0..<n] }
        }
        close(outPipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exit: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exit, String(decoding: output, as: UTF8.self))
    }
}
