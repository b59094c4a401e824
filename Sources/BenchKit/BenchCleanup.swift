// BenchCleanup — everything the bench creates is registered here the moment it exists, and removed
// in reverse on normal exit, on a thrown error and on SIGINT/SIGTERM (a Dispatch signal source runs
// the cleanup at once, which also kills the processes the main thread waits for; the main thread
// stops at its next `checkInterrupted()` and exits 130). Labs delete their namespaces and kill the
// processes they spawned by pid; bpffs mounts are unmounted; etcd is stopped. Idempotent.
//
// Races with the signal: the handler never exits the process itself (a lab half-built on the main
// thread would be left behind); a second `run()` waits until the first has finished; anything
// registered after the cleanup started is removed on the spot. A second signal exits at once.

import BPFLoader
import Dispatch
import Glibc
import Synchronization
import TestSupport
import UserspaceDataplane

struct BenchInterrupted: Error, CustomStringConvertible {
    var description: String { "interrupted: the lab was cleaned up" }
}

final class BenchCleanup: @unchecked Sendable {
    // @unchecked: `state` and `running` are mutexes; `signalSources` is written once, before any
    // signal can arrive, and only kept so the sources stay alive.
    private enum Item {
        case lab(NetnsLab)
        case bpffs(String)
        case userspace(UserspaceDataplane)
        case etcd(EtcdServer)
        case folder(String)
    }
    private struct State {
        var items: [Item] = []
        var done = false
        var interrupted = false
    }
    private let state = Mutex(State())
    /// Held for the whole cleanup: a second caller waits for the first to finish.
    private let running = Mutex(())
    private var signalSources: [any DispatchSourceSignal] = []

    func add(lab: NetnsLab) { add(.lab(lab)) }
    func add(bpffs: String) { add(.bpffs(bpffs)) }
    func add(userspace: UserspaceDataplane) { add(.userspace(userspace)) }
    func add(etcd: EtcdServer) { add(.etcd(etcd)) }
    /// A work folder of ours (only paths under /run/fxbench-* are ever removed).
    func add(folder: String) { add(.folder(folder)) }

    private func add(_ item: Item) {
        let late = state.withLock { s -> Bool in
            if s.done { return true }
            s.items.append(item)
            return false
        }
        if late { Self.remove(item) }
    }

    var interrupted: Bool { state.withLock { $0.interrupted } }

    /// Throws once a signal has started the cleanup: the caller stops measuring.
    func checkInterrupted() throws {
        if interrupted { throw BenchInterrupted() }
    }

    /// SIGINT / SIGTERM → cleanup now; the main thread exits at its next check. Again → exit now.
    func installSignalHandlers() {
        let queue = DispatchQueue(label: "fxbench.signals")
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in
                let again = state.withLock { s -> Bool in
                    defer { s.interrupted = true }
                    return s.interrupted
                }
                // A second signal: the user insists; what is registered is already being removed.
                if again { exit(128 + sig) }
                print("\nfxdp-bench: signal \(sig), cleaning up the lab (the bench stops at its next step) …")
                self.run()
            }
            source.resume()
            sources.append(source)
        }
        signalSources = sources
    }

    /// Removes everything registered, newest first. Later calls wait for the first to finish.
    func run() {
        running.withLock { _ in
            let items = state.withLock { s -> [Item] in
                if s.done { return [] }
                s.done = true
                return s.items
            }
            for item in items.reversed() { Self.remove(item) }
        }
    }

    private static func remove(_ item: Item) {
        switch item {
        case .lab(let lab): lab.cleanup()
        case .bpffs(let path): BPFFS.unmount(path); rmdir(path)
        case .userspace(let dp): dp.stop()
        case .etcd(let etcd): etcd.cleanup()
        case .folder(let path):
            if path.hasPrefix("/run/fxbench-") && !path.contains("..") { _ = try? runCommand(["/bin/rm", "-rf", path]) }
        }
    }
}
