// XDP — attach, replace, query and detach XDP programs on an interface (netlink, no bpf_link).
//
// Design: a netlink XDP attachment stays when the process exits, which is what a restartable data
// path wants, but nothing stops two agents from fighting over an interface. So every change here
// names what it expects to find: attach with `replacing: nil` succeeds only when the slot is empty
// (XDP_FLAGS_UPDATE_IF_NOEXIST), attach with an id swaps atomically only if that id is attached
// (XDP_FLAGS_REPLACE + the old program's fd: no window without a program), and detach removes only
// the program it was told is ours. Namespaces: these calls act in the calling thread's network
// namespace.

import CBPF
import Glibc

public enum XDPMode: Sendable, Hashable, CustomStringConvertible {
    /// Driver mode (XDP_FLAGS_DRV_MODE): runs before the kernel allocates an skb. veth supports it.
    case native
    /// Generic mode (XDP_FLAGS_SKB_MODE): works on every device, after skb allocation.
    case generic

    var flag: UInt32 {
        switch self {
        case .native: return UInt32(XDP_FLAGS_DRV_MODE)
        case .generic: return UInt32(XDP_FLAGS_SKB_MODE)
        }
    }

    public var description: String { self == .native ? "native" : "generic" }
}

public enum XDP {
    /// Attaches `program` to `ifindex`.
    /// - Parameter expectedID: nil: only when no program is attached in that mode (EBUSY otherwise);
    ///   an id: atomically replaces exactly that program (EEXIST if another one is attached).
    public static func attach(_ program: BPFProgram, ifindex: Int32, mode: XDPMode, replacing expectedID: UInt32?) throws(BPFError) {
        let operation = "bpf_xdp_attach(\(program.name), ifindex \(ifindex), \(mode))"
        try requireInterface(ifindex, operation: operation)
        try requireProgramType(program, BPF_PROG_TYPE_XDP, operation: operation, section: "SEC(\"xdp\")")
        var opts = bpf_xdp_attach_opts()
        opts.sz = libbpfOptsSize(\bpf_xdp_attach_opts.old_prog_fd)
        var flags = mode.flag
        var oldFD: OwnedFD? = nil
        if let expectedID {
            let fd = bpf_prog_get_fd_by_id(expectedID)
            guard fd >= 0 else {
                throw BPFError.libbpf(operation, returned: Int(fd),
                                      detail: "the program to replace (id \(expectedID)) is not loaded",
                                      hint: "query attachedProgramID again: the expected program is gone")
            }
            oldFD = OwnedFD(fd)
            opts.old_prog_fd = fd
            flags |= UInt32(XDP_FLAGS_REPLACE)
        } else {
            flags |= UInt32(XDP_FLAGS_UPDATE_IF_NOEXIST)
        }
        let (ret, messages) = withLibbpfMessages { bpf_xdp_attach(ifindex, program.fd, flags, &opts) }
        _ = consume oldFD
        if ret != 0 {
            let currentText: String
            do throws(BPFError) {
                let current = try attachedProgramID(ifindex: ifindex, mode: mode)
                currentText = current.map { "program id \($0) is attached" } ?? "nothing is attached"
            } catch {
                currentText = "could not query what is attached"
            }
            var hint: String? = nil
            if -ret == EBUSY || -ret == EEXIST {
                hint = expectedID == nil
                    ? "another program is attached: pass its id as `replacing:` to replace it on purpose"
                    : "the attached program is not the expected one: query attachedProgramID and decide"
            } else if -ret == EOPNOTSUPP && mode == .native {
                hint = "this driver has no native XDP: use XDPMode.generic"
            }
            throw BPFError.libbpf(operation, returned: Int(ret),
                                  detail: "expected \(expectedID.map { "id \($0)" } ?? "an empty slot"); \(currentText)"
                                      + (messages.isEmpty ? "" : "\n" + messages),
                                  hint: hint)
        }
    }

    /// The id of the program attached in `mode`, or nil.
    public static func attachedProgramID(ifindex: Int32, mode: XDPMode) throws(BPFError) -> UInt32? {
        // The kernel reports "nothing attached" for an interface that does not exist.
        try requireInterface(ifindex, operation: "bpf_xdp_query(ifindex \(ifindex))")
        var opts = bpf_xdp_query_opts()
        opts.sz = libbpfOptsSize(\bpf_xdp_query_opts.attach_mode)
        let ret = bpf_xdp_query(ifindex, 0, &opts)
        if ret != 0 {
            throw BPFError.libbpf("bpf_xdp_query(ifindex \(ifindex))", returned: Int(ret))
        }
        let id = mode == .native ? opts.drv_prog_id : opts.skb_prog_id
        return id == 0 ? nil : id
    }

    /// Detaches the program in `mode` only if it is `expectedProgramID` (checked atomically by the
    /// kernel). Nothing attached: no-op. Another program attached: throws EEXIST and leaves it.
    public static func detach(ifindex: Int32, mode: XDPMode, expectedProgramID: UInt32) throws(BPFError) {
        let operation = "bpf_xdp_detach(ifindex \(ifindex), \(mode), expected id \(expectedProgramID))"
        guard let current = try attachedProgramID(ifindex: ifindex, mode: mode) else { return }
        guard current == expectedProgramID else {
            throw BPFError(operation: operation, errno: EEXIST,
                           detail: "program id \(current) is attached, not \(expectedProgramID): refusing to detach a program that is not ours",
                           hint: "it belongs to someone else; detach it yourself with `ip link set dev … xdp off` if you are sure")
        }
        let fd = bpf_prog_get_fd_by_id(expectedProgramID)
        guard fd >= 0 else { throw BPFError.libbpf(operation, returned: Int(fd)) }
        let oldFD = OwnedFD(fd)
        var opts = bpf_xdp_attach_opts()
        opts.sz = libbpfOptsSize(\bpf_xdp_attach_opts.old_prog_fd)
        opts.old_prog_fd = oldFD.raw
        let (ret, messages) = withLibbpfMessages { bpf_xdp_detach(ifindex, mode.flag | UInt32(XDP_FLAGS_REPLACE), &opts) }
        if ret != 0 {
            throw BPFError.libbpf(operation, returned: Int(ret), detail: messages,
                                  hint: -ret == EEXIST ? "another program was attached meanwhile: left in place" : nil)
        }
    }
}

/// Throws ENODEV unless `ifindex` names an interface in the calling thread's network namespace.
func requireInterface(_ ifindex: Int32, operation: String) throws(BPFError) {
    var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
    guard ifindex > 0, if_indextoname(UInt32(ifindex), &name) != nil else {
        throw BPFError(operation: operation, errno: ENODEV, detail: "no interface with index \(ifindex) in this network namespace",
                       hint: "pass a real interface index; namespaced work must run on a thread that entered the namespace")
    }
}

/// Throws EINVAL with a clear message when `program` is not of the type a hook takes (the kernel
/// would only say "Invalid argument").
func requireProgramType(_ program: BPFProgram, _ type: bpf_prog_type, operation: String, section: String) throws(BPFError) {
    let info = try program.info()
    guard info.type == type.rawValue else {
        throw BPFError.invalid(operation, "program '\(program.name)' has type \(info.type), this hook needs type \(type.rawValue)",
                               hint: "declare the program with \(section) in the BPF C source")
    }
}
