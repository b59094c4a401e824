// TCX — BPF programs on an interface's ingress or egress as links (Linux 6.6+), without a qdisc.
//
// Design: cls_bpf needs a clsact qdisc, and creating one deactivates the device for a moment: a
// packet sent meanwhile is dropped (measured: a 2 ms ping loses one in fifty while clsact comes and
// goes). A tcx link needs no qdisc, so attaching to a busy interface (a node taken over from stock
// flannel, a pod's veth while the pod talks) loses nothing. Several programs share a hook and run
// in order; each is owned by its link, which — like every link — lives while an fd or a pin holds
// it, can swap its program atomically (`BPFLink.update`) and detaches when the interface goes.
// Calls act in the calling thread's network namespace.

import CBPF
import Glibc

/// One program on a tcx hook, in the order the hook runs them.
public struct TCXAttachment: Sendable, Equatable {
    public var programID: UInt32
    /// 0 when the program was attached without a link (BPF_PROG_ATTACH).
    public var linkID: UInt32
}

public enum TCX {
    static func attachType(_ direction: TCDirection) -> UInt32 {
        UInt32(direction == .ingress ? CBPF_BPF_TCX_INGRESS : CBPF_BPF_TCX_EGRESS)
    }

    /// The programs on `direction` of interface `ifindex`, in run order (empty: none).
    public static func attached(ifindex: Int32, direction: TCDirection) throws(BPFError) -> [TCXAttachment] {
        let operation = "bpf_prog_query(ifindex \(ifindex), tcx \(direction))"
        try requireInterface(ifindex, operation: operation)
        var capacity: UInt32 = 16
        while true {
            var programs = [UInt32](repeating: 0, count: Int(capacity))
            var links = [UInt32](repeating: 0, count: Int(capacity))
            var count: UInt32 = 0
            let ret = cbpf_tcx_query(ifindex, attachType(direction), &programs, &links, capacity, &count)
            if ret == -ENOSPC || (ret == 0 && count > capacity) {
                capacity = max(capacity * 2, count)
                continue
            }
            if ret != 0 {
                throw BPFError.libbpf(operation, returned: Int(ret),
                                      hint: -ret == EINVAL ? "the kernel needs tcx (Linux 6.6 or later)" : nil)
            }
            return (0..<Int(count)).map { TCXAttachment(programID: programs[$0], linkID: links[$0]) }
        }
    }
}

extension BPFLink {
    public static let tcxLinkType = UInt32(CBPF_BPF_LINK_TYPE_TCX)

    /// Attaches `program` (SEC("tc")) to `direction` of interface `ifindex`, after the programs
    /// already there. Nothing else on the hook changes, and no qdisc is created.
    public static func attachTCX(_ program: BPFProgram, ifindex: Int32, direction: TCDirection) throws(BPFError) -> BPFLink {
        let operation = "bpf_link_create(\(program.name), ifindex \(ifindex), tcx \(direction))"
        try requireInterface(ifindex, operation: operation)
        try requireProgramType(program, BPF_PROG_TYPE_SCHED_CLS, operation: operation, section: "SEC(\"tc\")")
        let fd = cbpf_link_create_tcx(program.fd, ifindex, TCX.attachType(direction))
        guard fd >= 0 else {
            throw BPFError.libbpf(operation, returned: Int(fd),
                                  hint: -fd == EINVAL ? "the kernel needs tcx (Linux 6.6 or later)" : nil)
        }
        return BPFLink(fd: fd, linkName: program.name)
    }

    /// Swaps the link's program for `program`, atomically: every packet meets one or the other.
    public func update(to program: BPFProgram) throws(BPFError) {
        let ret = bpf_link_update(fd, program.fd, nil)
        if ret != 0 {
            throw BPFError.libbpf("bpf_link_update(\(name) → \(program.name))", returned: Int(ret),
                                  hint: "the new program must have the link's type and attach type")
        }
    }

    /// Detaches the link from its hook now, whoever else holds it (its pins and fds stay, defunct).
    public func detach() throws(BPFError) {
        let ret = bpf_link_detach(fd)
        if ret != 0 && -ret != ENOLINK {
            throw BPFError.libbpf("bpf_link_detach(\(name))", returned: Int(ret))
        }
    }
}
