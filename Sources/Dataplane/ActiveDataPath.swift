// The names the daemon, `status`, the metrics and pruning use for the data path that runs. They
// are this module's own (the daemon sees no kernel module): `DecapMode` mirrors BPFDataplane's one
// for one, and `ActiveDataPath` is what every consumer switches over instead of reading prose.

import BPFDataplane

/// Which data path carries the VXLAN traffic (--dataplane).
public enum DataplaneChoice: String, CaseIterable, Sendable {
    /// BPF (XDP decap where the NIC allows it, else TC) and the userspace path if BPF cannot load.
    case auto
    /// BPF with XDP decap; failing to load or attach is a hard error.
    case xdp
    /// BPF with TC decap; failing to load or attach is a hard error.
    case tc
    /// TUN + UDP in this process; no BPF at all.
    case userspace
}

/// How VXLAN from peers is received on the BPF path (BPFDataplane's DecapMode, by the same names).
public enum DecapMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// XDP on the underlay strips VXLAN from peers before the stack.
    case xdp
    /// The kernel vxlan device decapsulates; a TC-ingress program checks source and VNI first.
    case tc

    public var description: String { rawValue }

    init(_ mode: BPFDataplane.DecapMode) {
        switch mode {
        case .xdp: self = .xdp
        case .tc: self = .tc
        }
    }

    var bpf: BPFDataplane.DecapMode {
        switch self {
        case .xdp: .xdp
        case .tc: .tc
        }
    }
}

/// Which data path carries the node's traffic: what `status`, the state file, metrics and pruning
/// switch over. `DataplaneSetup.summary` is its prose for people.
public enum ActiveDataPath: Sendable, Equatable {
    case bpf(decap: DecapMode, fastPath: Bool)
    /// TUN + UDP in this process; `fallbackReason` when BPF was wanted (auto) and could not run.
    case userspace(fallbackReason: String?)
    case hostGW
    /// The kernel's vxlan devices alone, without our programs (an IPv6-only network: the BPF and
    /// userspace paths carry flannel's IPv4 half, which such a network lacks); `reason` says why.
    case kernelVXLAN(reason: String)

    /// The name the state file, `status` and the metrics' label use: bpf-xdp, bpf-tc, userspace, host-gw,
    /// kernel-vxlan.
    public var kind: String {
        switch self {
        case .bpf(let decap, _): "bpf-\(decap)"
        case .userspace: "userspace"
        case .hostGW: "host-gw"
        case .kernelVXLAN: "kernel-vxlan"
        }
    }

    /// Whether our BPF programs and pinned maps carry the traffic.
    public var usesBPF: Bool { if case .bpf = self { true } else { false } }
}
