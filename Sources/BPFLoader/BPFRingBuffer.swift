// BPFRingBuffer — the consumer side of a BPF_MAP_TYPE_RINGBUF map (libbpf's ring_buffer).
//
// Design: one owner (~Copyable) holds the map fd and libbpf's consumer and frees both once. A
// ring has one consumer position, so two consumers of the same map split its records between
// them; each record is handed to the caller's closure as bytes, copied out of the ring before
// libbpf releases the slot.

import CBPF
import Glibc

/// Receives the records of one `poll` (libbpf calls back through a C function pointer with a
/// context, so the closure travels in this box).
private final class RingRecordSink {
    var handle: ([UInt8]) -> Void = { _ in }
}

public struct BPFRingBuffer: ~Copyable {
    private let ring: OpaquePointer
    private let mapFD: OwnedFD
    private let sink: Unmanaged<RingRecordSink>

    /// Opens the ring buffer map pinned at `path`.
    public static func openPinned(path: String) throws(BPFError) -> BPFRingBuffer {
        let operation = "bpf_obj_get(\(path))"
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { throw BPFError.libbpf(operation, returned: Int(fd), detail: "path \(path)") }
        let owned = OwnedFD(fd)
        let info = try BPFMapInfo(fd: owned.raw, operation: "bpf_map_get_info_by_fd(\(path))")
        guard info.type == BPF_MAP_TYPE_RINGBUF.rawValue else {
            throw BPFError.invalid("ring_buffer__new(\(path))", "map \(info.name) is of type \(info.type), not a ring buffer")
        }
        return try BPFRingBuffer(adopting: owned, path: path)
    }

    private init(adopting fd: consuming OwnedFD, path: String) throws(BPFError) {
        let sink = Unmanaged.passRetained(RingRecordSink())
        let callback: ring_buffer_sample_fn = { context, data, size in
            guard let context, let data else { return 0 }
            let sink = Unmanaged<RingRecordSink>.fromOpaque(context).takeUnretainedValue()
            sink.handle(Array(UnsafeRawBufferPointer(start: data, count: size)))
            return 0
        }
        guard let ring = ring_buffer__new(fd.raw, callback, sink.toOpaque(), nil) else {
            let code = Glibc.errno
            sink.release()
            throw BPFError(operation: "ring_buffer__new(\(path))", errno: code)
        }
        self.ring = ring
        self.mapFD = fd
        self.sink = sink
    }

    deinit {
        ring_buffer__free(ring)
        sink.release()
    }

    /// Waits up to `timeoutMilliseconds` for records and hands each to `handle`, in order.
    /// Returns how many were consumed (0 on timeout). An interrupted wait returns 0.
    @discardableResult
    public func poll(timeoutMilliseconds: Int32, _ handle: @escaping ([UInt8]) -> Void) throws(BPFError) -> Int {
        let box = sink.takeUnretainedValue()
        box.handle = handle
        defer { box.handle = { _ in } }
        let n = ring_buffer__poll(ring, timeoutMilliseconds)
        if n == -EINTR { return 0 }
        guard n >= 0 else { throw BPFError.libbpf("ring_buffer__poll", returned: Int(n)) }
        return Int(n)
    }
}
