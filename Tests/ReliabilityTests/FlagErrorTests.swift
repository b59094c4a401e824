// Every malformed flag, environment variable and referenced file gets an error that names it: the
// built flanneld-xdp binary runs with one bad value at a time; it must exit non-zero (not by a
// signal: no crash), within seconds, print what is wrong on stderr naming the flag (or variable,
// or file) and the bad value, and print nothing about starting up.

import Glibc
import TestSupport
import TestTraits
import Testing

struct BadInvocation: Sendable, CustomStringConvertible {
    var arguments: [String]
    var environment: [String: String] = [:]
    /// Every one of these must appear in stderr.
    var mentions: [String]
    var description: String {
        (environment.map { "\($0.key)=\($0.value)" } + arguments).joined(separator: " ")
    }
}

@Suite("FlagErrorTests: the binary names every malformed flag, variable and file", .ownThreads)
struct FlagErrorTests {
    static let cases: [BadInvocation] = [
        .init(arguments: ["--healthz-port=abc"], mentions: ["healthz-port", "abc"]),
        .init(arguments: ["--healthz-port=70000"], mentions: ["healthz-port", "70000"]),
        .init(arguments: ["--healthz-port=-1"], mentions: ["healthz-port", "-1"]),
        .init(arguments: ["--metrics-port", "x9"], mentions: ["metrics-port", "x9"]),
        .init(arguments: ["--public-ip=1.2.3"], mentions: ["public-ip", "1.2.3"]),
        .init(arguments: ["--public-ip=300.1.1.1"], mentions: ["public-ip", "300.1.1.1"]),
        .init(arguments: ["--healthz-ip=localhost:1"], mentions: ["healthz-ip", "localhost:1"]),
        .init(arguments: ["--dataplane=ebpf"], mentions: ["dataplane", "ebpf"]),
        .init(arguments: ["--etcd-api", "v4"], mentions: ["etcd-api", "v4"]),
        .init(arguments: ["--ip-masq=yes"], mentions: ["ip-masq", "yes"]),
        .init(arguments: ["--iface"], mentions: ["--iface"]),
        .init(arguments: ["--subnet-lease-renew-margin=0"], mentions: ["subnet-lease-renew-margin", "0"]),
        .init(arguments: ["--subnet-lease-renew-margin=1440"], mentions: ["subnet-lease-renew-margin", "1440"]),
        .init(arguments: ["--subnet-lease-renew-margin=soon"], mentions: ["subnet-lease-renew-margin", "soon"]),
        .init(arguments: ["--subnet-lease-ttl=1"], mentions: ["subnet-lease-ttl", "1"]),
        .init(arguments: ["--subnet-lease-ttl=24h"], mentions: ["subnet-lease-ttl", "24h"]),
        .init(arguments: [], environment: ["FLANNELD_SUBNET_LEASE_TTL": "0"], mentions: ["FLANNELD_SUBNET_LEASE_TTL", "0"]),
        .init(arguments: ["--etcd-endpoints=127.0.0.1:2379"], mentions: ["etcd-endpoints", "127.0.0.1:2379"]),
        .init(arguments: ["--etcd-endpoints=ftp://10.0.0.1:2379"], mentions: ["etcd-endpoints", "ftp://10.0.0.1:2379"]),
        .init(arguments: ["--etcd-certfile=/c.pem"], mentions: ["etcd-keyfile"]),
        .init(arguments: ["--iface-regex=("], mentions: ["iface-regex", "("]),
        .init(arguments: ["--bpffs=relative/path"], mentions: ["bpffs", "relative/path"]),
        .init(arguments: ["--log-level=loud"], mentions: ["log-level", "loud"]),
        .init(arguments: ["--bpf-object="], mentions: ["--bpf-object"]),
        .init(arguments: ["--dataplane=userspace", "--bpf-object=/tmp/fxrel.o"], mentions: ["--bpf-object=/tmp/fxrel.o", "userspace"]),
        .init(arguments: ["--bogus-flag=1"], mentions: ["bogus-flag"]),
        .init(arguments: ["stray"], mentions: ["stray"]),
        // (A FLANNELD_* value Go cannot parse, such as FLANNELD_IP_MASQ=maybe, is logged and ignored as
        // flanneld does: FlagTests. One that parses but is wrong stops the daemon, naming the variable.)
        .init(arguments: [], environment: ["FLANNELD_HEALTHZ_PORT": "70000"], mentions: ["FLANNELD_HEALTHZ_PORT", "70000"]),
        .init(arguments: ["-kube-subnet-mgr"], mentions: ["--kube-subnet-mgr", "etcd subnet manager"]),
        .init(arguments: [], environment: ["FLANNELD_KUBE_SUBNET_MGR": "true"], mentions: ["--kube-subnet-mgr", "etcd subnet manager"]),
        .init(arguments: ["-public-ipv6=10.0.0.1"], mentions: ["public-ipv6", "10.0.0.1"]),
        .init(arguments: [], environment: ["FLANNELD_PUBLIC_IPV6": "fd00::zz"], mentions: ["FLANNELD_PUBLIC_IPV6", "fd00::zz"]),
        .init(arguments: ["-iface-can-reach=gateway"], mentions: ["--iface-can-reach=gateway"]),
        .init(arguments: ["-iptables-resync=0"], mentions: ["--iptables-resync=0"]),
        .init(arguments: ["-vmodule=main"], mentions: ["--vmodule=main"]),
        .init(arguments: [], environment: ["FLANNELD_PUBLIC_IP": "10.0.0.256"], mentions: ["FLANNELD_PUBLIC_IP", "10.0.0.256"]),
        // Files named by flags.
        .init(arguments: ["--etcd-endpoints=https://127.0.0.1:1", "--etcd-cafile=/nonexistent/fxrel-ca.pem"],
              mentions: ["/nonexistent/fxrel-ca.pem"]),
        .init(arguments: ["--etcd-endpoints=https://127.0.0.1:1", "--etcd-certfile=/nonexistent/fxrel-c.pem",
                          "--etcd-keyfile=/nonexistent/fxrel-k.pem"], mentions: ["/nonexistent/fxrel-c.pem"]),
    ]

    @Test("malformed values are named on stderr with a non-zero exit", arguments: FlagErrorTests.cases)
    func namesTheBadValue(_ bad: BadInvocation) throws {
        let binary = TestBinaries.flanneldXDP()
        try #require(access(binary, X_OK) == 0, "no binary at \(binary): swift build --build-tests builds it")
        // A clean environment apart from the case's own variables: the test must not depend on ours.
        // The timeout only catches a hang: on a machine at load 40, 38 of these start at once and a
        // refusal that takes milliseconds alone took more than 20 s to come out.
        let argv = ["/usr/bin/timeout", "-s", "KILL", "180", "/usr/bin/env", "-i"]
            + bad.environment.map { "\($0.key)=\($0.value)" } + [binary] + bad.arguments
        let r = try TestCommand.run(argv)
        #expect(r.status != 0 && r.status < 124, "\(bad): exit \(r.status) (124+ = killed/crashed)\nstderr: \(r.stderr)\nstdout: \(r.stdout)")
        for word in bad.mentions {
            #expect(r.stderr.contains(word), "\(bad): stderr does not name \(word.debugDescription):\n\(r.stderr)")
        }
        #expect(r.stderr.count < 4_000, "\(bad): error is buried in \(r.stderr.count) bytes")
    }
}
