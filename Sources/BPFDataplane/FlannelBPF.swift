// FlannelBPF — flannel's BPF data path as one object: the embedded programs loaded, their four maps
// typed, the node config, the counters.
//
// Design: the maps are pinned by name under <bpffs>/flanneld-xdp and REUSED when already pinned
// (libbpf's LIBBPF_PIN_BY_NAME), so a restarted daemon sees the peers and counters the previous one
// left and traffic never runs against an empty table. The pin names carry FXDP_ABI_VERSION, so a
// daemon with another layout gets fresh maps instead of misreading old ones. Programs are attached
// so that they outlive the process (Attachment.swift); this object is only needed to change them.
//
// Which object: the one embedded at build time, or a compiled file (`--bpf-object`, how an upgrade
// of the programs is staged without a new binary). A file is checked before it touches anything
// (it has our programs and our maps, by name) and after load (program types, map key/value
// sizes; libbpf itself refuses to reuse a pinned map whose definition differs): every failure names
// the file, and nothing ever falls back to the embedded object in its place.

import BPFLoader
import CBPF
import Glibc
import Logging
import NetTypes
import RuntimeSupport

/// The programs of bpf/flanneld_xdp.bpf.c.
public enum FXDPProgram: String, CaseIterable, Sendable {
    /// TC egress on flannel.<VNI>.
    case encap = "fxdp_encap"
    /// XDP on the underlay (decap mode xdp).
    case decapXDP = "fxdp_decap_xdp"
    /// TC ingress on the underlay in decap mode xdp: what XDP decapsulated, into flannel.<VNI>.
    case decapSteer = "fxdp_decap_steer"
    /// TC ingress on the underlay, in front of kernel decap (decap mode tc).
    case decapCheck = "fxdp_decap_check"
    /// netfilter LOCAL_IN: the kernel vxlan socket's door.
    case vxlanDoor = "fxdp_vxlan_door"
    /// netfilter FORWARD: pods' datagrams to VXLAN ports outside the pod network.
    case podGuard = "fxdp_pod_guard"
    /// TC ingress on each pod bridge (the fast path's way out).
    case fastEncap = "fxdp_fast_encap"
    /// TC egress on flannel-v6.<VNI>: IPv6 pods over the IPv6 underlay.
    case encap6 = "fxdp_encap6"
    /// netfilter IPv6 LOCAL_IN: the door of flannel-v6.<VNI>'s socket.
    case vxlanDoor6 = "fxdp_vxlan_door6"
    /// netfilter IPv6 FORWARD: IPv6 pods' datagrams to VXLAN ports outside the IPv6 pod network.
    case podGuard6 = "fxdp_pod_guard6"
}

extension FXDPProgram {
    /// The kernel program type the program's hook takes (raw enum bpf_prog_type).
    var expectedType: UInt32 {
        switch self {
        case .decapXDP: BPF_PROG_TYPE_XDP.rawValue
        case .encap, .decapSteer, .decapCheck, .fastEncap, .encap6: BPF_PROG_TYPE_SCHED_CLS.rawValue
        case .vxlanDoor, .podGuard, .vxlanDoor6, .podGuard6: BPFLink.netfilterProgramType
        }
    }

    /// The netfilter hook a netfilter program is linked to, nil for the others.
    public var netfilterHook: NetfilterHook? {
        switch self {
        case .vxlanDoor, .vxlanDoor6: .localIn
        case .podGuard, .podGuard6: .forward
        default: nil
        }
    }

    /// The protocol family of a netfilter program's hook.
    public var netfilterFamily: NetfilterFamily {
        switch self {
        case .vxlanDoor6, .podGuard6: .ipv6
        default: .ipv4
        }
    }

    /// The programs that serve IPv6 (attached only where flannel-v6.<VNI> exists).
    public var isIPv6: Bool { self == .encap6 || self == .vxlanDoor6 || self == .podGuard6 }
}

/// Where the compiled BPF object FlannelBPF loads comes from.
public enum FXDPObjectSource: Sendable, Equatable, CustomStringConvertible {
    /// The object compiled from bpf/ into this binary at build time.
    case embedded
    /// A compiled object file (`--bpf-object PATH`): a changed program over the same maps.
    case file(String)

    public var description: String {
        switch self {
        case .embedded: "the embedded object"
        case .file(let path): "--bpf-object \(path)"
        }
    }
}

public final class FlannelBPF: @unchecked Sendable {
    // @unchecked: `object` is only read after init (programs are views; maps own their own fds).

    /// The folder under the bpffs mount that holds our pins.
    public static let pinFolderName = "flanneld-xdp"
    /// Program names all start with this; detach touches only programs named so.
    public static let programPrefix = "fxdp_"

    public let bpffs: String
    public let pinDirectory: String
    let object: BPFObject
    public let peers: BPFMap<fxdp_peer_key, fxdp_peer_value>
    public let nodes: BPFMap<fxdp_node_key, fxdp_node_value>
    public let config: BPFMap<UInt32, fxdp_config>
    public let counterMap: PerCPUMap<UInt32, fxdp_count>
    public let strangers: BPFMap<fxdp_node_key, fxdp_stranger>
    /// Pods behind our bridges, by MAC (the fast path's delivery table).
    public let local: BPFMap<fxdp_local_key, fxdp_local_value>
    /// The IPv6 peers, source checks and settings (flannel-v6.<VNI>).
    public let peers6: BPFMap<fxdp_peer6_key, fxdp_peer6_value>
    public let nodes6: BPFMap<fxdp_node6_key, fxdp_node_value>
    public let config6: BPFMap<UInt32, fxdp_config6>
    let logger: Logger

    /// The embedded object's bytes (compiled from bpf/flanneld_xdp.bpf.c at build time).
    public static func embeddedObject() throws(DataplaneError) -> [UInt8] {
        guard let bytes = Base64.decode(EmbeddedBPF.flanneld_xdp) else {
            throw DataplaneError(operation: "decode EmbeddedBPF.flanneld_xdp", detail: "not base64",
                                 hint: "rebuild: the BPFObjectEmbedder plugin output is corrupt")
        }
        return bytes
    }

    /// Mounts bpffs at `bpffs` if needed, creates `<bpffs>/flanneld-xdp`, opens the object (the
    /// embedded one, or `source`) with its maps pinned (or reused) there, and loads the programs.
    /// A file that cannot be read, loaded or used in place of the embedded object throws a
    /// DataplaneError that names it.
    public init(bpffs: String = "/sys/fs/bpf", object source: FXDPObjectSource = .embedded,
                logger: Logger = Logger(label: "flanneld-xdp.bpf")) throws {
        self.bpffs = bpffs
        self.logger = logger
        self.source = source
        try BPFFS.ensureMounted(at: bpffs)
        pinDirectory = bpffs + "/" + FlannelBPF.pinFolderName
        try BPFFS.makeDirectories(pinDirectory)
        do {
            let elf = switch source {
            case .embedded: try FlannelBPF.embeddedObject()
            case .file(let path): try FlannelBPF.readObjectFile(path)
            }
            var object = try BPFObject(elf: elf, name: "flanneld_xdp", pinRoot: pinDirectory)
            // Checked before load, so that an unrelated object never pins its maps in our folder.
            try FlannelBPF.checkNames(object)
            for program in FXDPProgram.allCases where program.netfilterHook != nil {
                try object.setNetfilterType(programNamed: program.rawValue)
            }
            try object.load()
            try FlannelBPF.checkProgramTypes(object)
            peers = try object.map(named: FXDP_MAP_PEERS, key: fxdp_peer_key.self, value: fxdp_peer_value.self)
            nodes = try object.map(named: FXDP_MAP_NODES, key: fxdp_node_key.self, value: fxdp_node_value.self)
            config = try object.map(named: FXDP_MAP_CONFIG, key: UInt32.self, value: fxdp_config.self)
            counterMap = try object.perCPUMap(named: FXDP_MAP_COUNTERS, key: UInt32.self, value: fxdp_count.self)
            strangers = try object.map(named: FXDP_MAP_STRANGERS, key: fxdp_node_key.self, value: fxdp_stranger.self)
            local = try object.map(named: FXDP_MAP_LOCAL, key: fxdp_local_key.self, value: fxdp_local_value.self)
            peers6 = try object.map(named: FXDP_MAP_PEERS6, key: fxdp_peer6_key.self, value: fxdp_peer6_value.self)
            nodes6 = try object.map(named: FXDP_MAP_NODES6, key: fxdp_node6_key.self, value: fxdp_node_value.self)
            config6 = try object.map(named: FXDP_MAP_CONFIG6, key: UInt32.self, value: fxdp_config6.self)
            self.object = object
        } catch {
            guard case .file(let path) = source else { throw error }
            if let error = error as? DataplaneError, error.operation.hasPrefix("--bpf-object") { throw error }
            throw DataplaneError(operation: "--bpf-object \(path): loading the BPF object",
                                 errno: (error as? BPFError)?.errno ?? (error as? DataplaneError)?.errno ?? 0,
                                 detail: "\(error)",
                                 hint: "give an object compiled from this version's bpf/ (make bpf) whose maps match the pinned ones, "
                                     + "or leave --bpf-object out to load the object built into flanneld-xdp")
        }
        // A staged object is worth a line at info (operators compare the tags with `bpftool prog`).
        logger.log(level: source == .embedded ? .debug : .info, "BPF programs loaded from \(source)",
                   metadata: ["tags": "\(programTags())", "pins": "\(pinDirectory)"])
    }

    /// Which object this is.
    public let source: FXDPObjectSource

    /// "fxdp_encap 1a2b…, …": the tags (hashes of the code) of our programs, as bpftool prints them.
    public func programTags() -> String {
        FXDPProgram.allCases.map { program in
            let tag = (try? self.program(program).info().tag) ?? []
            return program.rawValue + " " + tag.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        }.joined(separator: ", ")
    }

    /// The maps the object pins in our folder (LIBBPF_PIN_BY_NAME), by name.
    public static let pinnedMapNames = [FXDP_MAP_PEERS, FXDP_MAP_NODES, FXDP_MAP_CONFIG, FXDP_MAP_COUNTERS,
                                        FXDP_MAP_PEER_STATS, FXDP_MAP_STRANGERS, FXDP_MAP_LOCAL,
                                        FXDP_MAP_DROPS, FXDP_MAP_MONITOR, FXDP_MAP_MONITOR_BUDGET,
                                        FXDP_MAP_PEERS6, FXDP_MAP_NODES6, FXDP_MAP_CONFIG6, FXDP_MAP_PEER_STATS6]

    /// Every program and pinned map of ours is in the object, by name.
    private static func checkNames(_ object: borrowing BPFObject) throws(DataplaneError) {
        let programs = Set(object.programNames), maps = Set(object.mapNames)
        let missingPrograms = FXDPProgram.allCases.map(\.rawValue).filter { !programs.contains($0) }
        let ourMaps = FlannelBPF.pinnedMapNames
        let missingMaps = ourMaps.filter { !maps.contains($0) }
        guard missingPrograms.isEmpty && missingMaps.isEmpty else {
            throw DataplaneError(operation: "checking the BPF object", errno: ENOENT,
                                 detail: "it lacks "
                                     + (missingPrograms.isEmpty ? "" : "program(s) \(missingPrograms.joined(separator: ", ")) ")
                                     + (missingMaps.isEmpty ? "" : "map(s) \(missingMaps.joined(separator: ", ")) ")
                                     + "(it has programs [\(object.programNames.joined(separator: ", "))], maps [\(object.mapNames.joined(separator: ", "))])",
                                 hint: "it is not a flanneld-xdp object for map ABI v\(FXDP_ABI_VERSION)")
        }
    }

    /// Each program has the type its hook takes (else attach would fail later, half done).
    private static func checkProgramTypes(_ object: borrowing BPFObject) throws {
        for program in FXDPProgram.allCases {
            let type = try object.program(named: program.rawValue).info().type
            guard type == program.expectedType else {
                throw DataplaneError(operation: "checking the BPF object", errno: EINVAL,
                                     detail: "program \(program.rawValue) has type \(type), its hook needs type \(program.expectedType)",
                                     hint: "declare it with the same SEC() as bpf/flanneld_xdp.bpf.c")
            }
        }
    }

    /// The bytes of an object file, or an error naming it (open/read errno).
    static func readObjectFile(_ path: String) throws(DataplaneError) -> [UInt8] {
        let operation = "--bpf-object \(path): reading the BPF object"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw DataplaneError(operation: operation, errno: errno, detail: "cannot open the file",
                                 hint: "give the path of a compiled object (make bpf writes build/bpf/flanneld_xdp.bpf.o), readable by root")
        }
        defer { close(fd) }
        let (bytes, failure) = SystemCall.readAll(fd, limit: (64 << 20) + 1)
        if let failure {
            throw DataplaneError(operation: operation, errno: failure, detail: "read failed after \(bytes.count) bytes",
                                 hint: "is it a regular file?")
        }
        guard bytes.count <= 64 << 20 else {
            throw DataplaneError(operation: operation, errno: EFBIG, detail: "larger than 64 MiB",
                                 hint: "a flanneld-xdp object is about 100 KB: is this the right file?")
        }
        return bytes
    }

    /// A loaded program (valid while this object lives; an attached program stays after that).
    public func program(_ which: FXDPProgram) throws -> BPFProgram {
        try object.program(named: which.rawValue)
    }

    /// Writes this node's settings; the programs read them on the next packet.
    public func writeConfig(_ node: NodeConfig) throws {
        if let problem = node.problem {
            throw DataplaneError(operation: "writeConfig", detail: problem,
                                 hint: "fill NodeConfig from the lease, flannel.<VNI> and the --iface interface")
        }
        try config.update(0, node.cValue)
    }

    /// Sets only the enabled flag (false: every program passes everything to the kernel).
    public func setEnabled(_ enabled: Bool) throws {
        var c = try config.lookup(0) ?? fxdp_config()
        c.flags = enabled ? c.flags | UInt16(FXDP_CFG_F_ENABLED) : c.flags & ~UInt16(FXDP_CFG_F_ENABLED)
        try config.update(0, c)
    }

    /// Sets only the outer TTL; returns true when it changed.
    @discardableResult
    public func setOuterTTL(_ ttl: UInt8) throws -> Bool {
        try Self.setField(\.outer_ttl, to: ttl, in: config, empty: fxdp_config())
    }

    /// Sets the fast path's two switches (the programs read them per packet); returns true when they
    /// changed. `tcpLiberal`: the namespace's net.netfilter.nf_conntrack_tcp_be_liberal is 1.
    @discardableResult
    public func setFastPath(_ on: Bool, conntrackTCPLiberal tcpLiberal: Bool) throws -> Bool {
        var c = try config.lookup(0) ?? fxdp_config()
        let mask = UInt16(FXDP_CFG_F_FAST_PATH) | UInt16(FXDP_CFG_F_CT_TCP_LIBERAL)
        let wanted = (on ? UInt16(FXDP_CFG_F_FAST_PATH) : 0) | (tcpLiberal ? UInt16(FXDP_CFG_F_CT_TCP_LIBERAL) : 0)
        guard c.flags & mask != wanted else { return false }
        c.flags = c.flags & ~mask | wanted
        try config.update(0, c)
        return true
    }

    /// The settings in the map, nil while none were written (all zero).
    public func readConfig() throws -> NodeConfig? { try NodeConfig.read(from: config) }

    /// Writes this node's IPv6 settings (flannel-v6.<VNI>); nil clears them, and IPv6 then passes
    /// every program untouched. The shared settings stay NodeConfig's (`writeConfig`).
    public func writeConfig6(_ node: NodeConfig6?) throws {
        guard let node else {
            try config6.update(0, fxdp_config6())
            return
        }
        if let problem = node.problem {
            throw DataplaneError(operation: "writeConfig6", detail: problem,
                                 hint: "fill NodeConfig6 from the lease's IPv6 half, flannel-v6.<VNI> and the --iface interface's IPv6 address")
        }
        try config6.update(0, node.cValue)
    }

    /// The IPv6 settings in the map, nil while none were written.
    public func readConfig6() throws -> NodeConfig6? { try NodeConfig6.read(from: config6) }

    /// Sets only the outer IPv6 hop limit; returns true when it changed.
    @discardableResult
    public func setOuterHopLimit(_ hopLimit: UInt8) throws -> Bool {
        try Self.setField(\.outer_hop_limit, to: hopLimit, in: config6, empty: fxdp_config6())
    }

    /// Read-modify-write of one field of a single-entry config map, leaving the others as they are
    /// (a map never written reads as `empty`); true when the value changed. The programs read the
    /// entry per packet, so an unchanged value is not rewritten.
    private static func setField<Config, Value: Equatable>(
        _ field: WritableKeyPath<Config, Value>, to value: Value, in map: BPFMap<UInt32, Config>, empty: Config
    ) throws -> Bool {
        var c = try map.lookup(0) ?? empty
        guard c[keyPath: field] != value else { return false }
        c[keyPath: field] = value
        try map.update(0, c)
        return true
    }

    /// Every named counter, summed over CPUs.
    public func counters() throws -> [FXDPCounter: FXDPCount] {
        var result: [FXDPCounter: FXDPCount] = [:]
        for counter in FXDPCounter.allCases {
            let perCPU = try counterMap.lookup(counter.rawValue)
            var total = FXDPCount()
            for v in perCPU {
                total.packets &+= v.packets
                total.bytes &+= v.bytes
            }
            result[counter] = total
        }
        return result
    }

    /// Zeroes every counter (tests; an operator's "reset").
    public func resetCounters() throws {
        for code in 0..<FXDPCounter.arraySize {
            try counterMap.update(code, fxdp_count())
        }
    }

    /// A PeerTable over this object's maps.
    public func peerTable() throws -> BPFPeerTable {
        try BPFPeerTable(peers: peers, nodes: nodes)
    }

    /// The IPv6 peer table over this object's maps.
    public func ipv6PeerTable() throws -> BPFIPv6PeerTable {
        try BPFIPv6PeerTable(peers: peers6, nodes: nodes6)
    }

    /// Removes the pins of maps of another ABI version (`fxdp_<name>_v<N>`, N ≠ FXDP_ABI_VERSION)
    /// from our folder: what an earlier version left when this one started with maps of a new
    /// layout. Their programs were replaced by ours at attach, so nothing reads them any more.
    /// Returns the names removed.
    @discardableResult
    public func removeOtherABIPins() throws -> [String] {
        var removed: [String] = []
        for name in try FlannelBPF.pinNames(in: pinDirectory) {
            guard name.hasPrefix(FlannelBPF.programPrefix), let v = name.lastIndex(of: "_"),
                  name[name.index(after: v)...].hasPrefix("v"),
                  let version = Int(name[name.index(v, offsetBy: 2)...]), version != Int(FXDP_ABI_VERSION) else { continue }
            if unlink(pinDirectory + "/" + name) == 0 { removed.append(name) }
        }
        return removed
    }

    static func pinNames(in dir: String) throws -> [String] {
        guard let names = Directory.entryNames(at: dir) else {
            if errno == ENOENT { return [] }
            throw DataplaneError(operation: "opendir(\(dir))", errno: errno, detail: "cannot list the pins",
                                 hint: "run as root; is bpffs mounted there?")
        }
        return names
    }

    /// Removes `<bpffs>/flanneld-xdp` and the pins in it. Maps stay alive while a program or an fd
    /// holds them; the next FlannelBPF starts with empty maps.
    public static func removePins(bpffs: String = "/sys/fs/bpf") throws {
        let dir = bpffs + "/" + pinFolderName
        for name in try pinNames(in: dir) where unlink(dir + "/" + name) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(dir)/\(name))", errno: errno, detail: "cannot remove a pin",
                                 hint: "run as root")
        }
        if rmdir(dir) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "rmdir(\(dir))", errno: errno, detail: "cannot remove the pin folder",
                                 hint: "something else was created inside it; remove it by hand")
        }
    }
}
