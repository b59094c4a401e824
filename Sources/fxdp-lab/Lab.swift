// fxdp-lab — the developer tool behind `make demo` and `make bench`: builds a netns lab (the same
// NetnsLab the tests use), runs flanneld-xdp or the raw data paths in it, and reports.
import ArgumentParser

@main
struct FXDPLab: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fxdp-lab",
        abstract: "Network-namespace lab for flanneld-xdp: demo and benchmarks.",
        subcommands: [Demo.self, Bench.self]
    )
}
