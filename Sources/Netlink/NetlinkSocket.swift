// NetlinkSocket: a small, safe owner of one rtnetlink socket (libmnl), generic — it knows nothing
// of flannel.
//
// Design:
// - A netlink socket belongs to the network namespace of the thread that opened it, for its whole
//   life: every operation on it acts in that namespace, whichever thread calls later. `init()` uses
//   the calling thread's namespace; `init(networkNamespace:)` opens the socket on a short-lived
//   pthread that entered the given namespace (setns moves only one thread), so callers never have
//   to move their own (possibly Swift-concurrency) threads.
// - Requests are built with libmnl into a fixed buffer; every request asks for an ACK so that each
//   call returns only when the kernel has applied it (or refused it). Replies are copied out of the
//   receive buffer and parsed in Swift with bounds checks: no C callbacks run over kernel memory.
// - The socket asks for extended ACKs, so a refusal carries the kernel's own reason ("Nexthop has
//   invalid gateway") next to errno; `NetlinkError` names the operation and the object in words.
// - `~Copyable`: exactly one owner closes the socket. Shared users wrap it in a `Mutex`.

import CMnl
import CSystemShims
import Glibc
import RuntimeSupport

/// A refused or failed netlink operation, e.g.
/// "RTM_NEWROUTE 10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink: File exists (errno 17)".
public struct NetlinkError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The netlink message type ("RTM_NEWROUTE") or socket step ("socket", "recv").
    public var operation: String
    /// The object in words ("10.5.2.0/24 via 10.5.2.0 dev flannel.1").
    public var object: String
    public var errno: Int32
    /// The kernel's extended-ACK message, when it sent one.
    public var kernelMessage: String?

    public init(operation: String, object: String, errno: Int32, kernelMessage: String? = nil) {
        self.operation = operation
        self.object = object
        self.errno = errno
        self.kernelMessage = kernelMessage
    }

    public var description: String {
        var s = operation
        if !object.isEmpty { s += " " + object }
        s += ": \(String(cString: strerror(errno))) (errno \(errno))"
        if let kernelMessage, !kernelMessage.isEmpty { s += "; kernel says: \(kernelMessage)" }
        if errno == EPERM { s += " — run as root or with CAP_NET_ADMIN" }
        return s
    }

    public var isExists: Bool { errno == EEXIST }
    public var isNotFound: Bool { errno == ENOENT || errno == ENODEV || errno == ESRCH || errno == EADDRNOTAVAIL }
}

/// One rtnetlink socket. Operations act in the network namespace the socket was opened in.
public struct NetlinkSocket: ~Copyable, @unchecked Sendable {
    // @unchecked Sendable: the mnl_socket pointer is owned uniquely (~Copyable); moving the owner to
    // another thread is safe, concurrent use is prevented by exclusivity of `mutating` calls.
    private let socket: OpaquePointer
    private let portID: UInt32
    private var sequence: UInt32
    private let receiveBuffer: UnsafeMutableRawBufferPointer

    static let receiveBufferSize = 65536

    /// Opens a socket in the calling thread's network namespace.
    public init() throws(NetlinkError) {
        guard let s = mnl_socket_open(NETLINK_ROUTE) else {
            throw NetlinkError(operation: "socket", object: "NETLINK_ROUTE", errno: Glibc.errno)
        }
        try self.init(adopting: s)
    }

    /// Opens a socket inside the network namespace at `path` (e.g. "/run/netns/x" or
    /// "/proc/<pid>/ns/net"), without moving the calling thread.
    public init(networkNamespace path: String) throws(NetlinkError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw NetlinkError(operation: "open network namespace", object: path, errno: Glibc.errno)
        }
        defer { close(fd) }
        let result = runOnThreadInNamespace(fd: fd) { () -> Result<UInt, NetlinkError> in
            guard let s = mnl_socket_open(NETLINK_ROUTE) else {
                return .failure(NetlinkError(operation: "socket", object: "NETLINK_ROUTE in \(path)", errno: Glibc.errno))
            }
            return .success(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(s))))
        }
        switch result {
        case .failure(let e): throw e
        case .success(let bits):
            try self.init(adopting: OpaquePointer(bitPattern: bits)!)
        }
    }

    private init(adopting s: OpaquePointer) throws(NetlinkError) {
        var one: Int32 = 1
        // Extended ACKs (kernel's reason text) and capped ACKs (no echo of our request).
        _ = mnl_socket_setsockopt(s, 11 /* NETLINK_EXT_ACK */, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = mnl_socket_setsockopt(s, 10 /* NETLINK_CAP_ACK */, &one, socklen_t(MemoryLayout<Int32>.size))
        guard mnl_socket_bind(s, 0, pid_t(0)) == 0 else { // MNL_SOCKET_AUTOPID = 0
            let e = Glibc.errno
            mnl_socket_close(s)
            throw NetlinkError(operation: "bind", object: "NETLINK_ROUTE", errno: e)
        }
        socket = s
        portID = mnl_socket_get_portid(s)
        sequence = UInt32(truncatingIfNeeded: time(nil))
        receiveBuffer = .allocate(byteCount: Self.receiveBufferSize, alignment: 8)
    }

    deinit {
        mnl_socket_close(socket)
        receiveBuffer.deallocate()
    }

    /// The socket's file descriptor (for poll; do not close it).
    public var fileDescriptor: Int32 { mnl_socket_get_fd(socket) }

    // MARK: - Request/response

    /// Sends `request` with NLM_F_ACK and waits for the kernel's ACK. Returns the reply messages that
    /// came before the ACK (a GET returns its object this way).
    @discardableResult
    mutating func execute(_ request: NetlinkRequest, describe: () -> String) throws(NetlinkError) -> [NetlinkMessage] {
        try transact(request, dump: false, describe: describe)
    }

    /// Sends a dump request and collects every message up to NLMSG_DONE. A dump that the kernel
    /// marks interrupted (the table changed meanwhile) is retried.
    mutating func dump(_ request: NetlinkRequest, describe: () -> String) throws(NetlinkError) -> [NetlinkMessage] {
        var attempt = 0
        while true {
            do {
                return try transact(request, dump: true, describe: describe)
            } catch where error.errno == EINTR && attempt < 5 {
                attempt += 1
            }
        }
    }

    /// Sends the `count` change requests lying back to back in `messages` with one sendto, each
    /// with its own sequence number and ACK, and collects the ACKs. Returns the failed ones by
    /// position. A send or receive that fails as a whole fails every request not yet answered.
    mutating func sendBatch(_ messages: UnsafeMutableRawBufferPointer, count: Int,
                            describe: (Int) -> String) -> [(Int, NetlinkError)] {
        let first = sequence &+ 1
        var offset = 0
        for _ in 0..<count {
            let header = (messages.baseAddress! + offset).assumingMemoryBound(to: nlmsghdr.self)
            sequence &+= 1
            header.pointee.nlmsg_seq = sequence
            header.pointee.nlmsg_flags |= UInt16(NLM_F_REQUEST) | UInt16(NLM_F_ACK)
            offset += (Int(header.pointee.nlmsg_len) + 3) & ~3
        }
        var failures: [(Int, NetlinkError)] = []
        var answered = [Bool](repeating: false, count: count)
        var pending = count
        func failRest(_ step: String, _ e: Int32) {
            for i in 0..<count where !answered[i] {
                failures.append((i, NetlinkError(operation: step, object: describe(i), errno: e)))
            }
        }
        let sent = mnl_socket_sendto(socket, messages.baseAddress, offset)
        guard sent == offset else {
            failRest("sendto (batch of \(count))", sent < 0 ? Glibc.errno : EIO)
            return failures
        }
        while pending > 0 {
            let n = mnl_socket_recvfrom(socket, receiveBuffer.baseAddress, receiveBuffer.count)
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                failRest("recv (batch of \(count))", e)
                // ENOBUFS: some ACKs were dropped. What is still queued belongs to this batch:
                // drop it too, so the socket is empty (and no longer congested) for the next.
                drainReceiveQueue()
                return failures
            }
            var at = 0
            let total = Int(n)
            while at + 16 <= total {
                let base = receiveBuffer.baseAddress! + at
                let len = Int(base.loadUnaligned(as: UInt32.self))
                guard len >= 16, at + len <= total else {
                    failRest("recv (batch of \(count), malformed reply)", EPROTO)
                    return failures
                }
                let type = base.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
                let mseq = base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
                let mport = base.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
                at += (len + 3) & ~3
                let i = Int(mseq &- first)
                guard Int32(type) == NLMSG_ERROR, i >= 0, i < count, !answered[i], mport == 0 || mport == portID else { continue }
                answered[i] = true
                pending -= 1
                let (code, text) = NetlinkMessage(bytes: UnsafeRawBufferPointer(start: base, count: len)).errorPayload()
                if code != 0 {
                    let op = RT.name(base.loadUnaligned(fromByteOffset: 16 + 4 + 4, as: UInt16.self))
                    failures.append((i, NetlinkError(operation: op, object: describe(i), errno: -code, kernelMessage: text)))
                }
            }
        }
        return failures
    }

    /// Reads and discards whatever is queued, without waiting.
    private func drainReceiveQueue() {
        while recv(mnl_socket_get_fd(socket), receiveBuffer.baseAddress, receiveBuffer.count, Int32(MSG_DONTWAIT)) > 0 {}
    }

    private mutating func transact(_ request: NetlinkRequest, dump: Bool, describe: () -> String) throws(NetlinkError) -> [NetlinkMessage] {
        sequence &+= 1
        let seq = sequence
        request.header.pointee.nlmsg_seq = seq
        request.header.pointee.nlmsg_flags |= UInt16(NLM_F_REQUEST) | (dump ? UInt16(NLM_F_DUMP) : UInt16(NLM_F_ACK))
        let op = request.operationName
        let length = Int(request.header.pointee.nlmsg_len)
        let sent = mnl_socket_sendto(socket, request.buffer.baseAddress, length)
        guard sent == length else {
            throw NetlinkError(operation: op, object: describe(), errno: sent < 0 ? Glibc.errno : EIO)
        }

        var replies: [NetlinkMessage] = []
        while true {
            let n = SystemCall.retrying { mnl_socket_recvfrom(socket, receiveBuffer.baseAddress, receiveBuffer.count) }
            if n < 0 {
                let e = Glibc.errno
                throw NetlinkError(operation: op, object: describe() + " (receiving the reply)", errno: e)
            }
            var offset = 0
            let total = Int(n)
            while offset + 16 <= total {
                let base = receiveBuffer.baseAddress! + offset
                let len = Int(base.loadUnaligned(as: UInt32.self))
                guard len >= 16, offset + len <= total else {
                    throw NetlinkError(operation: op, object: describe() + " (malformed reply)", errno: EPROTO)
                }
                let type = base.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
                let flags = base.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
                let mseq = base.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
                let mport = base.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
                offset += (len + 3) & ~3
                // Stale replies from an earlier, abandoned request: skip.
                if mseq != seq || (mport != 0 && mport != portID) { continue }
                if flags & UInt16(NLM_F_DUMP_INTR) != 0 {
                    throw NetlinkError(operation: op, object: describe(), errno: EINTR)
                }
                switch Int32(type) {
                case NLMSG_NOOP:
                    continue
                case NLMSG_DONE:
                    return replies
                case NLMSG_ERROR:
                    let message = NetlinkMessage(bytes: UnsafeRawBufferPointer(start: base, count: len))
                    let (code, text) = message.errorPayload()
                    if code == 0 {
                        if !dump { return replies }
                        continue
                    }
                    throw NetlinkError(operation: op, object: describe(), errno: -code, kernelMessage: text)
                default:
                    replies.append(NetlinkMessage(bytes: UnsafeRawBufferPointer(start: base, count: len)))
                }
            }
        }
    }
}

/// Runs `body` on a new pthread that first entered the network namespace `fd`; returns its result.
func runOnThreadInNamespace(fd: Int32, _ body: @escaping @Sendable () -> Result<UInt, NetlinkError>) -> Result<UInt, NetlinkError> {
    final class Box: @unchecked Sendable {
        // @unchecked: `result` is written by the thread before it exits and read after pthread_join.
        let fd: Int32
        let body: @Sendable () -> Result<UInt, NetlinkError>
        var result: Result<UInt, NetlinkError>?
        init(fd: Int32, body: @escaping @Sendable () -> Result<UInt, NetlinkError>) { self.fd = fd; self.body = body }
    }
    let box = Box(fd: fd, body: body)
    let retained = Unmanaged.passRetained(box)
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        let r = shim_setns_net(box.fd)
        box.result = r == 0 ? box.body() : .failure(NetlinkError(operation: "setns", object: "fd \(box.fd)", errno: -r))
        return nil
    }, retained.toOpaque())
    guard rc == 0 else {
        retained.release()
        return .failure(NetlinkError(operation: "pthread_create", object: "namespace thread", errno: rc))
    }
    pthread_join(thread, nil)
    return box.result ?? .failure(NetlinkError(operation: "namespace thread", object: "", errno: EIO))
}
