// TC — cls_bpf direct-action filters on the clsact qdisc (libbpf 1.1 has no tcx).
//
// Design: a filter is identified by (ifindex, direction, handle, priority); a daemon owns the
// slots it names and nothing else. Attach creates clsact only when missing and puts or atomically
// replaces our filter in its slot (cls_bpf swaps the program in place, so traffic never runs
// without one). Detach removes only that slot and never the qdisc: other agents' filters (and the
// qdisc they hang on) stay. Removing the whole hook is a separate, explicit call. These calls act in
// the calling thread's network namespace.

import CBPF
import Glibc

public enum TCDirection: Sendable, Hashable, CustomStringConvertible {
    case ingress, egress

    var attachPoint: bpf_tc_attach_point { self == .ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS }
    public var description: String { self == .ingress ? "ingress" : "egress" }
}

public enum TC {
    private static func hook(_ ifindex: Int32, _ point: bpf_tc_attach_point) -> bpf_tc_hook {
        var hook = bpf_tc_hook()
        hook.sz = libbpfOptsSize(\bpf_tc_hook.parent)
        hook.ifindex = ifindex
        hook.attach_point = point
        return hook
    }

    /// The options naming the filter slot (handle, priority).
    private static func slot(handle: UInt32, priority: UInt32) -> bpf_tc_opts {
        var opts = bpf_tc_opts()
        opts.sz = libbpfOptsSize(\bpf_tc_opts.priority)
        opts.handle = handle
        opts.priority = priority
        return opts
    }

    private static func validate(_ operation: String, ifindex: Int32, handle: UInt32, priority: UInt32) throws(BPFError) {
        try requireInterface(ifindex, operation: operation)
        guard handle != 0, priority != 0, priority <= UInt32(UInt16.max) else {
            throw BPFError.invalid(operation, "handle \(handle), priority \(priority)",
                                   hint: "handle must be non-zero and priority 1...65535: they name the filter slot")
        }
    }

    /// Puts `program` as a direct-action filter at (handle, priority); replaces what is there.
    public static func attach(_ program: BPFProgram, ifindex: Int32, direction: TCDirection, handle: UInt32, priority: UInt32) throws(BPFError) {
        let operation = "bpf_tc_attach(\(program.name), ifindex \(ifindex), \(direction), handle \(handle), priority \(priority))"
        try validate(operation, ifindex: ifindex, handle: handle, priority: priority)
        try requireProgramType(program, BPF_PROG_TYPE_SCHED_CLS, operation: operation, section: "SEC(\"tc\")")
        var hook = hook(ifindex, direction.attachPoint)
        let (created, createMessages) = withLibbpfMessages { bpf_tc_hook_create(&hook) }
        if created != 0 && -created != EEXIST {
            throw BPFError.libbpf("bpf_tc_hook_create(ifindex \(ifindex), clsact)", returned: Int(created), detail: createMessages)
        }
        var opts = slot(handle: handle, priority: priority)
        opts.prog_fd = program.fd
        opts.flags = UInt32(BPF_TC_F_REPLACE.rawValue)
        let (ret, messages) = withLibbpfMessages { bpf_tc_attach(&hook, &opts) }
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret), detail: messages) }
    }

    /// The id of the program in the filter slot, or nil when the slot (or the clsact qdisc) is empty.
    public static func attachedProgramID(ifindex: Int32, direction: TCDirection, handle: UInt32, priority: UInt32) throws(BPFError) -> UInt32? {
        let operation = "bpf_tc_query(ifindex \(ifindex), \(direction), handle \(handle), priority \(priority))"
        try validate(operation, ifindex: ifindex, handle: handle, priority: priority)
        var hook = hook(ifindex, direction.attachPoint)
        var opts = slot(handle: handle, priority: priority)
        let (ret, messages) = withLibbpfMessages { bpf_tc_query(&hook, &opts) }
        if ret == 0 { return opts.prog_id }
        // The kernel answers an empty slot with ENOENT, or with EINVAL when there is no clsact
        // qdisc ("Parent Qdisc doesn't exists") or no filter at that priority yet ("Cannot find
        // specified filter chain"). The slot was validated above, so a kernel EINVAL means empty;
        // an EINVAL libbpf raises itself (it says so, without a kernel message) is a real error.
        let libbpfComplained = messages.split(separator: "\n").contains {
            $0.hasPrefix("libbpf:") && !$0.contains("Kernel error message")
        }
        if -ret == ENOENT || (-ret == EINVAL && !libbpfComplained) { return nil }
        throw BPFError.libbpf(operation, returned: Int(ret), detail: messages)
    }

    /// Removes the filter at (handle, priority) if present; leaves other filters and the qdisc.
    /// - Parameter expectedProgramID: when given, refuses (EEXIST) if another program is in the slot.
    ///   Checked just before the delete: netlink has no compare-and-delete for filters, so this
    ///   guards against a slot taken over earlier, not against a race in the same instant.
    public static func detach(ifindex: Int32, direction: TCDirection, handle: UInt32, priority: UInt32, expectedProgramID: UInt32? = nil) throws(BPFError) {
        let operation = "bpf_tc_detach(ifindex \(ifindex), \(direction), handle \(handle), priority \(priority))"
        try validate(operation, ifindex: ifindex, handle: handle, priority: priority)
        guard let current = try attachedProgramID(ifindex: ifindex, direction: direction, handle: handle, priority: priority) else { return }
        if let expectedProgramID, current != expectedProgramID {
            throw BPFError(operation: operation, errno: EEXIST,
                           detail: "program id \(current) is in the slot, not \(expectedProgramID): refusing to remove a filter that is not ours")
        }
        var hook = hook(ifindex, direction.attachPoint)
        var opts = slot(handle: handle, priority: priority)
        let (ret, messages) = withLibbpfMessages { bpf_tc_detach(&hook, &opts) }
        if ret != 0 && -ret != ENOENT { throw BPFError.libbpf(operation, returned: Int(ret), detail: messages) }
    }

    /// Deletes the clsact qdisc with ALL its ingress and egress filters, ours or not. Only for an
    /// explicit cleanup of an interface the caller owns. No qdisc: no-op.
    public static func destroyHook(ifindex: Int32) throws(BPFError) {
        var hook = hook(ifindex, bpf_tc_attach_point(rawValue: BPF_TC_INGRESS.rawValue | BPF_TC_EGRESS.rawValue))
        let operation = "bpf_tc_hook_destroy(ifindex \(ifindex), clsact)"
        try requireInterface(ifindex, operation: operation)
        let (ret, messages) = withLibbpfMessages { bpf_tc_hook_destroy(&hook) }
        if ret != 0 && -ret != ENOENT && -ret != EINVAL {
            throw BPFError.libbpf(operation, returned: Int(ret), detail: messages)
        }
    }
}
