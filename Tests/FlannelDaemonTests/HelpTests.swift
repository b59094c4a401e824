import ArgumentParser
import FlannelDaemon
import Testing

/// `--help` is part of the interface operators script against: any change to it must be deliberate.
extension DaemonSuite {
@Suite("Help text and the built binary")
struct HelpAndBinaryTests {
    @Test("root --help is pinned (80 columns, as printed when not on a terminal)")
    func rootHelp() {
        let expected = """
        OVERVIEW: flannel's node agent with a BPF VXLAN data path: same flags, files,
        etcd keys and wire as flanneld.

        Flags take flanneld's forms too: -iface=eth0, -iface eth0, --iface=eth0,
        --iface eth0; booleans as --ip-masq or --ip-masq=true. Every flag can also come
        from FLANNELD_<NAME> (e.g. FLANNELD_IFACE, FLANNELD_ETCD_ENDPOINTS); a flag on
        the command line beats its variable.

        USAGE: flanneld-xdp [<options>]
               flanneld-xdp <subcommand> [<options>]

        INTERFACE:
          --iface <iface>         Interface to use (IP or name) for inter-host
                                  communication. Can be given several times to check
                                  each in order; the first found is used.
          --iface-regex <iface-regex>
                                  Regex matching the first interface (IP or name) to
                                  use for inter-host communication. Can be given
                                  several times; skipped if --iface is given.
          --iface-can-reach <iface-can-reach>
                                  IPv4 address whose route picks the interface (the
                                  device of `ip route get <address>`) when no --iface
                                  or --iface-regex matches.
          --public-ip <public-ip> IP accessible by other nodes for inter-host
                                  communication.
          --public-ipv6 <public-ipv6>
                                  IPv6 accessible by other nodes for inter-host
                                  communication (dual-stack and IPv6-only networks).

        ETCD:
          --etcd-endpoints <etcd-endpoints>
                                  Comma-separated list of etcd endpoints. (default:
                                  http://127.0.0.1:4001,http://127.0.0.1:2379)
          --etcd-prefix <etcd-prefix>
                                  etcd prefix holding the network config and the subnet
                                  leases. (default: /coreos.com/network)
          --etcd-keyfile <etcd-keyfile>
                                  SSL key file used to secure etcd communication.
          --etcd-certfile <etcd-certfile>
                                  SSL certification file used to secure etcd
                                  communication.
          --etcd-cafile <etcd-cafile>
                                  SSL Certificate Authority file used to secure etcd
                                  communication.
          --etcd-username <etcd-username>
                                  Username for BasicAuth to etcd.
          --etcd-password <etcd-password>
                                  Password for BasicAuth to etcd.
          --etcd-api <etcd-api>   etcd API generation holding the leases: auto, v2
                                  (flannel <= 0.17) or v3. (values: auto, v2, v3;
                                  default: auto)
          --etcd-start-timeout <etcd-start-timeout>
                                  Seconds start-up waits for etcd before it starts from
                                  --last-known-state instead (only when that file holds
                                  a lease that has not expired). (default: 10)

        SUBNET LEASE:
          --subnet-file <subnet-file>
                                  Filename where env variables (subnet, MTU, ...) will
                                  be written to. (default: /run/flannel/subnet.env)
          --subnet-lease-renew-margin <subnet-lease-renew-margin>
                                  Subnet lease renewal margin, in minutes, ranging from
                                  1 to 1439. (default: 60)
          --subnet-lease-ttl <subnet-lease-ttl>
                                  Subnet lease TTL, in seconds, from 2 to 31536000
                                  (flanneld-xdp extension, for tests and small labs;
                                  flannel uses 24 h). (default: 86400)
          --ip-masq               Setup IP masquerade rule for traffic destined outside
                                  of overlay network.
          --last-known-state <last-known-state>
                                  File (on a disk that survives reboots) where the
                                  leases last confirmed by etcd are kept, to start from
                                  when etcd is unreachable at boot; empty to disable.
                                  (default: /var/lib/flanneld-xdp/last-known.json)

        DATA PATH:
          --dataplane <dataplane> Data path: auto (BPF, falling back to userspace if
                                  BPF cannot load), xdp, tc or userspace. (values:
                                  auto, xdp, tc, userspace; default: auto)
          --bpffs <bpffs>         bpffs mount under which the BPF maps and programs are
                                  pinned. (default: /sys/fs/bpf)
          --bpf-object <bpf-object>
                                  Compiled BPF object to load instead of the built-in
                                  one (a program upgrade; its maps must match the
                                  pinned ones). If it cannot run, flanneld-xdp stops:
                                  no fallback.
          --reconcile-interval <reconcile-interval>
                                  Seconds between full passes that compare the peer
                                  tables with the leases and repair drift. (default: 60)
          --inner-source-check <inner-source-check>
                                  Accept a decapsulated packet only when its source
                                  lies in a subnet of the peer node that sent it (or is
                                  that node's own address). Turn off (=false) only
                                  where nodes forward traffic from outside their own
                                  subnet without masquerade (docs/SECURITY.md).
                                  (default: true)
          --fast-path <fast-path> BPF data path: let established pod-to-pod flows skip
                                  both nodes' network stacks (encapsulated where the
                                  pod's packet enters the host, handed straight to the
                                  receiving pod). Sets
                                  net.netfilter.nf_conntrack_tcp_be_liberal=1. =false
                                  keeps every packet on the kernel's forwarding path
                                  (docs/BPF-DATAPATH.md). (default: true)

        HOST RULES:
          --iptables-resync <iptables-resync>
                                  Seconds between the checks that re-add missing
                                  FORWARD, masquerade and blackhole rules. (default: 5)
          --iptables-forward-rules <iptables-forward-rules>
                                  Accept forwarding to and from the flannel network in
                                  iptables' filter FORWARD chain (where Docker sets a
                                  DROP policy); =false to leave FORWARD alone.
                                  (default: true)
          --ip-masq-fully-random-disable
                                  Masquerade without fully-random source ports (with
                                  --ip-masq).
          --ip-blackhole-route    Keep a blackhole route for this node's subnet, for
                                  nodes whose pods have no bridge route of their own.

        HEALTH AND METRICS:
          --healthz-ip <healthz-ip>
                                  The IP address for healthz server to listen.
                                  (default: 0.0.0.0)
          --healthz-port <healthz-port>
                                  The port for healthz server to listen (0 to disable).
                                  (default: 0)
          --metrics-port <metrics-port>
                                  Port for Prometheus metrics on --healthz-ip (0 to
                                  disable). (default: 0)
          --metrics-per-peer      Also export packets and bytes per peer node on
                                  /metrics: 4 series per peer (20 000 per node in a
                                  5000-node cluster).

        \(loggingHelp)

        FLANNELD'S KLOG FLAGS:
          --v <v>                 flanneld's klog verbosity: 0 leaves --log-level as it
                                  is, 1-3 log at debug, 4 and more at trace. (default:
                                  0)
          --vmodule <vmodule>     flanneld's per-file klog verbosity (pattern=N,...):
                                  files are Go's, so the highest N applies to the whole
                                  log, as -v.
          --log_backtrace_at <log_backtrace_at>
                                  flanneld's klog flag (file.go:N): accepted for
                                  compatibility; there are no Go files to trace here.

        KUBERNETES SUBNET MANAGER (NOT IN THIS BUILD):
          --kube-subnet-mgr       flanneld's Kubernetes subnet manager: not supported
                                  by this build (etcd only); refused.
          --kube-api-url <kube-api-url>
                                  Used only by the Kubernetes subnet manager (ignored
                                  here).
          --kube-annotation-prefix <kube-annotation-prefix>
                                  Used only by the Kubernetes subnet manager (ignored
                                  here). (default: flannel.alpha.coreos.com)
          --kubeconfig-file <kubeconfig-file>
                                  Used only by the Kubernetes subnet manager (ignored
                                  here).
          --net-config-path <net-config-path>
                                  Network config file of the Kubernetes subnet manager
                                  (ignored here: the etcd subnet manager reads
                                  <etcd-prefix>/config, as flanneld does). (default:
                                  /etc/kube-flannel/net-conf.json)
          --set-node-network-unavailable <set-node-network-unavailable>
                                  Used only by the Kubernetes subnet manager (ignored
                                  here). (default: true)

        OPTIONS:
          --version               Show the version.
          -h, --help              Show help information.

        SUBCOMMANDS:
          cleanup                 Remove what flanneld-xdp set up on this node (BPF
                                  programs, pins, the flannel.<VNI> device, its routes,
                                  the masquerade table, the FORWARD accepts, the
                                  blackhole route) and nothing else.
          status                  Show the data path in use and why, interface, subnet,
                                  lease, etcd, attached programs and maps.
          peers                   List the peers in the pinned BPF maps: subnet, node
                                  IP, VTEP MAC, decap acceptance, packets and bytes.
          stats                   Show the BPF data path counters, drop reasons by name.
          monitor                 Print packets the BPF data path drops, as they
                                  happen: time, reason, interface, addresses, VNI,
                                  inner addresses.
          doctor                  Check that this host can run flanneld-xdp as
                                  configured, and say how to fix what is not.

          See 'flanneld-xdp help <subcommand>' for detailed help.
        """
        #expect(trimmed(FlanneldXDP.helpMessage(columns: 80)) == expected)
    }

    @Test("cleanup --help is pinned")
    func cleanupHelp() {
        let expected = """
        OVERVIEW: Remove what flanneld-xdp set up on this node (BPF programs, pins, the
        flannel.<VNI> device, its routes, the masquerade table, the FORWARD accepts,
        the blackhole route) and nothing else.

        The lease in etcd is left alone: it expires by its TTL or is reused when the
        node comes back. With --keep-kernel-path the FORWARD accepts and the blackhole
        route stay too: they are flanneld's own rules, spelled as it spells them.

        USAGE: flanneld-xdp cleanup [--keep-kernel-path] [--bpffs <bpffs>] [--log-level <log-level>] [--log-format <log-format>]

        \(loggingHelp)

        OPTIONS:
          --keep-kernel-path      Detach the BPF programs and remove the pins, but keep
                                  flannel.<VNI> and the kernel routes so stock flanneld
                                  can take the node over without a gap.
          --bpffs <bpffs>         bpffs mount under which the BPF maps and programs are
                                  pinned. (default: /sys/fs/bpf)
          --version               Show the version.
          -h, --help              Show help information.
        """
        #expect(trimmed(FlanneldXDP.helpMessage(for: Cleanup.self, columns: 80)) == expected)
    }

    @Test("the binary: --help and --version exit 0; bad flags exit non-zero naming the flag; stubs say so")
    func binary() throws {
        let binary = try #require(builtBinaryPath(), "flanneld-xdp must be built beside the tests (swift build --build-tests)")
        let help = try runProgram(binary, ["-help"])
        #expect(help.status == 0)
        #expect(help.output.contains("--iface-regex"))
        let version = try runProgram(binary, ["--version"])
        #expect(version.status == 0)
        #expect(version.output == FlannelDaemonVersion.string + "\n")
        #expect(try runProgram(binary, ["-version"]).output == FlannelDaemonVersion.string + "\n")

        let unknown = try runProgram(binary, ["-no-such-flag=1"])
        #expect(unknown.status == 64)
        #expect(unknown.output.contains("--no-such-flag"))
        let malformed = try runProgram(binary, ["--healthz-port", "http"])
        #expect(malformed.status == 64)
        #expect(malformed.output.contains("http"))
        let fromEnv = try runProgram(binary, [], environment: ["FLANNELD_HEALTHZ_PORT=70000"])
        #expect(fromEnv.status == 64)
        #expect(fromEnv.output.contains("FLANNELD_HEALTHZ_PORT"))
        let cleanupWithDaemonFlag = try runProgram(binary, ["cleanup", "-iface=eth0"])
        #expect(cleanupWithDaemonFlag.status == 64)
        #expect(cleanupWithDaemonFlag.output.contains("--iface"))
        for verb in ["peers", "stats"] {
            let noPins = try runProgram(binary, [verb, "--bpffs", "/nonexistent-fxd-bpffs"])
            #expect(noPins.status != 0)
            #expect(noPins.output.contains("no pinned maps"))
        }
    }
}
}

/// The LOGGING group every verb that logs shows, as the pinned help texts interpolate it.
private let loggingHelp = """
    LOGGING:
      --log-level <log-level> Log level: trace, debug, info, notice, warning, error
                              or critical. (values: trace, debug, info, notice,
                              warning, error, critical; default: info)
      --log-format <log-format>
                              Log line format: text, or json (one object per line).
                              Under systemd each line also gets journald's priority
                              prefix. (values: text, json; default: text)
    """

private func trimmed(_ text: String) -> String {
    var t = Substring(text)
    while t.last == "\n" { t.removeLast() }
    return String(t)
}
