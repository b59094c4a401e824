// Loader-level behaviour of the data path: attach in a namespace, restart semantics (same program
// → same ids; changed program → atomic replace), decap mode switches, pinned maps surviving a
// reopen, and detaching only what is ours while a foreign program's filter stays.

import BPFDataplane
@testable import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestSupport
import TestTraits
import Testing

/// A namespace with an underlay veth and flannel.1 as flanneld would create it.
final class AttachLab: @unchecked Sendable {
    let tag: String
    let ns: TestNamespace
    let bpffs: PrivateBPFFS
    let underlay: Int32, overlay: Int32
    let config: NodeConfig

    init() throws {
        let tag = Names.unique()
        let lab = try makeNamespaceAndBPFFS(tag) { ns, _ in
            try ns.sh(["ip", "link", "add", "\(tag)x", "type", "veth", "peer", "name", "\(tag)y"])
            try ns.sh(["ip", "addr", "add", "192.168.62.2/24", "dev", "\(tag)x"])
            try ns.sh(["ip", "link", "set", "\(tag)x", "up"])
            try ns.sh(["ip", "link", "set", "\(tag)y", "up"])
            try ns.sh(["ip", "link", "add", "flannel.1", "mtu", "1450", "type", "vxlan", "id", "1", "local", "192.168.62.2",
                       "dev", "\(tag)x", "dstport", "8472", "nolearning"])
            try ns.sh(["ip", "link", "set", "flannel.1", "up"])
            let underlay = try ns.ifindex("\(tag)x")
            let overlay = try ns.ifindex("flannel.1")
            return (underlay, overlay, NodeConfig(nodeIP: IPv4Address(192, 168, 62, 2), vtepMAC: try ns.mac("flannel.1"), underlayIfindex: underlay,
                                                  underlayMAC: try ns.mac("\(tag)x"), overlayIfindex: overlay, overlayMTU: 1450))
        }
        self.tag = tag
        (ns, bpffs) = (lab.ns, lab.bpffs)
        (underlay, overlay, config) = lab.made
    }

    func close() {
        bpffs.close()
        ns.close()
    }

    func attach(_ bpf: FlannelBPF, _ mode: DecapMode?) throws -> AttachmentState {
        try ns.run { try bpf.attach(overlayIfindex: overlay, underlayIfindex: underlay, mode: mode) }
    }

    func state() throws -> AttachmentState {
        try ns.run {
            try FlannelBPF.attachmentState(overlayIfindex: overlay, underlayIfindex: underlay,
                                           pinDirectory: bpffs.path + "/" + FlannelBPF.pinFolderName)
        }
    }

    /// The pinned netfilter link of `program`: which program it runs, at which hook and priority.
    func link(_ program: FXDPProgram) throws -> BPFLinkInfo {
        try BPFLink.openPinned(path: bpffs.path + "/" + FlannelBPF.pinFolderName + "/link_" + program.rawValue).info()
    }
}

/// A two-instruction program that is not ours ("foreign"): returns `verdict`.
func loadForeignProgram(type: bpf_prog_type, verdict: UInt32) throws -> (BPFProgram, Int32) {
    let insns: [UInt64] = [UInt64(verdict) << 32 | 0xb7, 0x95] // r0 = verdict; exit
    let fd = insns.withUnsafeBytes { raw in
        bpf_prog_load(type, "foreign", "GPL", raw.baseAddress!.assumingMemoryBound(to: bpf_insn.self), 2, nil)
    }
    guard fd >= 0 else { throw DataplaneError(operation: "bpf_prog_load(foreign)", errno: -fd, detail: "", hint: "") }
    return (BPFProgram(fd: fd, name: "foreign"), fd)
}

@Suite(.needsRoot, .ownThreads)
struct AttachTests {
    @Test func restartKeepsProgramsAndMapsAndReplacesChangedOnes() throws {
        let lab = try AttachLab()
        defer { lab.close() }
        let peer = Peer(subnet: IPv4Subnet(cidr: "10.5.7.0/24")!, publicIP: IPv4Address(192, 168, 62, 7),
                        vtepMAC: MACAddress("02:00:00:00:07:07")!)

        let first = try FlannelBPF(bpffs: lab.bpffs.path)
        try first.writeConfig(lab.config)
        try first.peerTable().upsert(peer)
        let s1 = try lab.attach(first, nil) // by driver: veth → kernel decap behind the TC check
        #expect(s1.encapProgramID != nil && s1.decapCheckProgramID != nil && s1.xdpProgramID == nil)
        #expect(s1.decapMode == .tc)
        // The netfilter programs, linked to their hooks by pinned links.
        #expect(s1.doorProgramID == (try first.program(.vxlanDoor).info().id))
        #expect(s1.podGuardProgramID == (try first.program(.podGuard).info().id))
        let door1 = try lab.link(.vxlanDoor), guard1 = try lab.link(.podGuard)
        #expect(door1.type == BPFLink.netfilterLinkType && door1.netfilterHook == NetfilterHook.localIn.rawValue)
        #expect(guard1.netfilterHook == NetfilterHook.forward.rawValue)
        #expect(door1.netfilterPriority == FXDPSlots.netfilterPriority)

        // "Restart": a new object on the same pins reuses the maps and leaves the programs alone.
        let second = try FlannelBPF(bpffs: lab.bpffs.path)
        #expect(try second.readConfig() == lab.config)
        #expect(try second.peerTable().currentPeers() == [peer])
        #expect(try second.peerTable().acceptedNodes() == [peer.publicIP: 1])
        let s2 = try lab.attach(second, .tc)
        #expect(s2 == s1, "same tag and maps: ids unchanged")

        #expect(try lab.link(.vxlanDoor) == door1, "the same netfilter link, untouched")

        // Switch to XDP decap: the steer takes the check's place on the underlay's link, XDP comes,
        // encap stays.
        let s3 = try lab.attach(second, .xdp)
        #expect(s3.encapProgramID == s1.encapProgramID && s3.xdpProgramID != nil)
        #expect(s3.decapCheckProgramID != nil && s3.decapCheckProgramID != s1.decapCheckProgramID)
        #expect(s3.xdpMode == .native, "veth has native XDP")
        #expect(try lab.attach(second, .xdp) == s3)

        // A changed program (another build over the same pinned maps, as `--bpf-object` stages an
        // upgrade) replaces ours in place.
        let objects = "/tmp/\(lab.tag)-objects"
        try sh(["mkdir", "-p", objects])
        defer { _ = try? sh(["rm", "-rf", objects]) }
        try BPFVariantObject.compile(variant: 5, to: objects + "/v5.o")
        let changed = try FlannelBPF(bpffs: lab.bpffs.path, object: .file(objects + "/v5.o"))
        let s4 = try lab.attach(changed, .xdp)
        #expect(s4.encapProgramID != s3.encapProgramID && s4.xdpProgramID != s3.xdpProgramID)
        #expect(s4.encapProgramID == (try changed.program(.encap).info().id))
        #expect(s4.xdpProgramID == (try changed.program(.decapXDP).info().id))
        #expect(s4.decapCheckProgramID == (try changed.program(.decapSteer).info().id))
        // The netfilter hooks get new links first, at the other priority (one BPF hook per
        // priority), and the pins move over: never a moment without a door.
        let door4 = try lab.link(.vxlanDoor)
        let changedDoor = try changed.program(.vxlanDoor).info().id, changedGuard = try changed.program(.podGuard).info().id
        #expect(door4.id != door1.id && door4.programID == changedDoor)
        #expect(door4.netfilterPriority == FXDPSlots.netfilterPriority - 1)
        #expect(s4.doorProgramID == door4.programID && s4.podGuardProgramID == changedGuard)

        // Our pinned link running another program of ours (different tag) gets ours back, in place;
        // the same link throughout, so the hook was never without one.
        let pinDir = lab.bpffs.path + "/" + FlannelBPF.pinFolderName
        let encapLink = try BPFLink.openPinned(path: pinDir + "/" + FXDPSlots.overlayEgressPin)
        let encapLinkID = try encapLink.info().id
        try encapLink.update(to: try changed.program(.decapCheck))
        #expect(try lab.state().encapProgramID == (try changed.program(.decapCheck).info().id))
        // And a cls_bpf filter of ours in the slot versions before tcx used (an upgrade from one).
        try lab.ns.run {
            try TC.attach(try changed.program(.decapCheck), ifindex: lab.underlay, direction: .ingress,
                          handle: FXDPSlots.tcHandle, priority: FXDPSlots.tcPriority)
        }
        let s5 = try lab.attach(changed, .tc)
        #expect(s5.encapProgramID == (try changed.program(.encap).info().id))
        #expect(try encapLink.info().id == encapLinkID && encapLink.info().programID == s5.encapProgramID)
        #expect(s5.decapMode == .tc && s5.xdpProgramID == nil)
        #expect(try lab.ns.run { try TC.attachedProgramID(ifindex: lab.underlay, direction: .ingress, handle: FXDPSlots.tcHandle,
                                                          priority: FXDPSlots.tcPriority) } == nil,
                "the old cls_bpf filter of ours goes once the link runs")

        // Back on the original build: the maps still hold the peer and config; its programs
        // replace the changed ones, the netfilter links back at the first priority.
        #expect(try first.peerTable().currentPeers() == [peer])
        let s6 = try lab.attach(first, .tc)
        #expect(s6.doorProgramID == (try first.program(.vxlanDoor).info().id))
        #expect(try lab.link(.vxlanDoor).netfilterPriority == FXDPSlots.netfilterPriority)
    }

    @Test func aSecondSetOfOurProgramsInTheNamespaceIsRefusedNamingTheHook() throws {
        // Another pin folder (a daemon started with another --bpffs) cannot put a second door in
        // front of the first: the kernel allows one BPF hook per priority, and two sets of maps
        // would disagree about the peers.
        let lab = try AttachLab()
        defer { lab.close() }
        let first = try FlannelBPF(bpffs: lab.bpffs.path)
        try first.writeConfig(lab.config)
        _ = try lab.attach(first, .tc)
        let otherFS = try PrivateBPFFS(Names.unique())
        defer { otherFS.close() }
        let second = try FlannelBPF(bpffs: otherFS.path)
        #expect {
            try lab.attach(second, .tc)
        } throws: { error in
            let text = "\(error)"
            return text.contains("netfilter ipv4 input") && text.contains("--bpffs") && text.contains("cleanup")
        }
    }

    @Test func pinsOfAnEarlierABIAreRemovedAndOursKept() throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let bpf = try FlannelBPF(bpffs: fs.path)
        // What a version with another map layout left: maps whose names end in another _v<N>.
        for name in ["fxdp_peers_v1", "fxdp_config_v1"] {
            let fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, name, 4, 4, 1, nil)
            #expect(fd >= 0)
            #expect(bpf_obj_pin(fd, bpf.pinDirectory + "/" + name) == 0)
            close(fd)
        }
        #expect(try bpf.removeOtherABIPins().sorted() == ["fxdp_config_v1", "fxdp_peers_v1"])
        for name in FlannelBPF.pinnedMapNames {
            #expect(access(bpf.pinDirectory + "/" + name, F_OK) == 0, "\(name) was removed")
        }
        #expect(try bpf.removeOtherABIPins().isEmpty)
    }

    @Test func netfilterLinksGoWithDetachAndCanBeRemovedWithoutBPF() throws {
        let lab = try AttachLab()
        defer { lab.close() }
        let bpf = try FlannelBPF(bpffs: lab.bpffs.path)
        try bpf.writeConfig(lab.config)
        let s = try lab.attach(bpf, .tc)
        #expect(s.doorProgramID != nil && s.podGuardProgramID != nil)
        // Only the link pins go (what the userspace fallback does when BPF cannot load any more).
        try FlannelBPF.detachNetfilterLinks(bpffs: lab.bpffs.path)
        let after = try lab.state()
        #expect(after.doorProgramID == nil && after.podGuardProgramID == nil)
        #expect(after.encapProgramID == s.encapProgramID, "the TC programs stay")
        // Attach puts them back; detachAll takes them with the rest.
        #expect(try lab.attach(bpf, .tc).doorProgramID != nil)
        try lab.ns.run { try FlannelBPF.detachAll(overlayIfindex: lab.overlay, underlayIfindex: lab.underlay, bpffs: lab.bpffs.path) }
        #expect(try lab.state() == AttachmentState())
    }

    @Test func detachRemovesOnlyOursAndRefusesForeignSlots() throws {
        let lab = try AttachLab()
        defer { lab.close() }
        let bpf = try FlannelBPF(bpffs: lab.bpffs.path)
        try bpf.writeConfig(lab.config)
        _ = try lab.attach(bpf, .tc)

        let (foreignTC, tcFD) = try loadForeignProgram(type: BPF_PROG_TYPE_SCHED_CLS, verdict: 0)
        defer { close(tcFD) }
        let (foreignXDP, xdpFD) = try loadForeignProgram(type: BPF_PROG_TYPE_XDP, verdict: 2)
        defer { close(xdpFD) }
        let foreignID = try foreignTC.info().id
        // A foreign filter in another slot of the same hooks.
        try lab.ns.run {
            try TC.attach(foreignTC, ifindex: lab.overlay, direction: .egress, handle: 1, priority: 1)
            try TC.attach(foreignTC, ifindex: lab.underlay, direction: .ingress, handle: 1, priority: 1)
        }

        try lab.ns.run { try FlannelBPF.detachAll(overlayIfindex: lab.overlay, underlayIfindex: lab.underlay, bpffs: lab.bpffs.path) }
        let after = try lab.state()
        #expect(after.encapProgramID == nil && after.decapCheckProgramID == nil && after.xdpProgramID == nil)
        let foreignStill = try lab.ns.run {
            (try TC.attachedProgramID(ifindex: lab.overlay, direction: .egress, handle: 1, priority: 1),
             try TC.attachedProgramID(ifindex: lab.underlay, direction: .ingress, handle: 1, priority: 1))
        }
        #expect(foreignStill.0 == foreignID && foreignStill.1 == foreignID)

        // A foreign XDP program on the underlay: attaching XDP decap refuses, detach leaves it.
        try lab.ns.run { try XDP.attach(foreignXDP, ifindex: lab.underlay, mode: .native, replacing: nil) }
        #expect(throws: DataplaneError.self) { try lab.attach(bpf, .xdp) }
        try lab.ns.run { try FlannelBPF.detachAll(overlayIfindex: lab.overlay, underlayIfindex: lab.underlay, bpffs: lab.bpffs.path) }
        #expect(try lab.state().xdpProgramID == (try foreignXDP.info().id))

        // A foreign tcx program on the same hooks: ours come after it; detach leaves it.
        try lab.ns.run { try XDP.detach(ifindex: lab.underlay, mode: .native, expectedProgramID: try foreignXDP.info().id) }
        // (Links are pinned outside our folder: they stay attached without an fd of the test's.)
        let foreignLinkID = try lab.ns.run { () throws -> UInt32 in
            let link = try BPFLink.attachTCX(foreignTC, ifindex: lab.underlay, direction: .ingress)
            try link.pin(at: lab.bpffs.path + "/foreign_link")
            return try link.info().id
        }
        let s7 = try lab.attach(bpf, .tc)
        let order = try lab.ns.run { try TCX.attached(ifindex: lab.underlay, direction: .ingress) }
        #expect(order.map(\.programID) == [foreignID, s7.decapCheckProgramID!], "\(order)")
        // A foreign program in the cls_bpf slot earlier versions used: not ours, never touched.
        try lab.ns.run {
            try TC.attach(foreignTC, ifindex: lab.underlay, direction: .ingress, handle: FXDPSlots.tcHandle, priority: FXDPSlots.tcPriority)
        }
        _ = try lab.attach(bpf, .tc)
        try lab.ns.run { try FlannelBPF.detachAll(overlayIfindex: lab.overlay, underlayIfindex: lab.underlay, bpffs: lab.bpffs.path) }
        #expect(try lab.state().decapCheckProgramID == nil)
        #expect(try lab.ns.run { try TCX.attached(ifindex: lab.underlay, direction: .ingress) }
                == [TCXAttachment(programID: foreignID, linkID: foreignLinkID)])
        #expect(try lab.ns.run { try TC.attachedProgramID(ifindex: lab.underlay, direction: .ingress, handle: FXDPSlots.tcHandle,
                                                          priority: FXDPSlots.tcPriority) } == foreignID)

        // One of our programs on a hook through a link our pins do not hold (another --bpffs):
        // refused, naming the link.
        let other = try FlannelBPF(bpffs: lab.bpffs.path)
        let strayID = try lab.ns.run { () throws -> UInt32 in
            let link = try BPFLink.attachTCX(try other.program(.encap), ifindex: lab.overlay, direction: .egress)
            try link.pin(at: lab.bpffs.path + "/stray_link")
            return try link.info().id
        }
        let refused = #expect(throws: DataplaneError.self) { try lab.attach(bpf, .tc) }
        #expect("\(refused.map { "\($0)" } ?? "")".contains("link \(strayID)"), "\(String(describing: refused))")
    }

    @Test func programsOutliveTheObjectAndPinsCanBeRemoved() throws {
        let lab = try AttachLab()
        defer { lab.close() }
        var ids: AttachmentState
        do {
            let bpf = try FlannelBPF(bpffs: lab.bpffs.path)
            try bpf.writeConfig(lab.config)
            ids = try lab.attach(bpf, .xdp)
        }
        // The object (and its fds) are gone; the attachments are not.
        #expect(try lab.state() == ids)
        let pinDir = lab.bpffs.path + "/" + FlannelBPF.pinFolderName
        #expect(access(pinDir + "/" + FXDP_MAP_PEERS, F_OK) == 0)
        // Another process reads the pinned config, with BTF field names (what an operator sees).
        let dump = try sh(["bpftool", "map", "dump", "pinned", pinDir + "/" + FXDP_MAP_CONFIG])
        #expect(dump.contains("\"node_ip\": [192,168,62,2"), "\(dump)")
        #expect(dump.contains("\"vtep_mac\"") && dump.contains("\"udp_port\": 8472") && dump.contains("\"vni\": 1"), "\(dump)")
        try lab.ns.run {
            try FlannelBPF.detachAll(overlayIfindex: lab.overlay, underlayIfindex: lab.underlay, removePins: true, bpffs: lab.bpffs.path)
        }
        #expect(try lab.state() == AttachmentState())
        #expect(access(pinDir, F_OK) != 0)
        // A new start gets fresh, empty maps.
        let fresh = try FlannelBPF(bpffs: lab.bpffs.path)
        #expect(try fresh.readConfig() == nil)
        #expect(try fresh.peerTable().currentPeers().isEmpty)
    }

    @Test func peerTableKeepsNodeCountsConsistent() throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let bpf = try FlannelBPF(bpffs: fs.path)
        let table = try bpf.peerTable()
        let nodeA = IPv4Address(192, 168, 1, 1), nodeB = IPv4Address(192, 168, 1, 2)
        let mac = MACAddress("02:00:00:00:00:0a")!
        let p1 = Peer(subnet: IPv4Subnet(cidr: "10.5.1.0/24")!, publicIP: nodeA, vtepMAC: mac)
        let p2 = Peer(subnet: IPv4Subnet(cidr: "10.5.2.0/24")!, publicIP: nodeA, vtepMAC: mac)
        try table.upsert(p1)
        try table.upsert(p2)
        try table.upsert(p2) // idempotent
        #expect(try table.acceptedNodes() == [nodeA: 2])
        var moved = p2
        moved.publicIP = nodeB
        try table.upsert(moved) // the subnet moves to another node
        #expect(try table.acceptedNodes() == [nodeA: 1, nodeB: 1])
        #expect(try table.currentPeers() == [p1, moved])
        try table.remove(p1)
        try table.remove(p1) // absent: not an error
        #expect(try table.acceptedNodes() == [nodeB: 1])
        #expect(throws: DataplaneError.self) {
            try table.upsert(Peer(subnet: IPv4Subnet(cidr: "10.5.3.0/24")!, publicIP: nodeA, vtepMAC: nil))
        }
        // Drift (someone deleted a node entry): repair restores it from the peers.
        var k = fxdp_node_key()
        k.node_ip = nodeB.tuple
        _ = try bpf.nodes.delete(k)
        var stray = fxdp_node_key()
        stray.node_ip = IPv4Address(192, 168, 1, 99).tuple
        try bpf.nodes.update(stray, fxdp_node_value(subnets: 5))
        #expect(try table.repairNodes() == 2)
        #expect(try table.acceptedNodes() == [nodeB: 1])
        try table.remove(moved)
        #expect(try table.currentPeers().isEmpty && table.acceptedNodes().isEmpty)
    }

    @Test func countersAreNamedAndResettable() throws {
        let fs = try PrivateBPFFS(Names.unique())
        defer { fs.close() }
        let bpf = try FlannelBPF(bpffs: fs.path)
        let counts = try bpf.counters()
        #expect(counts.count == FXDPCounter.allCases.count)
        #expect(counts.values.allSatisfy { $0 == FXDPCount() })
        try bpf.counterMap.update(FXDPCounter.decapDropNotPeer.rawValue, fxdp_count(packets: 3, bytes: 300))
        #expect(try bpf.counters()[.decapDropNotPeer] == FXDPCount(packets: 3 * UInt64(bpf.counterMap.cpuCount),
                                                                   bytes: 300 * UInt64(bpf.counterMap.cpuCount)))
        try bpf.resetCounters()
        #expect(try bpf.counters()[.decapDropNotPeer] == FXDPCount())
    }
}
