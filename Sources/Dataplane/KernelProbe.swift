// What `doctor` asks of the kernel and the pins, read-only: whether the kernel loads our program
// types, whether bpffs is mounted, which map layout this build pins, which flannel.<VNI> devices
// exist. The findings and their fixes are the daemon's (Operations/Doctor.swift).

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import Netlink

public enum KernelProbe {
    /// The program types the data path loads.
    public enum ProgramType: CaseIterable, Sendable {
        /// XDP (decap mode xdp).
        case xdp
        /// TC classifier (encap, decap check).
        case tc

        var libbpfType: bpf_prog_type {
            switch self {
            case .xdp: BPF_PROG_TYPE_XDP
            case .tc: BPF_PROG_TYPE_SCHED_CLS
            }
        }
    }

    /// The kernel's answer to loading a trivial program of `type` (BPF_PROG_LOAD): 1 it loads it,
    /// -EPERM the syscall refused this process, anything else it does not support it.
    public static func loads(_ type: ProgramType) -> Int32 {
        libbpf_probe_bpf_prog_type(type.libbpfType, nil)
    }

    public static func isBPFFSMounted(at path: String) -> Bool {
        BPFFS.isMounted(at: path)
    }

    /// The map layout version in this build's pin names (fxdp_<name>_v<N>).
    public static var abiVersion: Int { Int(FXDP_ABI_VERSION) }

    /// The prefix of every program and map name of ours.
    public static var namePrefix: String { FlannelBPF.programPrefix }

    /// Our flannel.<VNI> vxlan devices in this namespace, with their MTU (none when unreadable).
    public static func flannelDevices() -> [(name: String, mtu: Int)] {
        guard var nl = try? NetlinkSocket(), let links = try? nl.links() else { return [] }
        return links.filter { $0.kind == "vxlan" && $0.name.hasPrefix("flannel.") }.map { ($0.name, $0.mtu) }
    }
}
