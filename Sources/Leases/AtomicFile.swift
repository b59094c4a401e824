// Whole-file writes that a reader (a CNI plugin, a booting daemon) sees as the old contents or the
// new, never a mix, and that survive a power cut once written: temp file in the same folder, fsync,
// rename, fsync of the folder (which makes the rename itself durable). The temp file has a random
// name and is created with O_EXCL|O_NOFOLLOW: in a folder others can write to, a planted file or
// symlink at a name we would use cannot redirect a root write. Reads are capped, so a damaged or
// hostile file cannot make us allocate without bound.

import Glibc
import RuntimeSupport

public enum AtomicFile {
    public struct Failure: Error, Sendable, Equatable {
        public var operation: String
        public var path: String
        public var errno: Int32
    }

    /// Writes `bytes` to `path` with `mode`, creating missing parent folders (0755).
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t) throws(Failure) {
        let dir = parentDirectory(of: path)
        if !dir.isEmpty, access(dir, F_OK) != 0 {
            try makeDirectories(dir)
        }
        var temp = ""
        var fd: Int32 = -1
        for _ in 0..<8 {
            temp = path + ".tmp." + String(UInt64.random(in: 1...UInt64.max), radix: 36)
            fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else { throw Failure(operation: "create", path: temp, errno: errno) }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        if let e = SystemCall.writeAll(fd, Array(bytes)) {
            close(fd)
            throw Failure(operation: "write", path: temp, errno: e == 0 ? EIO : e)
        }
        // umask may have narrowed the mode.
        fchmod(fd, mode)
        if fsync(fd) != 0 {
            let e = errno
            close(fd)
            throw Failure(operation: "fsync", path: temp, errno: e)
        }
        close(fd)
        guard rename(temp, path) == 0 else { throw Failure(operation: "rename", path: path, errno: errno) }
        ok = true
        let dirFD = open(dir.isEmpty ? (path.hasPrefix("/") ? "/" : ".") : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else { throw Failure(operation: "open folder", path: dir, errno: errno) }
        defer { close(dirFD) }
        if fsync(dirFD) != 0 { throw Failure(operation: "fsync folder", path: dir, errno: errno) }
    }

    /// The whole file, or nil when it does not exist; `limit` bytes at most (the rest is not read,
    /// and `truncated` says so).
    public static func read(from path: String, limit: Int) throws(Failure) -> (bytes: [UInt8], truncated: Bool)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw Failure(operation: "open", path: path, errno: errno)
        }
        defer { close(fd) }
        let (data, failure) = SystemCall.readAll(fd, limit: limit == .max ? .max : limit + 1)
        if let failure { throw Failure(operation: "read", path: path, errno: failure) }
        return data.count > limit ? (Array(data.prefix(limit)), true) : (data, false)
    }

    static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return String(path[..<slash])
    }

    static func makeDirectories(_ dir: String) throws(Failure) {
        var current = dir.hasPrefix("/") ? "" : "."
        for part in dir.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0, errno != EEXIST {
                throw Failure(operation: "mkdir", path: current, errno: errno)
            }
        }
    }
}
