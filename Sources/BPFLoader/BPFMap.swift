// BPFMap, PerCPUMap — typed access to BPF maps by key and value type.
//
// Design: a map handle owns its own dup()'d fd, so it outlives the BPFObject it came from, can be
// opened from a pin by another process, and is shared between threads (the kernel serialises
// element operations; the handle holds no mutable Swift state). K and V must be BitwiseCopyable
// (C structs from the shared header, integers, tuples of bytes): their bytes are the map's bytes.
// Sizes are checked once at open against the kernel's key/value size. A C struct's sizeof
// includes trailing padding that Swift's `size` leaves out, so a kernel size anywhere from
// MemoryLayout.size to MemoryLayout.stride is accepted and buffers are always the kernel's size.
// Per-CPU maps hold one value per *possible* CPU, each slot rounded up to 8 bytes.

import CBPF
import Glibc

/// BPF_ANY / BPF_NOEXIST / BPF_EXIST / BPF_F_LOCK.
public struct MapUpdateFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Create or overwrite.
    public static let any: MapUpdateFlags = []
    /// Only create: fails with EEXIST when the key is present.
    public static let noExist = MapUpdateFlags(rawValue: UInt64(BPF_NOEXIST))
    /// Only overwrite: fails with ENOENT when the key is absent.
    public static let exist = MapUpdateFlags(rawValue: UInt64(BPF_EXIST))
    /// Take the value's bpf_spin_lock while writing.
    public static let lock = MapUpdateFlags(rawValue: UInt64(BPF_F_LOCK))
}

/// The kernel's description of a map.
public struct BPFMapInfo: Sendable, Equatable {
    public var id: UInt32
    /// Kernel-truncated name (at most 15 bytes).
    public var name: String
    /// enum bpf_map_type (BPF_MAP_TYPE_HASH = 1, ARRAY = 2, PERCPU_ARRAY = 6, LPM_TRIE = 11, ...).
    public var type: UInt32
    public var keySize: UInt32
    public var valueSize: UInt32
    public var maxEntries: UInt32
    public var flags: UInt32

    init(fd: Int32, operation: String) throws(BPFError) {
        var info = bpf_map_info()
        var length = UInt32(MemoryLayout<bpf_map_info>.size)
        let ret = bpf_obj_get_info_by_fd(fd, &info, &length)
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret)) }
        id = info.id
        name = cStringField(info.name)
        type = info.type
        keySize = info.key_size
        valueSize = info.value_size
        maxEntries = info.max_entries
        flags = info.map_flags
    }

    public static func forID(_ id: UInt32) throws(BPFError) -> BPFMapInfo {
        let fd = bpf_map_get_fd_by_id(id)
        guard fd >= 0 else {
            throw BPFError.libbpf("bpf_map_get_fd_by_id(\(id))", returned: Int(fd), hint: "no map with that id exists")
        }
        let owned = OwnedFD(fd)
        return try BPFMapInfo(fd: owned.raw, operation: "bpf_map_get_info_by_fd(id \(id))")
    }

    var isPerCPU: Bool {
        type == BPF_MAP_TYPE_PERCPU_HASH.rawValue || type == BPF_MAP_TYPE_PERCPU_ARRAY.rawValue
            || type == BPF_MAP_TYPE_LRU_PERCPU_HASH.rawValue || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE.rawValue
    }
}

/// Opens a pinned object and returns its fd, or throws with the path in the error.
private func openPinnedFD(_ path: String, operation: String) throws(BPFError) -> Int32 {
    let fd = bpf_obj_get(path)
    guard fd >= 0 else {
        throw BPFError.libbpf(operation, returned: Int(fd), detail: "path \(path)")
    }
    return fd
}

/// A close-on-exec copy of `fd`: a map class owns its descriptor, and libbpf keeps the one of a
/// loaded object's map for itself.
func dupFD(_ fd: Int32, operation: String) throws(BPFError) -> Int32 {
    let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    guard copy >= 0 else { throw BPFError(operation: operation + " dup", errno: Glibc.errno) }
    return copy
}

/// Checks a Swift type against a size the kernel reports.
private func checkSize<T>(_ type: T.Type, kernelSize: UInt32, role: String, info: BPFMapInfo, operation: String) throws(BPFError) {
    let size = MemoryLayout<T>.size, stride = MemoryLayout<T>.stride
    let kernel = Int(kernelSize)
    guard kernel >= size, kernel <= stride, size > 0 || kernel == 0 else {
        throw BPFError.invalid(
            operation,
            "map '\(info.name)' (id \(info.id)) has \(role) size \(kernel) bytes, but \(T.self) is \(size) bytes (stride \(stride))",
            hint: "use a Swift type with the same layout as the C \(role) type (import it from the shared header)")
    }
}

/// The info of the map at `fd`, checked against what a map class was asked to open: its kind (each
/// class serves either per-CPU maps or the others) and the sizes of K and V.
private func checkedMapInfo<K, V>(fd: Int32, key: K.Type, value: V.Type, perCPU: Bool, operation: String) throws(BPFError) -> BPFMapInfo {
    let info = try BPFMapInfo(fd: fd, operation: operation)
    guard info.isPerCPU == perCPU else {
        throw BPFError.invalid(operation, "map '\(info.name)' is \(perCPU ? "not " : "")per-CPU (type \(info.type))",
                               hint: perCPU ? "open it with map(named:) / BPFMap.openPinned" : "open it with perCPUMap(named:) / PerCPUMap.openPinned")
    }
    try checkSize(K.self, kernelSize: info.keySize, role: "key", info: info, operation: operation)
    try checkSize(V.self, kernelSize: info.valueSize, role: "value", info: info, operation: operation)
    return info
}

/// The map classes' common way in: they take a descriptor over and check it is the map they serve.
protocol AdoptingMapFD {
    init(adopting fd: Int32, operation: String) throws(BPFError)
}

extension BPFMap: AdoptingMapFD {}
extension PerCPUMap: AdoptingMapFD {}

private func roundUp8(_ n: Int) -> Int { (n + 7) & ~7 }

/// A typed BPF map. Owns its fd (closed on deinit); safe to share between threads.
public final class BPFMap<K: BitwiseCopyable, V: BitwiseCopyable>: @unchecked Sendable {
    // @unchecked: the only state is an immutable fd and immutable info; the kernel serialises
    // element operations on the map itself.
    private let owned: OwnedFD
    public var fd: Int32 { owned.raw }
    private let cachedInfo: BPFMapInfo

    /// Takes ownership of `fd`, closed if it is not a map for K and V.
    init(adopting fd: Int32, operation: String) throws(BPFError) {
        owned = OwnedFD(fd)
        cachedInfo = try checkedMapInfo(fd: fd, key: K.self, value: V.self, perCPU: false, operation: operation)
    }

    /// Opens a map pinned on a bpffs (by this or another process).
    public static func openPinned(path: String, key: K.Type, value: V.Type) throws(BPFError) -> BPFMap<K, V> {
        let operation = "bpf_obj_get(\(path))"
        let fd = try openPinnedFD(path, operation: operation)
        return try BPFMap(adopting: fd, operation: operation)
    }

    /// Opens a map by kernel id (e.g. from BPFProgramInfo.mapIDs).
    public static func open(id: UInt32, key: K.Type, value: V.Type) throws(BPFError) -> BPFMap<K, V> {
        let operation = "bpf_map_get_fd_by_id(\(id))"
        let fd = bpf_map_get_fd_by_id(id)
        guard fd >= 0 else { throw BPFError.libbpf(operation, returned: Int(fd)) }
        return try BPFMap(adopting: fd, operation: operation)
    }

    public func info() -> BPFMapInfo { cachedInfo }

    /// Pins the map at `path` (on a bpffs); fails with EEXIST when something is pinned there.
    public func pin(at path: String) throws(BPFError) {
        try pinObject(fd: fd, name: cachedInfo.name, at: path)
    }

    private var keySize: Int { Int(cachedInfo.keySize) }
    private var valueSize: Int { Int(cachedInfo.valueSize) }

    /// The value for `key`, or nil when absent. For LPM tries this is the longest-prefix match.
    public func lookup(_ key: K) throws(BPFError) -> V? {
        var keyBuffer = KeyBuffer(key, size: keySize)
        let value = UnsafeMutableRawBufferPointer.allocate(byteCount: max(valueSize, MemoryLayout<V>.stride), alignment: 16)
        defer { value.deallocate() }
        value.initializeMemory(as: UInt8.self, repeating: 0)
        let ret = keyBuffer.withPointer { bpf_map_lookup_elem(fd, $0, value.baseAddress) }
        if ret == 0 { return value.loadUnaligned(as: V.self) }
        if -ret == ENOENT { return nil }
        throw BPFError.libbpf("bpf_map_lookup_elem(\(cachedInfo.name))", returned: Int(ret))
    }

    public func update(_ key: K, _ value: V, flags: MapUpdateFlags = .any) throws(BPFError) {
        var keyBuffer = KeyBuffer(key, size: keySize)
        var valueBuffer = KeyBuffer(value, size: valueSize)
        let ret = keyBuffer.withPointer { keyPtr in
            valueBuffer.withPointer { bpf_map_update_elem(fd, keyPtr, $0, flags.rawValue) }
        }
        if ret != 0 {
            throw BPFError.libbpf("bpf_map_update_elem(\(cachedInfo.name))", returned: Int(ret),
                                  detail: "flags \(flags.rawValue), max_entries \(cachedInfo.maxEntries)")
        }
    }

    /// Deletes `key`; false when it was not there. (Array maps cannot delete: EINVAL.)
    @discardableResult
    public func delete(_ key: K) throws(BPFError) -> Bool {
        var keyBuffer = KeyBuffer(key, size: keySize)
        let ret = keyBuffer.withPointer { bpf_map_delete_elem(fd, $0) }
        if ret == 0 { return true }
        if -ret == ENOENT { return false }
        throw BPFError.libbpf("bpf_map_delete_elem(\(cachedInfo.name))", returned: Int(ret),
                              hint: ret == -EINVAL ? "array maps cannot delete elements: write a zero value instead" : nil)
    }

    /// Every key, in the kernel's iteration order.
    public func keys() throws(BPFError) -> [K] {
        try iterateKeys(fd: fd, keySize: keySize, name: cachedInfo.name, limit: Int(cachedInfo.maxEntries))
    }

    /// Every entry; keys deleted while iterating are skipped.
    public func entries() throws(BPFError) -> [(key: K, value: V)] {
        var result: [(key: K, value: V)] = []
        for key in try keys() {
            if let value = try lookup(key) { result.append((key: key, value: value)) }
        }
        return result
    }
}

/// A typed per-CPU map: one value per possible CPU.
public final class PerCPUMap<K: BitwiseCopyable, V: BitwiseCopyable>: @unchecked Sendable {
    // @unchecked: immutable fd, info and CPU count; the kernel serialises element operations.
    private let owned: OwnedFD
    public var fd: Int32 { owned.raw }
    private let cachedInfo: BPFMapInfo
    /// Number of possible CPUs: the number of values per key.
    public let cpuCount: Int

    /// Takes ownership of `fd`, closed if it is not a per-CPU map for K and V.
    init(adopting fd: Int32, operation: String) throws(BPFError) {
        owned = OwnedFD(fd)
        cachedInfo = try checkedMapInfo(fd: fd, key: K.self, value: V.self, perCPU: true, operation: operation)
        cpuCount = try possibleCPUCount()
    }

    public static func openPinned(path: String, key: K.Type, value: V.Type) throws(BPFError) -> PerCPUMap<K, V> {
        let operation = "bpf_obj_get(\(path))"
        let fd = try openPinnedFD(path, operation: operation)
        return try PerCPUMap(adopting: fd, operation: operation)
    }

    public func info() -> BPFMapInfo { cachedInfo }

    public func pin(at path: String) throws(BPFError) {
        try pinObject(fd: fd, name: cachedInfo.name, at: path)
    }

    private var slotSize: Int { roundUp8(Int(cachedInfo.valueSize)) }

    /// The values for `key`, one per possible CPU (index = CPU number); empty when the key is
    /// absent (never the case for per-CPU arrays within max_entries).
    public func lookup(_ key: K) throws(BPFError) -> [V] {
        try lookupIfPresent(key) ?? []
    }

    /// The values for `key`, one per possible CPU, or nil when absent (per-CPU hash maps).
    public func lookupIfPresent(_ key: K) throws(BPFError) -> [V]? {
        var keyBuffer = KeyBuffer(key, size: Int(cachedInfo.keySize))
        let slot = slotSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: slot * cpuCount + 8, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let ret = keyBuffer.withPointer { bpf_map_lookup_elem(fd, $0, buffer.baseAddress) }
        if -ret == ENOENT { return nil }
        if ret != 0 { throw BPFError.libbpf("bpf_map_lookup_elem(\(cachedInfo.name))", returned: Int(ret)) }
        return (0..<cpuCount).map { buffer.loadUnaligned(fromByteOffset: $0 * slot, as: V.self) }
    }

    /// Writes `value` for every CPU.
    public func update(_ key: K, _ value: V, flags: MapUpdateFlags = .any) throws(BPFError) {
        try update(key, perCPU: Array(repeating: value, count: cpuCount), flags: flags)
    }

    /// Writes one value per CPU; `values.count` must be the possible-CPU count.
    public func update(_ key: K, perCPU values: [V], flags: MapUpdateFlags = .any) throws(BPFError) {
        let operation = "bpf_map_update_elem(\(cachedInfo.name))"
        guard values.count == cpuCount else {
            throw BPFError.invalid(operation, "\(values.count) values for \(cpuCount) possible CPUs")
        }
        var keyBuffer = KeyBuffer(key, size: Int(cachedInfo.keySize))
        let slot = slotSize
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: slot * cpuCount + 8, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        for (cpu, value) in values.enumerated() {
            withUnsafeBytes(of: value) { bytes in
                let count = min(bytes.count, Int(cachedInfo.valueSize))
                UnsafeMutableRawBufferPointer(rebasing: buffer[(cpu * slot)..<(cpu * slot + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<count]))
            }
        }
        let ret = keyBuffer.withPointer { bpf_map_update_elem(fd, $0, buffer.baseAddress, flags.rawValue) }
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret)) }
    }

    public func delete(_ key: K) throws(BPFError) -> Bool {
        var keyBuffer = KeyBuffer(key, size: Int(cachedInfo.keySize))
        let ret = keyBuffer.withPointer { bpf_map_delete_elem(fd, $0) }
        if ret == 0 { return true }
        if -ret == ENOENT { return false }
        throw BPFError.libbpf("bpf_map_delete_elem(\(cachedInfo.name))", returned: Int(ret))
    }

    public func keys() throws(BPFError) -> [K] {
        try iterateKeys(fd: fd, keySize: Int(cachedInfo.keySize), name: cachedInfo.name, limit: Int(cachedInfo.maxEntries))
    }
}

extension PerCPUMap where V: FixedWidthInteger {
    /// The value summed over all CPUs (wrapping); 0 when the key is absent.
    public func sum(_ key: K) throws(BPFError) -> V {
        try lookup(key).reduce(0, &+)
    }
}

/// The number of possible CPUs (what per-CPU maps size their values by), from
/// /sys/devices/system/cpu/possible.
public func possibleCPUCount() throws(BPFError) -> Int {
    let n = libbpf_num_possible_cpus()
    guard n > 0 else {
        throw BPFError.libbpf("libbpf_num_possible_cpus", returned: Int(n), hint: "is /sys mounted?")
    }
    return Int(n)
}

/// A value's bytes padded to the kernel's size (C trailing padding Swift leaves out is zero).
private struct KeyBuffer {
    private var storage: [UInt8]
    init<T: BitwiseCopyable>(_ value: T, size: Int) {
        storage = [UInt8](repeating: 0, count: max(size, MemoryLayout<T>.size, 1))
        withUnsafeBytes(of: value) { bytes in
            storage.withUnsafeMutableBytes { $0.copyMemory(from: bytes) }
        }
    }
    mutating func withPointer<R>(_ body: (UnsafeMutableRawPointer) -> R) -> R {
        storage.withUnsafeMutableBytes { body($0.baseAddress!) }
    }
}

/// Walks keys with BPF_MAP_GET_NEXT_KEY. If the current key is deleted meanwhile, hash maps restart
/// from the first key; `limit` stops a walk that could then never end.
private func iterateKeys<K: BitwiseCopyable>(fd: Int32, keySize: Int, name: String, limit: Int) throws(BPFError) -> [K] {
    var keys: [K] = []
    let size = max(keySize, MemoryLayout<K>.stride, 1)
    let current = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    let next = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    defer { current.deallocate(); next.deallocate() }
    current.initializeMemory(as: UInt8.self, repeating: 0)
    next.initializeMemory(as: UInt8.self, repeating: 0)
    var first = true
    while keys.count <= limit {
        let ret = bpf_map_get_next_key(fd, first ? nil : current.baseAddress, next.baseAddress)
        if -ret == ENOENT { break }
        if ret != 0 { throw BPFError.libbpf("bpf_map_get_next_key(\(name))", returned: Int(ret)) }
        keys.append(next.loadUnaligned(as: K.self))
        current.copyMemory(from: UnsafeRawBufferPointer(next))
        first = false
    }
    return keys
}
