// fxdp-bench — `make bench`: the data paths, the BPF programs and the control plane side by side
// (BenchKit), in network namespaces of its own.
import ArgumentParser
import BenchKit

@main
extension Bench {}
