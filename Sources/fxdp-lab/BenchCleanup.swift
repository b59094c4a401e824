// BenchCleanup — everything the bench creates is registered here the moment it exists, and removed
// in reverse on normal exit, on a thrown error and on SIGINT/SIGTERM (a Dispatch signal source runs
// the cleanup, then the process exits 130/143). Labs delete their namespaces and kill the processes
// they spawned by pid; bpffs mounts are unmounted; etcd is stopped. Idempotent.

import BPFLoader
import Dispatch
import Glibc
import Synchronization
import TestSupport
import UserspaceDataplane

final class BenchCleanup: @unchecked Sendable {
    // @unchecked: `state` is behind a mutex; `signalSources` is written once, before any signal can
    // arrive, and only kept so the sources stay alive.
    private enum Item {
        case lab(NetnsLab)
        case bpffs(String)
        case userspace(UserspaceDataplane)
        case etcd(EtcdServer)
    }
    private struct State {
        var items: [Item] = []
        var done = false
    }
    private let state = Mutex(State())
    private var signalSources: [any DispatchSourceSignal] = []

    func add(lab: NetnsLab) { state.withLock { $0.items.append(.lab(lab)) } }
    func add(bpffs: String) { state.withLock { $0.items.append(.bpffs(bpffs)) } }
    func add(userspace: UserspaceDataplane) { state.withLock { $0.items.append(.userspace(userspace)) } }
    func add(etcd: EtcdServer) { state.withLock { $0.items.append(.etcd(etcd)) } }

    /// SIGINT / SIGTERM → cleanup → exit.
    func installSignalHandlers() {
        let queue = DispatchQueue(label: "fxbench.signals")
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in
                print("\nfxdp-lab bench: signal \(sig), cleaning up the lab …")
                self.run()
                exit(128 + sig)
            }
            source.resume()
            sources.append(source)
        }
        signalSources = sources
    }

    /// Removes everything registered, newest first. Later calls do nothing.
    func run() {
        let items = state.withLock { s -> [Item] in
            if s.done { return [] }
            s.done = true
            return s.items
        }
        for item in items.reversed() {
            switch item {
            case .lab(let lab): lab.cleanup()
            case .bpffs(let path): BPFFS.unmount(path); rmdir(path)
            case .userspace(let dp): dp.stop()
            case .etcd(let etcd): etcd.cleanup()
            }
        }
    }
}
