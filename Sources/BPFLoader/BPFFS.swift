// BPFFS — make sure a folder is a bpffs mount before pinning into it.
//
// Design: pins only survive on a bpffs; a plain folder would silently hold nothing useful, and
// `ip netns exec` remounts /sys so /sys/fs/bpf may not be bpffs there. A daemon therefore checks
// (statfs magic) and mounts its own bpffs when missing, and tests mount private ones under /run.

import CBPF
import CSystemShims
import Glibc

public enum BPFFS {
    /// BPF_FS_MAGIC from linux/magic.h.
    public static let magic: Int64 = 0xcafe_4a11

    /// True when `path` is on a bpffs.
    public static func isMounted(at path: String) -> Bool {
        var fsType: Int64 = 0
        return shim_fs_magic(path, &fsType) == 0 && fsType == magic
    }

    /// Creates `path` (like mkdir -p) and mounts a bpffs there unless it already is one.
    public static func ensureMounted(at path: String) throws(BPFError) {
        if isMounted(at: path) { return }
        try makeDirectories(path)
        // A folder just created inside an existing bpffs (e.g. /sys/fs/bpf/<project>) is already
        // on it: pins belong in that shared instance, not in a new one stacked on top.
        if isMounted(at: path) { return }
        if mount("bpf", path, "bpf", 0, "mode=0700") != 0 {
            throw BPFError(operation: "mount(-t bpf \(path))", errno: Glibc.errno,
                           hint: "needs root (CAP_SYS_ADMIN) in the mount namespace")
        }
    }

    /// Lazily unmounts `path` (pins inside are dropped; maps still referenced by fds stay alive).
    public static func unmount(_ path: String) {
        _ = umount2(path, Int32(MNT_DETACH))
    }

    /// mkdir -p with mode 0700 for created folders.
    public static func makeDirectories(_ path: String) throws(BPFError) {
        guard !path.isEmpty else { throw BPFError.invalid("mkdir", "empty path") }
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && Glibc.errno != EEXIST {
                throw BPFError(operation: "mkdir(\(prefix))", errno: Glibc.errno)
            }
        }
    }
}
