// The only place flanneld-xdp starts another program, and the only programs it starts: `nft` (the
// --ip-masq table, Masquerade.swift) and `iptables` (flannel's FORWARD accepts, ForwardRules.swift).
// Both are run by absolute path with posix_spawn — no shell, a fixed environment — and every
// argument is either a fixed word or the text of a validated IPv4Subnet (the config's Network, our
// own lease): nothing another node writes into etcd ever reaches a command line.
//
// Why iptables for the FORWARD rules and not nft: Docker ≥ 1.13 sets the policy of iptables'
// filter FORWARD chain to DROP. With iptables-legacy that chain lives in x_tables, which nft cannot
// see; with iptables-nft it is the base chain `ip filter FORWARD`, and an accept in a table of our
// own would not help either (every base chain on the forward hook sees the packet, and a drop in
// any of them wins). Running the `iptables` the system (and Docker) uses puts the accepts in the
// very chain that carries the DROP policy, whichever backend that is — as flanneld does.

import Dataplane
import Glibc
import RuntimeSupport

/// The programs flanneld-xdp may run.
enum HostProgram: String, CaseIterable, Sendable {
    case nft, iptables, ip6tables

    var candidates: [String] { ["/usr/sbin/", "/sbin/", "/usr/bin/"].map { $0 + rawValue } }

    /// The installed binary, nil when there is none.
    var path: String? { candidates.first { access($0, X_OK) == 0 } }

    var package: String {
        switch self {
        case .nft: "nftables"
        case .iptables, .ip6tables: "iptables"
        }
    }

    /// Runs the program with `arguments` (stdin from `stdin` when given); output is stdout and stderr together.
    func run(_ arguments: [String], stdin: String? = nil, neededFor purpose: String) throws(OperationsError) -> (status: Int32, output: String) {
        guard let path else {
            throw OperationsError(operation: "find \(rawValue)", detail: "none of \(candidates.joined(separator: ", ")) exists",
                                  hint: "install Debian's \(package) package (apt-get install \(package)) for \(purpose)")
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
        if let stdin { _ = SystemCall.writeAll(inPipe[1], Array(stdin.utf8)) }
        close(inPipe[1])
        // All of it: a child blocked on a full pipe would never exit. (nft and iptables say little.)
        let output = SystemCall.readAll(outPipe[0], limit: .max).bytes.prefix(1 << 20)
        close(outPipe[0])
        var status: Int32 = 0
        _ = SystemCall.retrying { waitpid(pid, &status, 0) }
        let exit: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exit, String(decoding: output, as: UTF8.self))
    }
}
