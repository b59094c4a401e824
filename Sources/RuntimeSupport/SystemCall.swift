// SystemCall — the one place that retries a system call a signal interrupted (EINTR), and the
// read-everything / write-everything loops built on it.

import Glibc

public enum SystemCall {
    /// Runs `call` again while it fails with EINTR; returns its result otherwise, with errno as the
    /// call left it.
    @inlinable
    public static func retrying<T: SignedInteger>(_ call: () -> T) -> T {
        while true {
            let result = call()
            if result == -1 && errno == EINTR { continue }
            return result
        }
    }

    /// `retrying` for calls that report a failure as -errno instead of -1 and errno (libbpf, the
    /// C shims): runs `call` again while it returns -EINTR.
    @inlinable
    public static func retryingNegativeErrno<T: SignedInteger>(_ call: () -> T) -> T {
        while true {
            let result = call()
            if result == -T(EINTR) { continue }
            return result
        }
    }

    /// Sleeps `seconds` on the calling thread; a signal does not cut the sleep short.
    public static func sleep(seconds: Double) {
        let whole = max(0, seconds.rounded(.down))
        var request = timespec(tv_sec: Int(whole), tv_nsec: Int((max(0, seconds) - whole) * 1e9))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

    /// Writes all of `bytes` to `fd`. Nil when it did; else the errno of the write that failed
    /// (0 when the descriptor took nothing, e.g. a closed pipe's end without SIGPIPE).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Int32? {
        var written = 0
        while written < bytes.count {
            let n = retrying { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) } }
            if n < 0 { return errno }
            if n == 0 { return 0 }
            written += n
        }
        return nil
    }

    /// Reads `fd` until its end or `limit` bytes. `failure` is the errno of a read that failed
    /// (what was read before it is kept).
    public static func readAll(_ fd: Int32, limit: Int = 1 << 20) -> (bytes: [UInt8], failure: Int32?) {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let n = retrying { buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, min($0.count, limit - bytes.count)) } }
            if n < 0 { return (bytes, errno) }
            if n == 0 { break }
            bytes += buffer[0..<n]
        }
        return (bytes, nil)
    }

    /// A small file (procfs, sysfs: they report size 0, so read until the end), at most `limit`
    /// bytes, as text; nil when it cannot be opened or read.
    public static func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
        let fd = retrying { open(path, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let (bytes, failure) = readAll(fd, limit: limit)
        guard failure == nil else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Where a symbolic link points (e.g. /proc/self/exe); nil when it is not a readable link.
    public static func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
