// NetnsThread — run a closure inside a named network namespace, from Swift.
//
// Design: setns(2) moves only the calling thread, and Swift concurrency may hop threads, so the
// work runs on a fresh pthread that enters /run/netns/<name> first and dies afterwards (nothing
// else ever runs in that namespace by accident). The caller blocks until it is done; the result
// or the thrown error comes back. Mount namespace is untouched, so bpffs mounts under /run stay
// visible (unlike `ip netns exec`, which remounts /sys).

import CBPF
import CSystemShims
import Glibc

public struct NetnsError: Error, CustomStringConvertible {
    public var namespace: String
    public var operation: String
    public var errno: Int32
    public var description: String {
        "\(operation) for network namespace '\(namespace)' failed: \(String(cString: strerror(errno))) (errno \(errno)); " +
            "does /run/netns/\(namespace) exist (ip netns add)? Are we root?"
    }
}

public enum NetnsThread {
    /// Runs `body` on a new thread inside network namespace `namespace` (a name under /run/netns, or
    /// an absolute path to a namespace file) and returns its result or rethrows its error.
    /// Swift Testing's `#expect` inside `body` still fails the run, but the new thread does not
    /// carry the test's task-locals, so the issue is reported as «unknown» test: prefer returning
    /// values (or thrown errors) and checking them outside.
    public static func run<T>(namespace: String, _ body: () throws -> T) throws -> T {
        let path = namespace.hasPrefix("/") ? namespace : "/run/netns/\(namespace)"
        return try withoutActuallyEscaping(body) { escapable in
            let job = Job(path: path, namespace: namespace, body: escapable)
            try job.runOnNewThread()
            switch job.outcome! {
            case .success(let value): return value
            case .failure(let error): throw error
            }
        }
    }

    fileprivate final class Job<T> {
        let path: String
        let namespace: String
        let body: () throws -> T
        var outcome: Result<T, any Error>?

        init(path: String, namespace: String, body: @escaping () throws -> T) {
            self.path = path
            self.namespace = namespace
            self.body = body
        }

        func execute() {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                outcome = .failure(NetnsError(namespace: namespace, operation: "open(\(path))", errno: errno))
                return
            }
            let ret = shim_setns_net(fd)
            close(fd)
            guard ret == 0 else {
                outcome = .failure(NetnsError(namespace: namespace, operation: "setns", errno: -ret))
                return
            }
            outcome = Result { try body() }
        }

        func runOnNewThread() throws {
            let context = Unmanaged.passRetained(self as AnyObject).toOpaque()
            var thread = pthread_t()
            let created = pthread_create(&thread, nil, { raw in
                let job = Unmanaged<AnyObject>.fromOpaque(raw!).takeRetainedValue() as! Runnable
                job.runFromThread()
                return nil
            }, context)
            guard created == 0 else {
                Unmanaged<AnyObject>.fromOpaque(context).release()
                throw NetnsError(namespace: namespace, operation: "pthread_create", errno: created)
            }
            // Joining orders the thread's write of `outcome` before our read.
            pthread_join(thread, nil)
        }
    }
}

private protocol Runnable: AnyObject { func runFromThread() }
extension NetnsThread.Job: Runnable { func runFromThread() { execute() } }
