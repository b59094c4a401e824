// BPFObject, BPFProgram — opening, loading and looking into a compiled BPF ELF object.
//
// Design: a BPFObject is the one owner of libbpf's bpf_object (and of the ELF bytes libbpf reads in
// place until load), so it is ~Copyable and closes both in deinit. Programs handed out are
// non-owning views (an fd and a name) that stay valid while the object lives: the kernel keeps an
// attached program alive by itself, and `BPFProgramInfo.forID` finds it again later. Maps handed
// out own a dup()'d fd, so a daemon can keep its maps after the object is gone. Maps declared with
// LIBBPF_PIN_BY_NAME are pinned under `pinRoot` at load, or reused from there when a compatible map
// is already pinned: that is how state survives a restart.

import CBPF
import Glibc

public struct BPFObject: ~Copyable {
    private let object: OpaquePointer
    /// libbpf reads the ELF in place (elf_memory) until load finishes: the bytes live as long as we do.
    private let elfBytes: UnsafeMutableRawBufferPointer?
    public let name: String
    public private(set) var isLoaded = false

    /// Opens an ELF object held in memory (e.g. embedded in the binary).
    /// - Parameter pinRoot: folder on a bpffs where maps declared with `LIBBPF_PIN_BY_NAME` are pinned
    ///   (or reused when already there). nil means libbpf's default, /sys/fs/bpf.
    public init(elf: [UInt8], name: String, pinRoot: String? = nil) throws(BPFError) {
        let operation = "bpf_object__open_mem(\(name))"
        guard elf.count >= 64, elf.starts(with: [0x7f, 0x45, 0x4c, 0x46]) else {
            throw BPFError.invalid(operation, "\(elf.count) bytes that are not an ELF object (no \\x7fELF header)",
                                   hint: "pass a BPF object compiled with clang -target bpf")
        }
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: elf.count, alignment: 16)
        bytes.copyBytes(from: elf)
        let opened: OpaquePointer
        do {
            opened = try capturingLibbpfWarnings { () throws(BPFError) -> OpaquePointer in
                try BPFObject.open(operation: operation, name: name, pinRoot: pinRoot) { opts in
                    bpf_object__open_mem(bytes.baseAddress, bytes.count, opts)
                }
            }
        } catch {
            bytes.deallocate()
            throw error
        }
        self.object = opened
        self.elfBytes = bytes
        self.name = name
    }

    /// Opens an ELF object file.
    public init(path: String, pinRoot: String? = nil) throws(BPFError) {
        let operation = "bpf_object__open_file(\(path))"
        guard access(path, R_OK) == 0 else {
            throw BPFError(operation: operation, errno: Glibc.errno, detail: "cannot read \(path)",
                           hint: "check the path to the compiled .o")
        }
        self.object = try capturingLibbpfWarnings { () throws(BPFError) -> OpaquePointer in
            try BPFObject.open(operation: operation, name: nil, pinRoot: pinRoot) { opts in
                bpf_object__open_file(path, opts)
            }
        }
        self.elfBytes = nil
        self.name = String(cString: bpf_object__name(object))
    }

    private static func open(
        operation: String, name: String?, pinRoot: String?,
        _ call: (UnsafePointer<bpf_object_open_opts>) -> OpaquePointer?
    ) throws(BPFError) -> OpaquePointer {
        var opts = bpf_object_open_opts()
        opts.sz = libbpfOptsSize(\bpf_object_open_opts.kernel_log_level)
        // The strings only need to live through the open call: libbpf copies the object name and
        // builds (strdup) each map's pin path from the root while opening.
        let result: OpaquePointer? = withOptionalCString(name) { namePtr in
            withOptionalCString(pinRoot) { rootPtr in
                opts.object_name = namePtr
                opts.pin_root_path = rootPtr
                return call(&opts)
            }
        }
        let ret = libbpf_get_error(UnsafeRawPointer(result))
        guard let result, ret == 0 else {
            throw BPFError.libbpf(operation, returned: ret != 0 ? ret : -Int(ENOENT),
                                  hint: "the object could not be parsed: is it a BPF ELF built with -g (BTF) for this libbpf?")
        }
        return result
    }

    deinit {
        bpf_object__close(object)
        elfBytes?.deallocate()
    }

    /// Creates (or reuses pinned) maps and loads every program into the kernel. On a verifier refusal
    /// the error's detail ends with the verifier log.
    public mutating func load() throws(BPFError) {
        let operation = "bpf_object__load(\(name))"
        if isLoaded { return }
        let object = self.object
        try capturingLibbpfWarnings { () throws(BPFError) in
            let ret = bpf_object__load(object)
            if ret != 0 {
                throw BPFError.libbpf(operation, returned: Int(ret))
            }
        }
        isLoaded = true
    }

    /// Names of the programs in the object (function names in the C source).
    public var programNames: [String] { names(next: bpf_object__next_program, name: bpf_program__name) }

    /// Names of the maps in the object, including libbpf's internal ones (".rodata", ".bss").
    public var mapNames: [String] { names(next: bpf_object__next_map, name: bpf_map__name) }

    /// Every element libbpf's `next` iterator yields from this object, by `name`.
    private func names(next: (OpaquePointer?, OpaquePointer?) -> OpaquePointer?, name: (OpaquePointer?) -> UnsafePointer<CChar>?) -> [String] {
        var names: [String] = []
        var element = next(object, nil)
        while let current = element {
            names.append(String(cString: name(current)!))
            element = next(object, current)
        }
        return names
    }

    /// A loaded program by its C function name. Valid while this object lives.
    public func program(named programName: String) throws(BPFError) -> BPFProgram {
        let operation = "bpf_object__find_program_by_name(\(name).\(programName))"
        guard let program = bpf_object__find_program_by_name(object, programName) else {
            throw BPFError(operation: operation, errno: ENOENT,
                           detail: "no program '\(programName)'; the object has: \(programNames.joined(separator: ", "))",
                           hint: "use the C function name, not the section name")
        }
        let fd = bpf_program__fd(program)
        guard fd >= 0 else {
            throw BPFError(operation: operation, errno: EINVAL, detail: "program '\(programName)' is not loaded",
                           hint: "call load() before asking for programs")
        }
        return BPFProgram(fd: fd, name: programName)
    }

    /// A typed handle on a loaded map. Checks that K and V have the map's key and value sizes.
    public func map<K: BitwiseCopyable, V: BitwiseCopyable>(
        named mapName: String, key: K.Type, value: V.Type
    ) throws(BPFError) -> BPFMap<K, V> {
        try adoptLoadedMap(mapName, as: "map")
    }

    /// A typed handle on a loaded per-CPU map (PERCPU_ARRAY, PERCPU_HASH, LRU_PERCPU_HASH).
    public func perCPUMap<K: BitwiseCopyable, V: BitwiseCopyable>(
        named mapName: String, key: K.Type, value: V.Type
    ) throws(BPFError) -> PerCPUMap<K, V> {
        try adoptLoadedMap(mapName, as: "perCPUMap")
    }

    /// A map class over a copy of the loaded map's descriptor (libbpf keeps the original);
    /// `accessor` names the call in errors.
    private func adoptLoadedMap<M: AdoptingMapFD>(_ mapName: String, as accessor: String) throws(BPFError) -> M {
        let fd = try loadedMapFD(mapName)
        let operation = "\(accessor)(\(name).\(mapName))"
        return try M(adopting: dupFD(fd, operation: operation), operation: operation)
    }

    private func findMap(_ mapName: String, operation: String) throws(BPFError) -> OpaquePointer {
        guard let map = bpf_object__find_map_by_name(object, mapName) else {
            throw BPFError(operation: operation, errno: ENOENT,
                           detail: "no map '\(mapName)'; the object has: \(mapNames.joined(separator: ", "))",
                           hint: "use the map's declared name")
        }
        return map
    }

    func loadedMapFD(_ mapName: String) throws(BPFError) -> Int32 {
        let operation = "bpf_object__find_map_by_name(\(name).\(mapName))"
        let map = try findMap(mapName, operation: operation)
        let fd = bpf_map__fd(map)
        guard fd >= 0 else {
            throw BPFError(operation: operation, errno: EINVAL, detail: "map '\(mapName)' is not created yet",
                           hint: "call load() before asking for maps")
        }
        return fd
    }

    /// Sets the initial contents of a map before load; for a `const volatile` config section this is
    /// how read-only data is filled (map name ends in ".rodata"). Byte count must equal the value size.
    public mutating func setInitialValue(mapNamed mapName: String, bytes: [UInt8]) throws(BPFError) {
        let operation = "bpf_map__set_initial_value(\(name).\(mapName))"
        guard !isLoaded else {
            throw BPFError.invalid(operation, "the object is already loaded", hint: "set initial values before load()")
        }
        let map = try findMap(mapName, operation: operation)
        let ret = bytes.withUnsafeBytes { bpf_map__set_initial_value(map, $0.baseAddress, $0.count) }
        if ret != 0 {
            throw BPFError.libbpf(operation, returned: Int(ret),
                                  detail: "\(bytes.count) bytes given, the map's value size is \(bpf_map__value_size(map))")
        }
    }

    /// Typed form of `setInitialValue(mapNamed:bytes:)`: `T` must have the map's value size, e.g. a
    /// C struct holding every `const volatile` global of the object for ".rodata".
    public mutating func setInitialValue<T: BitwiseCopyable>(mapNamed mapName: String, value: T) throws(BPFError) {
        let bytes = withUnsafeBytes(of: value) { Array($0) }
        let map = try findMap(mapName, operation: "bpf_map__set_initial_value(\(name).\(mapName))")
        let valueSize = Int(bpf_map__value_size(map))
        // C sizeof may include tail padding Swift's size leaves out: pad with zeros up to it.
        guard valueSize >= bytes.count, valueSize <= MemoryLayout<T>.stride else {
            throw BPFError.invalid("bpf_map__set_initial_value(\(name).\(mapName))",
                                   "\(T.self) is \(bytes.count) bytes, the map's value is \(valueSize) bytes",
                                   hint: "mirror every global of that section, in order, in one C struct")
        }
        try setInitialValue(mapNamed: mapName, bytes: bytes + [UInt8](repeating: 0, count: valueSize - bytes.count))
    }

    /// Sets a program's type and expected attach type before load, for sections libbpf does not
    /// recognise (raw kernel numbers: enum bpf_prog_type, enum bpf_attach_type).
    public mutating func setProgramType(programNamed programName: String, type: UInt32, expectedAttachType: UInt32) throws(BPFError) {
        let operation = "bpf_program__set_type(\(name).\(programName))"
        guard !isLoaded else {
            throw BPFError.invalid(operation, "the object is already loaded", hint: "set program types before load()")
        }
        guard let program = bpf_object__find_program_by_name(object, programName) else {
            throw BPFError(operation: operation, errno: ENOENT,
                           detail: "no program '\(programName)'; the object has: \(programNames.joined(separator: ", "))",
                           hint: "use the C function name, not the section name")
        }
        var ret = bpf_program__set_type(program, bpf_prog_type(rawValue: type))
        if ret == 0 { ret = bpf_program__set_expected_attach_type(program, bpf_attach_type(rawValue: expectedAttachType)) }
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret)) }
    }

    /// Changes a map's max_entries before load.
    public mutating func setMaxEntries(mapNamed mapName: String, _ maxEntries: UInt32) throws(BPFError) {
        let operation = "bpf_map__set_max_entries(\(name).\(mapName))"
        guard !isLoaded else {
            throw BPFError.invalid(operation, "the object is already loaded", hint: "set max entries before load()")
        }
        let map = try findMap(mapName, operation: operation)
        let ret = bpf_map__set_max_entries(map, maxEntries)
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret)) }
    }

    /// Where libbpf pins (or found pinned) this map, if it is pinned.
    public func pinPath(ofMap mapName: String) throws(BPFError) -> String? {
        let map = try findMap(mapName, operation: "bpf_map__pin_path(\(name).\(mapName))")
        guard let path = bpf_map__pin_path(map) else { return nil }
        return String(cString: path)
    }
}

// @unchecked: the object can move to another task or actor. Mutation (load, initial values) takes
// `mutating`/exclusive access; the non-mutating methods only read libbpf's program and map tables.
extension BPFObject: @unchecked Sendable {}

/// A loaded program: its fd and C function name. Non-owning: valid while its BPFObject lives.
public struct BPFProgram: Sendable, Hashable {
    public let fd: Int32
    public let name: String

    /// Pins the program at `path` on a bpffs (keeps it loaded after the process exits).
    public func pin(at path: String) throws(BPFError) {
        try pinObject(fd: fd, name: name, at: path)
    }

    /// What the kernel knows about this program (id, tag, type, maps).
    public func info() throws(BPFError) -> BPFProgramInfo {
        try BPFProgramInfo(fd: fd, operation: "bpf_prog_get_info_by_fd(\(name))")
    }
}

/// The kernel's view of a loaded program.
public struct BPFProgramInfo: Sendable, Equatable {
    public var id: UInt32
    /// The 8-byte hash of the instructions: equal tags mean the same code.
    public var tag: [UInt8]
    /// Kernel-truncated name (at most 15 bytes).
    public var name: String
    /// enum bpf_prog_type (e.g. BPF_PROG_TYPE_XDP = 6, BPF_PROG_TYPE_SCHED_CLS = 3).
    public var type: UInt32
    public var mapIDs: [UInt32]

    public init(id: UInt32, tag: [UInt8], name: String, type: UInt32, mapIDs: [UInt32]) {
        self.id = id
        self.tag = tag
        self.name = name
        self.type = type
        self.mapIDs = mapIDs
    }

    /// Finds a loaded program by id (e.g. the one attached to an interface).
    public static func forID(_ id: UInt32) throws(BPFError) -> BPFProgramInfo {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else {
            throw BPFError.libbpf("bpf_prog_get_fd_by_id(\(id))", returned: Int(fd),
                                  hint: "no program with that id is loaded (it may have been unloaded)")
        }
        let owned = OwnedFD(fd)
        return try BPFProgramInfo(fd: owned.raw, operation: "bpf_prog_get_info_by_fd(id \(id))")
    }

    /// Reads the info of a program pinned at `path`. Unlike `forID` (bpf_prog_get_fd_by_id, which
    /// needs CAP_SYS_ADMIN) this needs only access to the pin.
    public static func forPinned(path: String) throws(BPFError) -> BPFProgramInfo {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else {
            throw BPFError.libbpf("bpf_obj_get(\(path))", returned: Int(fd), hint: "no program is pinned there")
        }
        let owned = OwnedFD(fd)
        return try BPFProgramInfo(fd: owned.raw, operation: "bpf_prog_get_info_by_fd(\(path))")
    }

    init(fd: Int32, operation: String) throws(BPFError) {
        var info = bpf_prog_info()
        var length = UInt32(MemoryLayout<bpf_prog_info>.size)
        var ret = bpf_obj_get_info_by_fd(fd, &info, &length)
        if ret != 0 { throw BPFError.libbpf(operation, returned: Int(ret)) }
        var mapIDs = [UInt32](repeating: 0, count: Int(info.nr_map_ids))
        if !mapIDs.isEmpty {
            // Second call: the kernel fills map ids only into a buffer we provide.
            let count = info.nr_map_ids
            ret = mapIDs.withUnsafeMutableBufferPointer { buffer in
                var withMaps = bpf_prog_info()
                withMaps.nr_map_ids = count
                withMaps.map_ids = UInt64(UInt(bitPattern: buffer.baseAddress))
                var length = UInt32(MemoryLayout<bpf_prog_info>.size)
                return bpf_obj_get_info_by_fd(fd, &withMaps, &length)
            }
            if ret != 0 { throw BPFError.libbpf(operation + " map ids", returned: Int(ret)) }
        }
        self.id = info.id
        self.tag = withUnsafeBytes(of: info.tag) { Array($0) }
        self.name = cStringField(info.name)
        self.type = info.type
        self.mapIDs = mapIDs
    }
}

/// The result of one BPF_PROG_TEST_RUN.
public struct TestRunResult: Sendable, Equatable {
    /// The program's return value (XDP_PASS = 2, TC_ACT_OK = 0, TC_ACT_SHOT = 2, ...).
    public var retval: UInt32
    /// The packet as the program left it.
    public var packet: [UInt8]
    /// Average run time per repetition.
    public var durationNanoseconds: UInt32
}

/// The socket-buffer fields a TC program's test run may start with (the kernel accepts only these
/// in the context of BPF_PROG_TEST_RUN; every other field must be zero).
public struct TestRunSKB: Sendable, Equatable {
    /// The device the packet arrives on (0: loopback): its namespace's routes and neighbours apply,
    /// and the Ethernet destination is judged against its MAC (PACKET_HOST or not).
    public var ifindex: Int32
    public var mark: UInt32

    public init(ifindex: Int32 = 0, mark: UInt32 = 0) {
        self.ifindex = ifindex
        self.mark = mark
    }
}

extension BPFProgram {
    /// Runs the program once (or `repeat` times) on `packet` in the kernel without attaching it.
    /// With repeat > 1 each run sees the packet the previous one left, so only idempotent programs
    /// give a meaningful output then. `skb`: the starting fields of a TC program's socket buffer.
    public func testRun(packet: [UInt8], repeat count: UInt32 = 1, outputCapacity: Int = 65_536 + 256,
                        skb: TestRunSKB? = nil) throws(BPFError) -> TestRunResult {
        let operation = "bpf_prog_test_run_opts(\(name))"
        guard !packet.isEmpty, packet.count <= Int(UInt32.max), outputCapacity > 0, outputCapacity <= Int(UInt32.max) else {
            throw BPFError.invalid(operation, "packet of \(packet.count) bytes, output capacity \(outputCapacity)",
                                   hint: "pass a non-empty packet (TC programs need at least an Ethernet header)")
        }
        var output = [UInt8](repeating: 0, count: outputCapacity)
        var opts = bpf_test_run_opts()
        opts.sz = libbpfOptsSize(\bpf_test_run_opts.batch_size)
        opts.repeat = Int32(clamping: count)
        var context = __sk_buff()
        if let skb {
            context.ifindex = UInt32(bitPattern: skb.ifindex)
            context.mark = skb.mark
        }
        let ret: Int32 = packet.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                withUnsafeMutableBytes(of: &context) { ctx in
                    opts.data_in = input.baseAddress
                    opts.data_size_in = UInt32(input.count)
                    opts.data_out = out.baseAddress
                    opts.data_size_out = UInt32(out.count)
                    if skb != nil {
                        opts.ctx_in = UnsafeRawPointer(ctx.baseAddress)
                        opts.ctx_size_in = UInt32(ctx.count)
                    }
                    return bpf_prog_test_run_opts(fd, &opts)
                }
            }
        }
        if ret != 0 {
            throw BPFError.libbpf(operation, returned: Int(ret),
                                  detail: "input \(packet.count) bytes, output capacity \(outputCapacity)")
        }
        output.removeSubrange(Int(opts.data_size_out)...)
        return TestRunResult(retval: opts.retval, packet: output, durationNanoseconds: opts.duration)
    }
}

// MARK: - C string helpers

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let string else { return body(nil) }
    return string.withCString { body($0) }
}

/// Reads a fixed-size C char array (imported as a tuple) up to its first NUL.
func cStringField<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { raw in
        let bytes = raw.prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }
}
