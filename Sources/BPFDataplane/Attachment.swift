// Attachment — where the programs run and how a restart leaves traffic alone.
//
// Design: encap runs in TC egress on flannel.<VNI>. Decap runs either as XDP on the underlay with
// a TC-ingress steer that moves what XDP stripped into flannel.<VNI> (DecapMode.xdp), or as a
// TC-ingress source check in front of the kernel vxlan device's own decap (DecapMode.tc). The
// default is chosen per interface by driver: on virtual devices (veth and friends, the
// container-in-VM case) native XDP copies frames and disables the peer's TSO, and the kernel's decap
// measured faster (docs/BPF-DATAPATH.md, `make bench`); physical NICs whose drivers have native XDP
// get XDP. Either can be forced. In both modes two netfilter programs guard the namespace: the
// vxlan socket's door (LOCAL_IN) and the pods' egress (FORWARD); their links are pinned next to the
// maps, which is what keeps them attached after the process exits.
//
// The TC programs are tcx links (Linux 6.6+), pinned next to the maps as `tcx_overlay_egress`,
// `tcx_underlay_ingress` and `tcx_pod_<ifindex>` (the fast path's, one per pod veth): unlike
// cls_bpf, tcx needs no clsact qdisc, whose creation deactivates the device for a moment and drops
// what is sent meanwhile — a packet of a node being taken over from stock flannel, of a pod whose veth
// gets the fast path while it talks. Other agents' tcx programs share the hooks; ours come after
// theirs. A cls_bpf filter an earlier version left in its slot (handle 0xFD01, priority 0xFD) is
// removed once our link runs (removing a filter does not touch the qdisc).
//
// Restart semantics: attachments outlive the process. On attach, a hook that already runs our
// program with the same tag and the same maps is left alone (program and link ids unchanged, no
// blip); a different program of ours is swapped in atomically (bpf_link_update on the pinned link,
// XDP_FLAGS_REPLACE with the old id); an XDP program that is not ours (name without the fxdp_
// prefix) is refused, and so is a program of ours on a tcx hook that our pins do not hold (another
// flanneld-xdp with another --bpffs). Switching decap mode swaps the underlay's program and removes
// our XDP program. detachAll removes only what is ours.

import BPFLoader
import CBPF
import Glibc
import Logging

public enum DecapMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// XDP on the underlay strips VXLAN from peers before the stack.
    case xdp
    /// The kernel vxlan device decapsulates; a TC-ingress program checks source and VNI first
    /// (`--dataplane=tc`, "bpf-tc"; in prose "TC-checked kernel decap").
    case tc

    public var description: String { rawValue }

    /// Drivers with native XDP that is worth it (no per-packet copy): physical NICs and virtio_net.
    public static let nativeXDPDrivers: Set<String> = [
        "mlx5_core", "mlx4_en", "i40e", "ice", "ixgbe", "ixgbevf", "igb", "igc", "bnxt_en", "virtio_net",
        "ena", "nfp", "qede", "sfc", "mvneta", "mvpp2", "stmmac", "fec", "gve", "hv_netvsc", "tsnep",
        "thunder-nicvf", "lan966x-switch", "cpsw", "dpaa2-eth", "enetc", "atlantic", "octeontx2-nicpf",
    ]

    /// The default for a driver name (as ethtool -i reports it): xdp for native-XDP NICs, kernel for
    /// everything else (veth, bridge, bond, unknown).
    public static func defaultMode(driver: String?) -> DecapMode {
        guard let driver, nativeXDPDrivers.contains(driver) else { return .tc }
        return .xdp
    }

    /// The default for an interface of the calling thread's network namespace.
    public static func defaultMode(ifindex: Int32) -> DecapMode {
        defaultMode(driver: InterfaceDriver.name(ifindex: ifindex))
    }
}

/// Reads an interface's driver with the ethtool GDRVINFO ioctl (works in any network namespace,
/// unlike /sys/class/net, which shows the namespace sysfs was mounted in).
public enum InterfaceDriver {
    public static func name(ifindex: Int32) -> String? {
        var nameBuffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(UInt32(bitPattern: ifindex), &nameBuffer) != nil else { return nil }
        let bytes = nameBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return name(interface: String(decoding: bytes, as: UTF8.self))
    }

    public static func name(interface: String) -> String? {
        let sock = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard sock >= 0 else { return nil }
        defer { close(sock) }
        // struct ethtool_drvinfo: u32 cmd, char driver[32], ... 196 bytes in all.
        var info = [UInt8](repeating: 0, count: 196)
        info[0] = 3 // ETHTOOL_GDRVINFO (little-endian u32)
        var req = ifreq()
        let bytes = Array(interface.utf8.prefix(Int(IF_NAMESIZE) - 1))
        withUnsafeMutableBytes(of: &req.ifr_ifrn.ifrn_name) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let ret = info.withUnsafeMutableBytes { buffer -> Int32 in
            req.ifr_ifru.ifru_data = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
            return ioctl(sock, 0x8946 /* SIOCETHTOOL */, &req)
        }
        guard ret == 0 else { return nil }
        let driver = info[4..<36].prefix { $0 != 0 }
        return driver.isEmpty ? nil : String(decoding: driver, as: UTF8.self)
    }
}

/// Which of our programs sit where, as read from the kernel.
public struct AttachmentState: Sendable, Equatable, CustomStringConvertible {
    public var encapProgramID: UInt32?
    /// Our TC-ingress slot on the underlay: fxdp_decap_check (decap mode tc) or fxdp_decap_steer (xdp).
    public var decapCheckProgramID: UInt32?
    public var xdpProgramID: UInt32?
    public var xdpMode: XDPMode?
    /// The programs our pinned netfilter links run (nil: no link pinned).
    public var doorProgramID: UInt32?
    public var podGuardProgramID: UInt32?
    /// The IPv6 half: fxdp_encap6 on flannel-v6.<VNI>'s egress, the IPv6 netfilter links.
    public var encap6ProgramID: UInt32?
    public var door6ProgramID: UInt32?
    public var podGuard6ProgramID: UInt32?

    /// Nothing attached; `AttachmentState.read` fills in what it finds.
    public init() {}

    /// True when nothing is attached in our slots.
    public var isEmpty: Bool {
        encapProgramID == nil && decapCheckProgramID == nil && xdpProgramID == nil && doorProgramID == nil && podGuardProgramID == nil
            && !hasIPv6
    }

    /// True when any of the IPv6 half is attached.
    public var hasIPv6: Bool { encap6ProgramID != nil || door6ProgramID != nil || podGuard6ProgramID != nil }

    public var decapMode: DecapMode? {
        if xdpProgramID != nil { return .xdp }
        if decapCheckProgramID != nil { return .tc }
        return nil
    }

    public var description: String {
        "encap \(encapProgramID.map(String.init) ?? "-"), \(xdpProgramID == nil ? "decap check" : "decap steer") \(decapCheckProgramID.map(String.init) ?? "-"), "
            + "xdp \(xdpProgramID.map { "\($0) (\(xdpMode!))" } ?? "-"), "
            + "vxlan door \(doorProgramID.map(String.init) ?? "-"), pod guard \(podGuardProgramID.map(String.init) ?? "-")"
            + (hasIPv6 ? ", encap6 \(encap6ProgramID.map(String.init) ?? "-"), vxlan door6 \(door6ProgramID.map(String.init) ?? "-"), "
                + "pod guard6 \(podGuard6ProgramID.map(String.init) ?? "-")" : "")
    }
}

/// Where our programs hang. Other agents' programs and filters are never touched.
public enum FXDPSlots {
    /// The cls_bpf slot versions before tcx used: a filter of ours found there is removed.
    public static let tcHandle: UInt32 = 0xFD01
    public static let tcPriority: UInt32 = 0xFD
    /// The pins of our tcx links, in the pin folder.
    public static let overlayEgressPin = "tcx_overlay_egress"
    /// flannel-v6.<VNI>'s egress (fxdp_encap6).
    public static let overlay6EgressPin = "tcx_overlay6_egress"
    public static let underlayIngressPin = "tcx_underlay_ingress"
    public static let podPinPrefix = "tcx_pod_"
    public static func podPin(_ ifindex: Int32) -> String { podPinPrefix + "\(ifindex)" }
    /// Our netfilter hooks' priority: after conntrack and mangle (-150), before the filter tables
    /// (0), so a drop here is counted before any firewall rule sees the datagram. A replacement
    /// link is made at one less (the kernel allows one BPF hook per priority) and the next at this again.
    public static let netfilterPriority: Int32 = -100
}

extension FlannelBPF {
    /// Attaches encap on the overlay's egress and decap on the underlay in `mode`, keeping what is
    /// already attached when it is the same program (see the file's design note). Acts in the
    /// calling thread's network namespace. Returns the resulting state.
    /// - Parameter mode: nil chooses by the underlay's driver (`DecapMode.defaultMode(ifindex:)`).
    /// - Parameter overlay6Ifindex: flannel-v6.<VNI> on a dual-stack or IPv6-only node: its encap and
    ///   the IPv6 doors are attached too (the underlay's decap programs serve both families). nil
    ///   removes the IPv6 half where an earlier run attached it.
    @discardableResult
    public func attach(overlayIfindex: Int32, underlayIfindex: Int32, mode requested: DecapMode? = nil,
                       overlay6Ifindex: Int32? = nil) throws -> AttachmentState {
        let mode = requested ?? DecapMode.defaultMode(ifindex: underlayIfindex)
        logger.info("attaching BPF data path", metadata: [
            "overlay": "\(overlayIfindex)", "underlay": "\(underlayIfindex)", "decap": "\(mode)",
            "chosen": "\(requested == nil ? "by driver" : "by flag")", "overlay6": "\(overlay6Ifindex.map(String.init) ?? "-")",
        ])
        // The doors first: from the moment a program of ours carries VXLAN, strangers meet them.
        for program in FXDPProgram.allCases where program.netfilterHook != nil && (!program.isIPv6 || overlay6Ifindex != nil) {
            try ensureNetfilter(try self.program(program))
        }
        let encap = try program(.encap)
        try ensureTCX(encap, ifindex: overlayIfindex, direction: .egress, pin: FXDPSlots.overlayEgressPin)
        if let overlay6Ifindex {
            try ensureTCX(try program(.encap6), ifindex: overlay6Ifindex, direction: .egress, pin: FXDPSlots.overlay6EgressPin)
        } else {
            try FlannelBPF.detachIPv6(pinDirectory: pinDirectory)
        }
        switch mode {
        case .xdp:
            // The steer before XDP: a frame XDP strips must never find the hook without it.
            try ensureTCX(try program(.decapSteer), ifindex: underlayIfindex, direction: .ingress, pin: FXDPSlots.underlayIngressPin)
            try ensureXDP(try program(.decapXDP), ifindex: underlayIfindex)
        case .tc:
            try ensureTCX(try program(.decapCheck), ifindex: underlayIfindex, direction: .ingress, pin: FXDPSlots.underlayIngressPin)
            try FlannelBPF.detachOurXDP(ifindex: underlayIfindex)
        }
        return try FlannelBPF.attachmentState(overlayIfindex: overlayIfindex, underlayIfindex: underlayIfindex,
                                              pinDirectory: pinDirectory, overlay6Ifindex: overlay6Ifindex)
    }

    /// Removes the IPv6 half our pins in `pinDirectory` hold: the encap on flannel-v6.<VNI> and the
    /// IPv6 netfilter links (a node that no longer runs IPv6, or the cleanup).
    static func detachIPv6(pinDirectory: String) throws {
        let path = pinDirectory + "/" + FXDPSlots.overlay6EgressPin
        if let link = try? BPFLink.openPinned(path: path) { try link.detach() }
        if unlink(path) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(path))", errno: errno, detail: "cannot remove our flannel-v6 link's pin",
                                 hint: "run as root")
        }
        for program in FXDPProgram.allCases where program.isIPv6 && program.netfilterHook != nil {
            try unpinNetfilterLink(program, pinDirectory: pinDirectory)
        }
    }

    /// Where the link of netfilter program `program` is pinned.
    static func linkPinPath(_ program: FXDPProgram, pinDirectory: String) -> String {
        pinDirectory + "/" + linkPinPrefix + program.rawValue
    }
    static let linkPinPrefix = "link_"

    /// What of ours is attached (the XDP hook: whatever is there; check the id's name if it
    /// matters). With `pinDirectory`, also which programs our pinned netfilter links run.
    public static func attachmentState(overlayIfindex: Int32, underlayIfindex: Int32, pinDirectory: String? = nil,
                                       overlay6Ifindex: Int32? = nil) throws -> AttachmentState {
        var state = AttachmentState()
        state.encapProgramID = try ourTCXPrograms(ifindex: overlayIfindex, direction: .egress, pinDirectory: pinDirectory).first?.programID
        if let overlay6Ifindex {
            state.encap6ProgramID = try ourTCXPrograms(ifindex: overlay6Ifindex, direction: .egress, pinDirectory: pinDirectory).first?.programID
        }
        state.decapCheckProgramID = try ourTCXPrograms(ifindex: underlayIfindex, direction: .ingress,
                                                       pinDirectory: pinDirectory).first?.programID
        if let id = try XDP.attachedProgramID(ifindex: underlayIfindex, mode: .native) {
            state.xdpProgramID = id
            state.xdpMode = .native
        } else if let id = try XDP.attachedProgramID(ifindex: underlayIfindex, mode: .generic) {
            state.xdpProgramID = id
            state.xdpMode = .generic
        }
        if let pinDirectory {
            state.doorProgramID = try? BPFLink.openPinned(path: linkPinPath(.vxlanDoor, pinDirectory: pinDirectory)).info().programID
            state.podGuardProgramID = try? BPFLink.openPinned(path: linkPinPath(.podGuard, pinDirectory: pinDirectory)).info().programID
            state.door6ProgramID = try? BPFLink.openPinned(path: linkPinPath(.vxlanDoor6, pinDirectory: pinDirectory)).info().programID
            state.podGuard6ProgramID = try? BPFLink.openPinned(path: linkPinPath(.podGuard6, pinDirectory: pinDirectory)).info().programID
        }
        return state
    }

    /// Removes our programs (names fxdp_*) from both interfaces and our netfilter links (their pins
    /// in <bpffs>/flanneld-xdp); others' stay. With `removePins` also deletes <bpffs>/flanneld-xdp
    /// (the maps go once nothing holds them).
    public static func detachAll(overlayIfindex: Int32?, underlayIfindex: Int32?, removePins: Bool = false,
                                 bpffs: String, overlay6Ifindex: Int32? = nil) throws {
        let folder = bpffs + "/" + pinFolderName
        if let overlayIfindex {
            try detachOurTCX(ifindex: overlayIfindex, direction: .egress, pinDirectory: folder)
            try detachOurTC(ifindex: overlayIfindex, direction: .egress)
        }
        if let overlay6Ifindex { try detachOurTCX(ifindex: overlay6Ifindex, direction: .egress, pinDirectory: folder) }
        try detachIPv6(pinDirectory: folder)
        if let underlayIfindex {
            try detachOurTCX(ifindex: underlayIfindex, direction: .ingress, pinDirectory: folder)
            try detachOurTC(ifindex: underlayIfindex, direction: .ingress)
            try detachOurXDP(ifindex: underlayIfindex)
        }
        try detachNetfilterLinks(bpffs: bpffs)
        if removePins { try FlannelBPF.removePins(bpffs: bpffs) }
    }

    /// Unpins our netfilter links: each is released (detached) with its pin, since this process
    /// holds no fd of them. Needs no BPF capability, only write access to the pin folder, so the
    /// userspace fallback can drop a door a previous BPF run left behind.
    public static func detachNetfilterLinks(bpffs: String) throws {
        let folder = bpffs + "/" + pinFolderName
        for program in FXDPProgram.allCases where program.netfilterHook != nil {
            try unpinNetfilterLink(program, pinDirectory: folder)
        }
    }

    /// Unpins the link of netfilter program `program` (releasing it: nothing else holds it).
    static func unpinNetfilterLink(_ program: FXDPProgram, pinDirectory: String) throws {
        let path = linkPinPath(program, pinDirectory: pinDirectory)
        if unlink(path) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(path))", errno: errno, detail: "cannot remove our netfilter link",
                                 hint: "run as root")
        }
    }

    /// Programs we attach are also pinned as `<pin folder>/prog_<name>`: opening a pin needs no
    /// CAP_SYS_ADMIN, unlike looking a program up by id, so a restart under a capability bounding
    /// set of CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON still recognises what it attached before.
    static let programPinPrefix = "prog_"

    /// The info of attached program `id`: by id, else (without CAP_SYS_ADMIN) from our program pins.
    static func programInfo(_ id: UInt32, pinDirectory: String?) throws -> BPFProgramInfo {
        do {
            return try BPFProgramInfo.forID(id)
        } catch {
            guard let pinDirectory else { throw error }
            for program in FXDPProgram.allCases {
                let path = pinDirectory + "/" + programPinPrefix + program.rawValue
                if let info = try? BPFProgramInfo.forPinned(path: path), info.id == id { return info }
            }
            throw error
        }
    }

    static func isOurs(_ id: UInt32, pinDirectory: String? = nil) -> Bool {
        guard let info = try? programInfo(id, pinDirectory: pinDirectory) else { return false }
        return info.name.hasPrefix(programPrefix)
    }

    /// Same code (tag) and same maps: the attached program behaves exactly like `program`.
    /// `ourMapIDs`: the ids of our pinned maps, when known (no lookups by id needed then).
    static func isSame(attachedID: UInt32, as program: BPFProgram, pinDirectory: String? = nil,
                       ourMapIDs: Set<UInt32>? = nil) throws -> Bool {
        let attached = try programInfo(attachedID, pinDirectory: pinDirectory)
        let wanted = try program.info()
        return attached.name.hasPrefix(programPrefix) && attached.tag == wanted.tag
            && ourMaps(attached.mapIDs, known: ourMapIDs) == ourMaps(wanted.mapIDs, known: ourMapIDs)
    }

    /// The ids of the pinned fxdp_* maps among `ids` (libbpf's internal maps, like .rodata, are
    /// per load and say nothing about behaviour once their content is the same code's).
    static func ourMaps(_ ids: [UInt32], known: Set<UInt32>? = nil) -> [UInt32] {
        if let known { return ids.filter(known.contains).sorted() }
        return ids.filter { (try? BPFMapInfo.forID($0).name.hasPrefix(programPrefix)) == true }.sorted()
    }

    /// Ids of this object's maps (the pinned ones).
    var ourMapIDs: Set<UInt32> {
        [peers.info().id, nodes.info().id, config.info().id, counterMap.info().id, strangers.info().id, local.info().id,
         peers6.info().id, nodes6.info().id, config6.info().id]
    }

    /// Pins `program` as the one now attached (replacing an older pin of the same name).
    func pinAttached(_ program: BPFProgram) {
        let path = pinDirectory + "/" + FlannelBPF.programPinPrefix + program.name
        unlink(path)
        do {
            try program.pin(at: path)
        } catch {
            logger.warning("could not pin the attached program (a restart without CAP_SYS_ADMIN will not recognise it): \(error)")
        }
    }

    /// Our programs on a tcx hook (names fxdp_*), in run order.
    static func ourTCXPrograms(ifindex: Int32, direction: TCDirection, pinDirectory: String?) throws -> [TCXAttachment] {
        try TCX.attached(ifindex: ifindex, direction: direction).filter { isOurs($0.programID, pinDirectory: pinDirectory) }
    }

    /// Makes `program` run on `direction` of `ifindex` through our link pinned as `pin`: kept when
    /// it already does (same code, same maps), swapped in atomically when the link runs another
    /// program of ours, attached (and pinned) when there is none. Returns true when it changed
    /// anything. A cls_bpf filter of ours an earlier version left in its slot goes afterwards.
    @discardableResult
    private func ensureTCX(_ program: BPFProgram, ifindex: Int32, direction: TCDirection, pin: String) throws -> Bool {
        let path = pinDirectory + "/" + pin
        let hook = "tcx \(direction), ifindex \(ifindex)"
        let onHook = try TCX.attached(ifindex: ifindex, direction: direction)
        if let link = try? BPFLink.openPinned(path: path), let info = try? link.info(),
           info.tcxIfindex == ifindex, info.tcxDirection == direction, onHook.contains(where: { $0.linkID == info.id }) {
            if try FlannelBPF.isSame(attachedID: info.programID, as: program, pinDirectory: pinDirectory, ourMapIDs: ourMapIDs) {
                logger.debug("kept attached program", metadata: ["program": "\(program.name)", "id": "\(info.programID)"])
                try FlannelBPF.detachOurTC(ifindex: ifindex, direction: direction)
                return false
            }
            do {
                try link.update(to: program)
            } catch {
                throw DataplaneError(operation: "attach(\(program.name), \(hook))", errno: error.errno,
                                     detail: "swapping the program of our link \(info.id) failed: \(error)",
                                     hint: "run as root; the pinned link \(path) may be another version's")
            }
            pinAttached(program)
            logger.info("replaced", metadata: ["program": "\(program.name)", "link": "\(info.id)", "hook": "\(hook)"])
            try FlannelBPF.detachOurTC(ifindex: ifindex, direction: direction)
            return true
        }
        // No link of ours there. A program of ours held by someone else's link: another set of our
        // programs (another --bpffs) would run twice over the packets and disagree on the peers.
        if let other = onHook.first(where: { FlannelBPF.isOurs($0.programID, pinDirectory: pinDirectory) && $0.linkID != 0 }) {
            throw DataplaneError(operation: "attach(\(program.name), \(hook))", errno: EBUSY,
                                 detail: "link \(other.linkID) runs one of our programs (id \(other.programID)) there, and no pin in \(pinDirectory) holds it",
                                 hint: "is a flanneld-xdp with another --bpffs running here? Stop it, or remove what it left with `flanneld-xdp cleanup --bpffs <its folder>`")
        }
        let link = try BPFLink.attachTCX(program, ifindex: ifindex, direction: direction)
        if unlink(path) != 0 && errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(path))", errno: errno, detail: "cannot replace a stale link pin", hint: "run as root")
        }
        try link.pin(at: path)
        pinAttached(program)
        logger.info("attached", metadata: ["program": "\(program.name)", "ifindex": "\(ifindex)", "hook": "tcx \(direction)"])
        try FlannelBPF.detachOurTC(ifindex: ifindex, direction: direction)
        return true
    }

    /// Attaches the fast path's encap on the ingress of pod veth `portIfindex` (the same program
    /// already there is kept). Returns true when it changed anything.
    @discardableResult
    public func attachFastEncap(portIfindex: Int32) throws -> Bool {
        try ensureTCX(try program(.fastEncap), ifindex: portIfindex, direction: .ingress, pin: FXDPSlots.podPin(portIfindex))
    }

    /// Detaches the links our pins in `pinDirectory` hold on `direction` of `ifindex`, and unpins them.
    static func detachOurTCX(ifindex: Int32, direction: TCDirection, pinDirectory: String) throws {
        for name in try pinNames(in: pinDirectory) where name.hasPrefix("tcx_") {
            let path = pinDirectory + "/" + name
            guard let link = try? BPFLink.openPinned(path: path), let info = try? link.info(), info.tcxIfindex == ifindex,
                  info.tcxDirection == direction else { continue }
            try link.detach()
            unlink(path)
        }
        // A tcx link lives only while a pin or an fd holds it: one of ours not pinned here belongs
        // to another instance (another --bpffs) and stays.
    }

    /// Removes the fast path's encap from pod veth `portIfindex`.
    public func detachFastEncap(portIfindex: Int32) throws {
        try FlannelBPF.detachOurTCX(ifindex: portIfindex, direction: .ingress, pinDirectory: pinDirectory)
    }

    /// The interfaces of the calling thread's namespace whose tcx ingress runs fxdp_fast_encap.
    public static func fastEncapInterfaces(pinDirectory: String? = nil) throws -> [(index: Int32, name: String)] {
        var found: [(index: Int32, name: String)] = []
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var entry = list
        while entry.pointee.if_index != 0 {
            let index = Int32(bitPattern: entry.pointee.if_index)
            let programs = (try? TCX.attached(ifindex: index, direction: .ingress)) ?? []
            if programs.contains(where: { (try? programInfo($0.programID, pinDirectory: pinDirectory).name) == FXDPProgram.fastEncap.rawValue }) {
                found.append((index, String(cString: entry.pointee.if_name)))
            }
            entry += 1
        }
        return found
    }

    /// Removes fxdp_fast_encap from every interface of the calling thread's namespace, and the
    /// pins of the links that held it.
    public func detachFastEncapEverywhere() throws {
        for (index, _) in try FlannelBPF.fastEncapInterfaces(pinDirectory: pinDirectory) {
            try detachFastEncap(portIfindex: index)
        }
        for name in try FlannelBPF.pinNames(in: pinDirectory) where name.hasPrefix(FXDPSlots.podPinPrefix) {
            let path = pinDirectory + "/" + name
            try? BPFLink.openPinned(path: path).detach()
            unlink(path)
        }
    }

    /// Links `program` to its netfilter hook, pinned, unless our pinned link already runs the same
    /// program. A different program gets a new link first, then the pin moves to it, and the old
    /// link goes with its pin: the hook is never without one of ours.
    private func ensureNetfilter(_ program: BPFProgram) throws {
        guard let which = FXDPProgram(rawValue: program.name), let hook = which.netfilterHook else { return }
        let path = FlannelBPF.linkPinPath(which, pinDirectory: pinDirectory)
        let existing = try? BPFLink.openPinned(path: path).info()
        if let existing,
           (try? FlannelBPF.isSame(attachedID: existing.programID, as: program, pinDirectory: pinDirectory, ourMapIDs: ourMapIDs)) == true {
            logger.debug("kept netfilter link", metadata: ["program": "\(program.name)", "link": "\(existing.id)"])
            return
        }
        // The new link holds the hook through our fd while the pin moves over to it. The kernel
        // refuses two BPF hooks at one priority, so a replacement takes the other of our two.
        let priority = existing?.netfilterPriority == FXDPSlots.netfilterPriority
            ? FXDPSlots.netfilterPriority - 1 : FXDPSlots.netfilterPriority
        let link: BPFLink
        do {
            link = try BPFLink.attachNetfilter(program, family: which.netfilterFamily, hook: hook, priority: priority)
        } catch {
            guard error.errno == EBUSY else { throw error }
            throw DataplaneError(operation: "attach(\(program.name), netfilter \(which.netfilterFamily) \(hook) priority \(priority))", errno: EBUSY,
                                 detail: "another BPF netfilter program holds that priority in this network namespace, and no link of ours is pinned in \(pinDirectory)",
                                 hint: "is a flanneld-xdp with another --bpffs (or another agent) running here? Stop it, or remove what it left with `flanneld-xdp cleanup --bpffs <its folder>`")
        }
        if existing != nil, unlink(path) != 0, errno != ENOENT {
            throw DataplaneError(operation: "unlink(\(path))", errno: errno, detail: "cannot replace our netfilter link's pin",
                                 hint: "run as root")
        }
        try link.pin(at: path)
        pinAttached(program)
        logger.info(existing == nil ? "attached" : "replaced",
                    metadata: ["program": "\(program.name)", "hook": "netfilter \(which.netfilterFamily) \(hook)"])
    }

    private func ensureXDP(_ program: BPFProgram, ifindex: Int32) throws {
        for mode in [XDPMode.native, .generic] {
            guard let id = try XDP.attachedProgramID(ifindex: ifindex, mode: mode) else { continue }
            if try FlannelBPF.isSame(attachedID: id, as: program, pinDirectory: pinDirectory, ourMapIDs: ourMapIDs) {
                logger.debug("kept attached program", metadata: ["program": "\(program.name)", "id": "\(id)"])
                return
            }
            guard FlannelBPF.isOurs(id, pinDirectory: pinDirectory) else {
                throw DataplaneError(operation: "attach(\(program.name), ifindex \(ifindex) xdp)", errno: EEXIST,
                                     detail: "XDP program id \(id) (\(mode)) on the underlay is not ours",
                                     hint: "another XDP program owns this interface; remove it (ip link set dev … xdp off) or use --decap-mode=kernel")
            }
            try XDP.attach(program, ifindex: ifindex, mode: mode, replacing: id)
            pinAttached(program)
            logger.info("replaced", metadata: ["program": "\(program.name)", "old id": "\(id)", "hook": "xdp \(mode)"])
            return
        }
        do {
            try XDP.attach(program, ifindex: ifindex, mode: .native, replacing: nil)
        } catch {
            // No native XDP in this driver: generic still works (slower; the default avoids it).
            guard error.errno == EOPNOTSUPP || error.errno == EINVAL else { throw error }
            logger.warning("no native XDP on this interface: using generic XDP (slower; consider --dataplane=tc)",
                           metadata: ["ifindex": "\(ifindex)"])
            try XDP.attach(program, ifindex: ifindex, mode: .generic, replacing: nil)
        }
        pinAttached(program)
    }

    static func detachOurTC(ifindex: Int32, direction: TCDirection) throws {
        guard let id = try TC.attachedProgramID(ifindex: ifindex, direction: direction,
                                                handle: FXDPSlots.tcHandle, priority: FXDPSlots.tcPriority),
              isOurs(id) else { return }
        try TC.detach(ifindex: ifindex, direction: direction, handle: FXDPSlots.tcHandle,
                      priority: FXDPSlots.tcPriority, expectedProgramID: id)
    }

    static func detachOurXDP(ifindex: Int32) throws {
        for mode in [XDPMode.native, .generic] {
            if let id = try XDP.attachedProgramID(ifindex: ifindex, mode: mode), isOurs(id) {
                try XDP.detach(ifindex: ifindex, mode: mode, expectedProgramID: id)
            }
        }
    }
}
