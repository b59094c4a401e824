// FlannelBPF — flannel's BPF data path as one object: the embedded programs loaded, their four maps
// typed, the node config, the counters.
//
// Design: the maps are pinned by name under <bpffs>/flanneld-xdp and REUSED when already pinned
// (libbpf's LIBBPF_PIN_BY_NAME), so a restarted daemon sees the peers and counters the previous one
// left and traffic never runs against an empty table. The pin names carry FXDP_ABI_VERSION, so a
// daemon with another layout gets fresh maps instead of misreading old ones. Programs are attached
// so that they outlive the process (Attachment.swift); this object is only needed to change them.

import BPFLoader
import CBPF
import Glibc
import Logging
import NetTypes

/// The three programs of bpf/flanneld_xdp.bpf.c.
public enum FXDPProgram: String, CaseIterable, Sendable {
    /// TC egress on flannel.<VNI>.
    case encap = "fxdp_encap"
    /// XDP on the underlay.
    case decapXDP = "fxdp_decap_xdp"
    /// TC ingress on the underlay, in front of kernel decap.
    case decapCheck = "fxdp_decap_check"
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
    let logger: Logger

    /// The embedded object's bytes (compiled from bpf/flanneld_xdp.bpf.c at build time).
    public static func embeddedObject() throws(DataplaneError) -> [UInt8] {
        guard let bytes = Base64.decode(EmbeddedBPF.flanneld_xdp) else {
            throw DataplaneError(operation: "decode EmbeddedBPF.flanneld_xdp", detail: "not base64",
                                 hint: "rebuild: the BPFObjectEmbedder plugin output is corrupt")
        }
        return bytes
    }

    /// Mounts bpffs at `bpffs` if needed, creates `<bpffs>/flanneld-xdp`, opens the embedded object
    /// with its maps pinned (or reused) there, and loads the programs.
    public init(bpffs: String = "/sys/fs/bpf", logger: Logger = Logger(label: "flanneld-xdp.bpf")) throws {
        self.bpffs = bpffs
        self.logger = logger
        try BPFFS.ensureMounted(at: bpffs)
        pinDirectory = bpffs + "/" + FlannelBPF.pinFolderName
        try BPFFS.makeDirectories(pinDirectory)
        var object = try BPFObject(elf: FlannelBPF.embeddedObject(), name: "flanneld_xdp", pinRoot: pinDirectory)
        try object.load()
        peers = try object.map(named: FXDP_MAP_PEERS, key: fxdp_peer_key.self, value: fxdp_peer_value.self)
        nodes = try object.map(named: FXDP_MAP_NODES, key: fxdp_node_key.self, value: fxdp_node_value.self)
        config = try object.map(named: FXDP_MAP_CONFIG, key: UInt32.self, value: fxdp_config.self)
        counterMap = try object.perCPUMap(named: FXDP_MAP_COUNTERS, key: UInt32.self, value: fxdp_count.self)
        self.object = object
        logger.debug("BPF data path loaded", metadata: ["pins": "\(pinDirectory)"])
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

    /// The settings in the map, nil while none were written (all zero).
    public func readConfig() throws -> NodeConfig? {
        guard let c = try config.lookup(0), c.vni != 0 || c.flags != 0 else { return nil }
        return NodeConfig(c: c)
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

    /// Removes `<bpffs>/flanneld-xdp` and the pins in it. Maps stay alive while a program or an fd
    /// holds them; the next FlannelBPF starts with empty maps.
    public static func removePins(bpffs: String = "/sys/fs/bpf") throws {
        let dir = bpffs + "/" + pinFolderName
        guard let handle = opendir(dir) else {
            if errno == ENOENT { return }
            throw DataplaneError(operation: "opendir(\(dir))", errno: errno, detail: "cannot list the pins",
                                 hint: "run as root; is bpffs mounted at \(bpffs)?")
        }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(handle)
        for name in names where unlink(dir + "/" + name) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(dir)/\(name))", errno: errno, detail: "cannot remove a pin",
                                 hint: "run as root")
        }
        if rmdir(dir) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "rmdir(\(dir))", errno: errno, detail: "cannot remove the pin folder",
                                 hint: "something else was created inside it; remove it by hand")
        }
    }
}
