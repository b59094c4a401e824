// BPFLink — attachments made through bpf_link (netfilter hooks, kernel 6.4+; tcx, 6.6+: TCX.swift).
//
// Design: a link lives as long as something holds it: an fd of ours, or a pin on a bpffs. A data
// path that must outlive the process pins its links and closes its fds; a later process opens the
// pin to see which program the link runs (`info().programID`) and, to change it, attaches the new
// program first and then swaps the pin (netfilter links cannot be updated in place): the old link
// is released only when the pin and the last fd are gone, so the hook is never empty. Namespaces:
// a netfilter link attaches to the network namespace of the calling thread.

import CBPF
import Glibc

/// The protocol family of a netfilter hook (include/uapi/linux/netfilter.h NFPROTO_*).
public enum NetfilterFamily: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case ipv4 = 2
    case ipv6 = 10

    public var description: String { self == .ipv4 ? "ipv4" : "ipv6" }
}

/// A netfilter hook of IPv4 or IPv6 (include/uapi/linux/netfilter.h `enum nf_inet_hooks`).
public enum NetfilterHook: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case preRouting = 0
    case localIn = 1
    case forward = 2
    case localOut = 3
    case postRouting = 4

    public var description: String {
        switch self {
        case .preRouting: "prerouting"
        case .localIn: "input"
        case .forward: "forward"
        case .localOut: "output"
        case .postRouting: "postrouting"
        }
    }
}

/// What the kernel says about a link.
public struct BPFLinkInfo: Sendable, Equatable {
    public var id: UInt32
    /// enum bpf_link_type (BPF_LINK_TYPE_NETFILTER = 10).
    public var type: UInt32
    public var programID: UInt32
    /// For a netfilter link: its family, hook and priority (nil for other links).
    public var netfilterFamily: UInt32?
    public var netfilterHook: UInt32?
    public var netfilterPriority: Int32?
    /// For a tcx link: the interface and the hook (0 and nil once the interface is gone or the link
    /// was detached).
    public var tcxIfindex: Int32?
    public var tcxDirection: TCDirection?
}

/// One bpf_link, owned: closing the last fd (and removing every pin) detaches it.
public struct BPFLink: ~Copyable {
    public let fd: Int32
    public let name: String

    private init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    init(fd: Int32, linkName: String) {
        self.init(fd: fd, name: linkName)
    }

    deinit { close(fd) }

    /// The numbers libbpf 1.1 does not know: BPF_PROG_TYPE_NETFILTER and its attach type. A program
    /// meant for `attachNetfilter` gets them before load (`BPFObject.setNetfilterType`).
    public static let netfilterProgramType = UInt32(CBPF_BPF_PROG_TYPE_NETFILTER)
    public static let netfilterAttachType = UInt32(CBPF_BPF_NETFILTER)
    public static let netfilterLinkType = UInt32(CBPF_BPF_LINK_TYPE_NETFILTER)

    /// Attaches `program` (a loaded netfilter program) to `hook` of `family` at `priority` in the
    /// calling thread's network namespace.
    public static func attachNetfilter(_ program: BPFProgram, family: NetfilterFamily = .ipv4, hook: NetfilterHook,
                                       priority: Int32) throws(BPFError) -> BPFLink {
        let operation = "bpf_link_create(\(program.name), netfilter \(family) \(hook) priority \(priority))"
        let fd = cbpf_link_create_netfilter(program.fd, family.rawValue, hook.rawValue, priority)
        guard fd >= 0 else {
            throw BPFError.libbpf(operation, returned: Int(fd),
                                  hint: -fd == EINVAL
                                      ? "the kernel needs BPF netfilter links (Linux 6.4 or later) and a program loaded as BPF_PROG_TYPE_NETFILTER"
                                      : nil)
        }
        return BPFLink(fd: fd, name: program.name)
    }

    /// Opens the link pinned at `path`.
    public static func openPinned(path: String) throws(BPFError) -> BPFLink {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else {
            throw BPFError.libbpf("bpf_obj_get(\(path))", returned: Int(fd), hint: "no link is pinned there")
        }
        return BPFLink(fd: fd, name: path)
    }

    /// Opens the link with id `id` (needs CAP_SYS_ADMIN).
    public static func open(id: UInt32) throws(BPFError) -> BPFLink {
        let fd = bpf_link_get_fd_by_id(id)
        guard fd >= 0 else {
            throw BPFError.libbpf("bpf_link_get_fd_by_id(\(id))", returned: Int(fd), hint: "run as root (CAP_SYS_ADMIN)")
        }
        return BPFLink(fd: fd, name: "link \(id)")
    }

    /// Pins the link at `path` on a bpffs: it then stays attached after every fd is closed.
    public func pin(at path: String) throws(BPFError) {
        try pinObject(fd: fd, name: "link \(name)", at: path)
    }

    public func info() throws(BPFError) -> BPFLinkInfo {
        var info = bpf_link_info()
        var length = UInt32(MemoryLayout<bpf_link_info>.size)
        let ret = bpf_obj_get_info_by_fd(fd, &info, &length)
        if ret != 0 { throw BPFError.libbpf("bpf_link_get_info_by_fd(\(name))", returned: Int(ret)) }
        var result = BPFLinkInfo(id: info.id, type: info.type, programID: info.prog_id)
        if info.type == BPFLink.tcxLinkType {
            // { ifindex, attach_type } at the same offset.
            withUnsafeBytes(of: info) { raw in
                result.tcxIfindex = raw.loadUnaligned(fromByteOffset: 16, as: Int32.self)
                let type = raw.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
                result.tcxDirection = type == TCX.attachType(.ingress) ? .ingress : type == TCX.attachType(.egress) ? .egress : nil
            }
        }
        if info.type == BPFLink.netfilterLinkType {
            // The union after prog_id (8-byte aligned, offset 16) holds { pf, hooknum, priority,
            // flags } for netfilter links; Debian's uapi header (6.1) predates that member.
            withUnsafeBytes(of: info) { raw in
                result.netfilterFamily = raw.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
                result.netfilterHook = raw.loadUnaligned(fromByteOffset: 20, as: UInt32.self)
                result.netfilterPriority = raw.loadUnaligned(fromByteOffset: 24, as: Int32.self)
            }
        }
        return result
    }
}

extension BPFObject {
    /// Makes a program of this (not yet loaded) object a netfilter program. libbpf before 1.2 does
    /// not know SEC("netfilter") and would leave the type unset; this sets what the section means.
    public mutating func setNetfilterType(programNamed programName: String) throws(BPFError) {
        try setProgramType(programNamed: programName, type: BPFLink.netfilterProgramType,
                           expectedAttachType: BPFLink.netfilterAttachType)
    }
}
