// BPFError — the one error every BPFLoader call throws.
//
// Design: libbpf reports failures as -errno (and sometimes only through its print callback), the
// kernel adds a verifier log, and the caller usually knows the bad input. A BPFError carries all
// three: the operation as "function(subject)", the errno, and a detail (verifier log tail, libbpf's
// own warnings, the offending value). `description` turns that into one message a person can act
// on: what failed, strerror, and a hint keyed by errno and operation.

import CBPF
import Glibc
import RuntimeSupport

public struct BPFError: ExplainedError, Sendable, Equatable {
    /// What was attempted, e.g. `bpf_object__load(flanneld_xdp)` or `bpf_map_update_elem(fxdp_peers_v2)`.
    public var operation: String
    /// The errno reported (positive), or 0 when the failure is not a system error (bad input).
    public var errno: Int32
    /// Verifier log tail, libbpf warnings, or the bad input. May be empty.
    public var detail: String
    /// What to do about it; derived from errno and the operation when not given.
    public var hint: String?

    public init(operation: String, errno: Int32, detail: String = "", hint: String? = nil) {
        self.operation = operation
        self.errno = errno < 0 ? -errno : errno
        self.detail = detail
        self.hint = hint
    }

    /// Builds an error from a libbpf return value (which is -errno) or, when that is not negative,
    /// from the thread's errno.
    static func libbpf(_ operation: String, returned ret: Int, detail: String = "", hint: String? = nil) -> BPFError {
        let code: Int32 = ret < 0 ? Int32(truncatingIfNeeded: -ret) : Glibc.errno
        return BPFError(operation: operation, errno: code, detail: detail, hint: hint)
    }

    /// An error caused by the caller's input rather than the system.
    static func invalid(_ operation: String, _ detail: String, hint: String? = nil) -> BPFError {
        BPFError(operation: operation, errno: EINVAL, detail: detail, hint: hint)
    }

    public var strerror: String {
        guard errno != 0 else { return "no system error" }
        if errno >= 4000 {
            // libbpf's own codes (LIBBPF_ERRNO__FORMAT etc.), which Glibc does not know.
            var buffer = [CChar](repeating: 0, count: 256)
            if libbpf_strerror(-errno, &buffer, buffer.count) == 0 {
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
        }
        guard let text = Glibc.strerror(errno) else { return "errno \(errno)" }
        return String(cString: text)
    }

    public var effectiveHint: String {
        if let hint { return hint }
        return BPFError.defaultHint(errno: errno, operation: operation)
    }

    // ExplainedError: the project's one error text.
    public var errorNumber: Int32 { errno }
    public var remedy: String { effectiveHint }
    public var errorNumberText: String { strerror }

    static func defaultHint(errno: Int32, operation: String) -> String {
        switch errno {
        case EPERM:
            // CAP_PERFMON: the verifier refuses variable-offset packet access without it (SECURITY.md).
            // CAP_SYS_ADMIN is only for mounting bpffs, which systemd and the kubelet already do.
            return "run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (mounting bpffs also needs CAP_SYS_ADMIN)"
        case EACCES:
            if operation.hasPrefix("bpf_object__load") {
                return "the kernel verifier refused a program: read the verifier log above, the last lines say why"
            }
            return "permission denied: run as root; bpffs paths need write access"
        case ENOENT:
            if operation.contains("pin") || operation.contains("bpf_obj_get") {
                return "nothing is pinned at that path: is bpffs mounted there and was the object pinned?"
            }
            return "no such object (program, map, filter or key): check names and that it was created"
        case EEXIST:
            return "it already exists or the attached program is not the expected one: query first, or replace on purpose"
        case EBUSY:
            return "another program is already attached there: pass its id to replace it deliberately"
        case ENODEV, ENXIO:
            return "no such network interface in this network namespace: check the ifindex"
        case EOPNOTSUPP, ENOTSUP:
            return "not supported here: for XDP try generic mode, or check kernel config and program type"
        case E2BIG:
            return "the map is full (max_entries) or the value is too large"
        case ENOSPC:
            return "an output buffer was too small: raise the capacity"
        case EINVAL:
            return "the kernel or libbpf rejected an argument: check sizes, flags, program type and names"
        case ENOMEM:
            return "out of memory or memlock limit: raise RLIMIT_MEMLOCK or shrink max_entries"
        case 0:
            return "check the input described above"
        default:
            return "see strerror above and the detail"
        }
    }
}

extension String {
    /// The last `maxLines` lines, so an error stays readable when a verifier log is long.
    func tailLines(_ maxLines: Int) -> String {
        let lines = self.trimmingTrailingNewlines().split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count > maxLines else { return self.trimmingTrailingNewlines() }
        return "… (\(lines.count - maxLines) earlier lines omitted)\n" + lines.suffix(maxLines).joined(separator: "\n")
    }
}

/// Runs `body` while collecting libbpf's warnings on this thread; when `body` fails, the warnings
/// become part of the error's detail. libbpf prints its reasons (verifier log, bad ELF section,
/// map create failure) rather than returning them.
func capturingLibbpfWarnings<T>(_ body: () throws(BPFError) -> T) throws(BPFError) -> T {
    cbpf_libbpf_capture_begin()
    let result: Result<T, BPFError>
    do {
        result = .success(try body())
    } catch {
        result = .failure(error)
    }
    let captured: String
    if let raw = cbpf_libbpf_capture_end() {
        captured = String(cString: raw)
        free(raw)
    } else {
        captured = ""
    }
    switch result {
    case .success(let value):
        return value
    case .failure(var error):
        if !captured.isEmpty {
            let log = "libbpf said:\n" + captured.tailLines(60)
            error.detail = error.detail.isEmpty ? log : error.detail + "\n" + log
        }
        throw error
    }
}

/// Owns one file descriptor and closes it exactly once.
struct OwnedFD: ~Copyable {
    let raw: Int32
    init(_ raw: Int32) { self.raw = raw }
    deinit { if raw >= 0 { close(raw) } }
}

/// Runs a libbpf call that returns a status and collects the warnings libbpf printed meanwhile
/// (for netlink calls these carry the kernel's extack message, e.g. "Parent Qdisc doesn't exists").
func withLibbpfMessages(_ body: () -> Int32) -> (status: Int32, messages: String) {
    cbpf_libbpf_capture_begin()
    let status = body()
    var messages = ""
    if let raw = cbpf_libbpf_capture_end() {
        messages = String(cString: raw).trimmingTrailingNewlines()
        free(raw)
    }
    return (status, messages.isEmpty ? "" : "libbpf said:\n" + messages.tailLines(20))
}

/// The `sz` to put in a libbpf opts struct: the end of its last field (libbpf's `T__last_field`).
/// libbpf rejects an opts struct whose bytes past the fields it knows are not zero, and Swift
/// leaves tail padding undefined (copies may fill it with garbage), so neither `.size` nor
/// `.stride` is safe when the C struct ends in padding (`size_t :0`).
func libbpfOptsSize<T, Field>(_ lastField: KeyPath<T, Field>) -> Int {
    guard let offset = MemoryLayout<T>.offset(of: lastField) else { return MemoryLayout<T>.size }
    return offset + MemoryLayout<Field>.size
}

/// bpf_obj_pin of `fd` (the map, program or link `name`) at `path` on a bpffs.
func pinObject(fd: Int32, name: String, at path: String,
               hint: String = "the folder must be on a bpffs (BPFFS.ensureMounted) and the name free") throws(BPFError) {
    let ret = bpf_obj_pin(fd, path)
    if ret != 0 { throw BPFError.libbpf("bpf_obj_pin(\(name) at \(path))", returned: Int(ret), hint: hint) }
}
