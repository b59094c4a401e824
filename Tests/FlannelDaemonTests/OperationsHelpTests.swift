// `--help` of the inspection verbs is part of what operators script against: pinned here (80 columns,
// as printed when not on a terminal), like the root's and cleanup's in HelpTests.swift.

import ArgumentParser
import FlannelDaemon
import TestTraits
import Testing

@Suite("Operations: inspection verbs' --help", .ownThreads)
struct OperationsHelpTests {
    @Test("status --help is pinned")
    func statusHelp() {
        let expected = """
        OVERVIEW: Show the data path in use and why, interface, subnet, lease, etcd,
        attached programs and maps.

        Reads the daemon's state file (next to --subnet-file) and the kernel: the pins
        under --bpffs and the programs attached in flanneld-xdp's slots. Works while
        the daemon runs and after it stopped. Exit status: 0 the daemon runs and is
        ready, 1 it runs but is not ready (degraded), 3 it does not run.

        USAGE: flanneld-xdp status [--subnet-file <subnet-file>] [--state-file <state-file>] [--json] [--bpffs <bpffs>]

        OPTIONS:
          --subnet-file <subnet-file>
                                  The daemon's --subnet-file; its state file sits
                                  beside it. (default: /run/flannel/subnet.env)
          --state-file <state-file>
                                  Read this state file instead of the one beside
                                  --subnet-file.
          --json                  Print JSON for scripts.
          --bpffs <bpffs>         bpffs mount under which the BPF maps and programs are
                                  pinned. (default: /sys/fs/bpf)
          --version               Show the version.
          -h, --help              Show help information.
        """
        #expect(FlanneldXDP.helpMessage(for: Status.self, columns: 80).trimmingTrailingNewlines() == expected)
    }

    @Test("peers --help is pinned")
    func peersHelp() {
        let expected = """
        OVERVIEW: List the peers in the pinned BPF maps: subnet, node IP, VTEP MAC,
        decap acceptance, packets and bytes.

        Reads the maps pinned under --bpffs; works while the daemon runs and after it
        stopped. TX counts what BPF encapsulated to a peer node, RX what decap accepted
        from it; packets left to the kernel path are not included (see `flanneld-xdp
        stats`).

        USAGE: flanneld-xdp peers [--json] [--bpffs <bpffs>]

        OPTIONS:
          --json                  Print JSON for scripts.
          --bpffs <bpffs>         bpffs mount under which the BPF maps and programs are
                                  pinned. (default: /sys/fs/bpf)
          --version               Show the version.
          -h, --help              Show help information.
        """
        #expect(FlanneldXDP.helpMessage(for: Peers.self, columns: 80).trimmingTrailingNewlines() == expected)
    }

    @Test("stats --help is pinned")
    func statsHelp() {
        let expected = """
        OVERVIEW: Show the BPF data path counters, drop reasons by name.

        Counters are per-CPU in the pinned map fxdp_counters_v2, summed here; they
        survive daemon restarts.

        USAGE: flanneld-xdp stats [--watch] [--interval <interval>] [--count <count>] [--json] [--bpffs <bpffs>]

        OPTIONS:
          --watch                 Redraw every --interval seconds with rates, like top
                                  (Ctrl-C stops).
          --interval <interval>   Seconds between redraws with --watch. (default: 1.0)
          --count <count>         With --watch: stop after this many redraws (0: until
                                  interrupted). (default: 0)
          --json                  Print JSON for scripts.
          --bpffs <bpffs>         bpffs mount under which the BPF maps and programs are
                                  pinned. (default: /sys/fs/bpf)
          --version               Show the version.
          -h, --help              Show help information.
        """
        #expect(FlanneldXDP.helpMessage(for: Stats.self, columns: 80).trimmingTrailingNewlines() == expected)
    }

}

extension String {
    func trimmingTrailingNewlines() -> String {
        var t = Substring(self)
        while t.last == "\n" { t.removeLast() }
        return String(t)
    }
}
