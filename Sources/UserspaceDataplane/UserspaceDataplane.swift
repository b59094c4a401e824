// The userspace data path: a TUN device and UDP sockets carrying pod traffic when BPF cannot (old
// kernel, no CAP_BPF, `--dataplane userspace`). It joins the same cluster as BPF and stock flannel
// nodes because it speaks their framing byte for byte (see PacketFormat.swift).
//
// Life cycle: init opens the TUN queues and binds the UDP sockets in the calling thread's network
// namespace (the daemon gives the TUN its address, routes and link state through netlink); start()
// launches one TUN→UDP and one UDP→TUN pthread per queue; stop() wakes them through a pipe, joins
// them and closes every descriptor (the TUN disappears with its last descriptor).
//
// Peers: upsert/remove (the reconciler's PeerTable calls) rebuild an immutable PeerSnapshot under a
// mutex and publish it with one atomic store; workers read it once per batch, so updates and packet
// forwarding never wait on each other. With `config.ipv6` the path also carries IPv6 pods over the
// IPv6 underlay (IPv6Path.swift); its peers are `ipv6Peers`, an IPv6PeerTable of their own.
import Atomics
import CSystemShims
import Glibc
import Logging
import NetTypes
import Synchronization

public final class UserspaceDataplane: Sendable {
    public let config: UserspaceConfig
    public var tableName: String { "userspace" }

    private let logger: Logger
    private let peers = PublishedPeers<IPv4Subnet, Peer, PeerSnapshot> { PeerSnapshot(peers: $0) }
    private let cells = CounterCells()
    private let stopping = ManagedAtomic(false)
    private let tunBroken = ManagedAtomic(false)
    private let lifecycle: Mutex<Lifecycle>
    private let queueFDs: [QueueDescriptors]
    private let stopPipe: (read: Int32, write: Int32)
    private let vnetHeaderLength: Int
    /// Whether TSO/GSO/GRO offloads are in use (config.offloads, unless the kernel refused them).
    public let offloadsActive: Bool
    private let icmpFD: Int32
    /// The IPv6 peers (empty and unused without `config.ipv6`).
    public let ipv6Peers = UserspaceIPv6PeerTable()
    /// The IPv6 UDP socket, -1 without `config.ipv6`.
    private let ipv6FD: Int32

    struct QueueDescriptors: Sendable {
        let tun: Int32
        let udp: Int32
    }

    enum Phase { case created, running, stopped }

    struct Lifecycle: ~Copyable {
        var descriptors: OwnedDescriptors
        var threads: [pthread_t] = []
        var phase: Phase = .created
    }

    /// Opens the TUN (`config.queues` queues) and binds the UDP socket(s) to localIP:port, in the
    /// network namespace of the calling thread. Sets the TUN MTU; does not bring it up or address it.
    public init(config: UserspaceConfig, logger: Logger) throws(UserspaceError) {
        let problems = config.validationProblems()
        guard problems.isEmpty else { throw .invalidConfig(problems) }
        self.config = config
        self.logger = logger

        var owned = OwnedDescriptors()
        var queues: [QueueDescriptors]
        var offloads = config.offloads
        do {
            queues = try UserspaceDataplane.openQueues(config, offloads: offloads, into: &owned)
        } catch where offloads && error.isOffloadRefusal {
            // Old kernels lack TUNSETOFFLOAD flags or UDP_GRO: the path works without them, slower.
            logger.warning("userspace data path: offloads unavailable (\(error)); continuing without TSO/GRO")
            owned.closeAll()
            offloads = false
            queues = try UserspaceDataplane.openQueues(config, offloads: false, into: &owned)
        }
        offloadsActive = offloads
        vnetHeaderLength = offloads ? VirtioNetHeader.length : 0
        // ICMP errors go out through a raw socket (see ICMPResponder.swift); without CAP_NET_RAW the
        // path still forwards, it only cannot answer.
        let raw = socket(AF_INET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_RAW))
        if raw >= 0 {
            owned.adopt(raw)
        } else {
            logger.warning("userspace data path: no raw socket for ICMP errors (\(errnoText(errno))); senders to unknown destinations get no net-unreachable")
        }
        icmpFD = raw
        if let v6 = config.ipv6 {
            let fd = try openIPv6Socket(address: v6.localIP, port: config.encapsulation.port, bufferBytes: config.socketBufferBytes)
            owned.adopt(fd)
            ipv6FD = fd
        } else {
            ipv6FD = -1
        }
        let mtuResult = shim_if_set_mtu(config.tunName, Int32(config.mtu))
        guard mtuResult == 0 else { throw .setMTU(name: config.tunName, mtu: config.mtu, errno: -mtuResult) }

        var pipeFDs: (Int32, Int32) = (-1, -1)
        let rc = withUnsafeMutableBytes(of: &pipeFDs) { pipe($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        guard rc == 0 else { throw .pipe(errno: errno) }
        owned.adopt(pipeFDs.0)
        owned.adopt(pipeFDs.1)
        _ = fcntl(pipeFDs.0, F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs.1, F_SETFD, FD_CLOEXEC)
        stopPipe = (pipeFDs.0, pipeFDs.1)
        queueFDs = queues
        lifecycle = Mutex(Lifecycle(descriptors: owned))
        logger.info(
            "userspace data path ready",
            metadata: [
                "tun": "\(config.tunName)", "mtu": "\(config.mtu)", "queues": "\(config.queues)",
                "framing": "\(config.encapsulation)", "bind": "\(config.localIP):\(config.encapsulation.port)",
                "offloads": "\(offloadsActive)",
            ])
    }

    deinit { stop() }

    /// Opens the TUN queues and UDP sockets, recording every descriptor in `owned`.
    private static func openQueues(
        _ config: UserspaceConfig, offloads: Bool, into owned: inout OwnedDescriptors
    ) throws(UserspaceError) -> [QueueDescriptors] {
        var flags = Int32(IFF_TUN) | Int32(IFF_NO_PI)
        if config.queues > 1 { flags |= Int32(IFF_MULTI_QUEUE) }
        if offloads { flags |= Int32(IFF_VNET_HDR) }
        var queues: [QueueDescriptors] = []
        for queue in 0..<config.queues {
            let tun = shim_tun_open(config.tunName, flags)
            guard tun >= 0 else { throw .openTUN(name: config.tunName, queue: queue, errno: -tun) }
            owned.adopt(tun)
            if offloads {
                let rc = shim_tun_set_offload(tun, UInt32(TUN_F_CSUM) | UInt32(TUN_F_TSO4))
                guard rc == 0 else { throw .setOffload(name: config.tunName, errno: -rc) }
            }
            let port = config.encapsulation.port
            let udp = shim_udp_socket(
                UInt32(bigEndian: config.localIP.value), port, config.queues > 1 ? 1 : 0,
                offloads ? 1 : 0, Int32(clamping: config.socketBufferBytes))
            guard udp >= 0 else { throw .udpSocket(address: config.localIP, port: port, errno: -udp) }
            owned.adopt(udp)
            queues.append(QueueDescriptors(tun: tun, udp: udp))
        }
        return queues
    }

    /// Launches the worker threads. Calling it again while running does nothing.
    public func start() throws(UserspaceError) {
        var context = WorkerContext(
            table: peers.snapshot, counters: cells, stopping: stopping, stopFD: stopPipe.read,
            framing: Framing(config.encapsulation), mtu: config.mtu, batch: config.batchSize,
            icmpSource: config.icmpSourceIP.value, icmpRate: config.icmpRateLimit, icmpFD: icmpFD,
            vnetHeaderLength: vnetHeaderLength, innerSourceCheck: config.innerSourceCheck, logger: logger, tunBroken: tunBroken)
        if let v6 = config.ipv6, case .vxlan(let vni, let port, _) = config.encapsulation {
            context.ipv6 = IPv6Context(table: ipv6Peers.peers.snapshot, socket: ipv6FD,
                                       framing: Framing(.vxlan(vni: vni, port: port, localVTEPMAC: v6.localVTEPMAC)), mtu: v6.mtu)
        }
        let queues = queueFDs
        try lifecycle.withLock { (state: inout Lifecycle) throws(UserspaceError) in
            switch state.phase {
            case .running: return
            case .stopped: throw .alreadyStopped
            case .created: break
            }
            for (index, queue) in queues.enumerated() {
                let tx = TunToUDPWorker(context: context, tunFD: queue.tun, udpFD: queue.udp)
                let rx = UDPToTunWorker(context: context, tunFD: queue.tun, udpFD: queue.udp)
                do throws(UserspaceError) {
                    state.threads.append(try spawnThread(name: "fxus-tx\(index)") { tx.run() })
                    state.threads.append(try spawnThread(name: "fxus-rx\(index)") { rx.run() })
                } catch {
                    state.phase = .running  // so stop() joins what did start
                    throw error
                }
            }
            if let v6 = context.ipv6, let queue = queues.first {
                let rx6 = UDP6ToTunWorker(context: context, ipv6: v6, tunFD: queue.tun)
                do throws(UserspaceError) {
                    state.threads.append(try spawnThread(name: "fxus-rx6") { rx6.run() })
                } catch {
                    state.phase = .running
                    throw error
                }
            }
            state.phase = .running
        }
    }

    /// Stops and joins the workers and closes the TUN queues and sockets. Idempotent.
    public func stop() {
        // Only the caller that moves the phase to stopped joins and closes; a concurrent or repeated
        // stop() returns at once (closing fds under running workers could hit reused descriptors).
        let claimed = lifecycle.withLock { (state: inout Lifecycle) -> [pthread_t]? in
            if state.phase == .stopped { return nil }
            state.phase = .stopped
            let threads = state.threads
            state.threads = []
            return threads
        }
        guard let threads = claimed else { return }
        stopping.store(true, ordering: .relaxed)
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
        for thread in threads { pthread_join(thread, nil) }
        lifecycle.withLock { $0.descriptors.closeAll() }
    }

    public var isRunning: Bool { lifecycle.withLock { $0.phase == .running } }

    /// False once a worker found the TUN unusable (deleted behind our back): the path carries
    /// nothing until the daemon builds a new one. For /readyz and logs.
    public var isHealthy: Bool { isRunning && !tunBroken.load(ordering: .relaxed) }

    public var counters: UserspaceCounters { cells.snapshot }

    /// CPU time (user + system, seconds) the running workers have used so far; 0 before start()
    /// and after stop(). Lets a test check that a broken or idle path does not spin.
    var workerCPUSeconds: Double {
        lifecycle.withLock { (state: inout Lifecycle) -> Double in
            state.threads.reduce(0) { sum, thread in
                var clock = clockid_t()
                var time = timespec()
                guard pthread_getcpuclockid(thread, &clock) == 0, clock_gettime(clock, &time) == 0 else { return sum }
                return sum + Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
            }
        }
    }

    // MARK: PeerTable

    public func currentPeers() throws -> Set<Peer> { peers.current }

    public func upsert(_ peer: Peer) throws {
        if case .vxlan = config.encapsulation, peer.vtepMAC == nil { throw UserspaceError.peerWithoutVTEPMAC(peer) }
        peers.upsert(peer, at: peer.subnet)
    }

    public func remove(_ peer: Peer) throws { peers.remove(at: peer.subnet) }

    /// Replaces the whole table in one swap (a full reconcile pass).
    public func replaceAll(_ newPeers: some Sequence<Peer>) throws {
        var map: [IPv4Subnet: Peer] = [:]
        for peer in newPeers {
            if case .vxlan = config.encapsulation, peer.vtepMAC == nil { throw UserspaceError.peerWithoutVTEPMAC(peer) }
            map[peer.subnet] = peer
        }
        peers.replaceAll(map)
    }
}

/// Owns file descriptors and closes them exactly once.
struct OwnedDescriptors: ~Copyable {
    private var fds: [Int32] = []

    mutating func adopt(_ fd: Int32) { fds.append(fd) }

    mutating func closeAll() {
        for fd in fds { close(fd) }
        fds = []
    }

    deinit { for fd in fds { close(fd) } }
}

private final class ThreadBody {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// A dedicated pthread (the workers block in syscalls; Swift concurrency's pool must not).
func spawnThread(name: String, _ body: @escaping @Sendable () -> Void) throws(UserspaceError) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let body = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        body.run()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        throw .threadStart(name: name, errno: rc)
    }
    return thread
}
