// ReferenceDatapath — an independent model of the BPF data path's verdicts, for differential fuzzing.
//
// Design: written from the verdict table (docs/BPF-DATAPATH.md, the table at the top of
// bpf/flanneld_xdp.bpf.c), not from the C code paths, and it never calls into BPF: given a node's
// configuration and one frame it says which counter code must move, which verdict comes back and
// which bytes must come out. The fuzzer runs the real programs through BPF_PROG_TEST_RUN and
// compares. Codes are the stable numbers of fxdp_shared.h (this module does not import the data
// path, on purpose). Where the real output carries values that are random or hashed (outer IPv4 id,
// UDP source port) the model gives the rule instead of the bytes.

import NetTypes

public struct ReferenceDatapath: Sendable {
    /// How the node's FIB answers for a peer's node IP (the test lab sets it up so).
    public enum Route: Sendable, Equatable {
        /// Neighbour known: outer destination MAC = this.
        case resolved(MACAddress)
        /// On a connected route, neighbour not resolved yet: left to the kernel vxlan device.
        case unresolved
        /// No route: the packet goes on to the kernel device.
        case unroutable

        /// The counter of the encap's pass when the route gives it no outer destination MAC.
        var encapPassCode: UInt32 { self == .unroutable ? Code.encapPassFIB : Code.encapPassNoNeigh }
    }

    /// One peer of the model, of either family: an entry of fxdp_peers (IPv4) or fxdp_peers6.
    public struct Peer<Address: IPAddressType>: Sendable {
        public var subnet: Address.Subnet
        public var nodeIP: Address
        public var vtepMAC: MACAddress
        public var route: Route
        /// The other address the peer sends from (its lease's SourceIP), if any.
        public var sourceIP: Address?
        public init(subnet: Address.Subnet, nodeIP: Address, vtepMAC: MACAddress, route: Route, sourceIP: Address? = nil) {
            self.subnet = subnet
            self.nodeIP = nodeIP
            self.vtepMAC = vtepMAC
            self.route = route
            self.sourceIP = sourceIP
        }
    }

    public typealias PeerEntry = Peer<IPv4Address>

    public var nodeIP: IPv4Address
    public var vtepMAC: MACAddress
    public var vni: UInt32
    public var udpPort: UInt16
    public var underlayMAC: MACAddress
    public var overlayMTU: Int
    public var peers: [PeerEntry]
    /// Outer TTL the encap writes (0: 64).
    public var outerTTL: UInt8
    /// The inner source must belong to the sending peer.
    public var innerSourceCheck: Bool
    /// The lease's PublicIP when it is another local address than `nodeIP`.
    public var publicIP: IPv4Address?
    /// The IPv6 half (flannel-v6.<VNI>) of a dual-stack node; nil: IPv6 passes as any non-IPv4 frame.
    public var ipv6: IPv6Half?

    public init(nodeIP: IPv4Address, vtepMAC: MACAddress, vni: UInt32, udpPort: UInt16, underlayMAC: MACAddress,
                overlayMTU: Int, peers: [PeerEntry], outerTTL: UInt8 = 0, innerSourceCheck: Bool = true,
                publicIP: IPv4Address? = nil, ipv6: IPv6Half? = nil) {
        self.publicIP = publicIP
        self.ipv6 = ipv6
        self.nodeIP = nodeIP
        self.vtepMAC = vtepMAC
        self.vni = vni
        self.udpPort = udpPort
        self.underlayMAC = underlayMAC
        self.overlayMTU = overlayMTU
        self.peers = peers
        self.outerTTL = outerTTL
        self.innerSourceCheck = innerSourceCheck
    }

    /// Stable counter codes (fxdp_shared.h).
    public enum Code {
        public static let encapOK: UInt32 = 0, encapPassNotIPv4: UInt32 = 1, encapPassNoPeer: UInt32 = 2
        public static let encapDropMalformed: UInt32 = 4, encapPassFIB: UInt32 = 6, encapPassTooBig: UInt32 = 7
        public static let encapPassNoNeigh: UInt32 = 10, encapOKNeigh: UInt32 = 8
        public static let decapOK: UInt32 = 16, decapCheckOK: UInt32 = 17, decapPassNotVXLAN: UInt32 = 18
        public static let decapDropNotPeer: UInt32 = 20, decapDropBadVNI: UInt32 = 21, decapDropMalformed: UInt32 = 22
        public static let decapDropFragment: UInt32 = 23, decapDropIPOptions: UInt32 = 24, decapDropInnerNotOurs: UInt32 = 25
        public static let decapPassFragment: UInt32 = 27, decapPassNotIPv4: UInt32 = 28, decapPassVLAN: UInt32 = 29
        public static let decapPassShort: UInt32 = 30, decapDropInnerNotIPv4: UInt32 = 31, decapPassOtherHost: UInt32 = 32
        public static let decapDropInnerSource: UInt32 = 33, decapDropLoop: UInt32 = 34, decapDropOuterCsum: UInt32 = 35
        public static let decapDropECN: UInt32 = 36, decapFragmentOK: UInt32 = 37
        public static let encapPassDisabled: UInt32 = 3
        public static let encap6OK: UInt32 = 11, encap6PassGSO: UInt32 = 12, encap6PassCsum: UInt32 = 13
        public static let encap6PassNotIPv6: UInt32 = 14, decap6OK: UInt32 = 15, decap6CheckOK: UInt32 = 39
        public static let decap6DropInnerNotIPv6: UInt32 = 41, decap6DropUDPZeroCsum: UInt32 = 42, decap6PassExtHeaders: UInt32 = 43
    }

    /// The 8 metadata bytes fxdp_decap_xdp leaves in front of a frame it decapsulated: the magic
    /// 0xf1a77e11 and the flags, little-endian u32s as the program stores them. Flag 1: the inner
    /// source lies in a subnet of the sending peer (looked up when the inner source check is on).
    /// Flag 2: the frame is IPv6 VXLAN, for flannel-v6.<VNI>.
    public static func xdpMetaBytes(sourceInSubnet: Bool, ipv6: Bool = false) -> [UInt8] {
        [0x11, 0x7e, 0xa7, 0xf1, (sourceInSubnet ? 1 : 0) | (ipv6 ? 2 : 0), 0, 0, 0]
    }

    /// Whether the inner source of a valid VXLAN frame lies in a subnet of the peer that sent it,
    /// as the classification records it (only when the inner source check asks for the lookup).
    public func sourceInSenderSubnet(_ f: [UInt8]) -> Bool {
        guard innerSourceCheck, f.count >= 84 else { return false }
        let source = IPv4Address(bytes: f[26..<30])
        guard let owner = peer(for: IPv4Address(bytes: f[76..<80])) else { return false }
        return owner.nodeIP == source || owner.sourceIP == source
    }

    /// What must come out of one run.
    public enum Output: Sendable, Equatable {
        /// Exactly the input.
        case unchanged
        /// Exactly these bytes.
        case exact([UInt8])
        /// VXLAN-encapsulated: `bytes` except the outer IPv4 id (18..<20) and checksum (24..<26),
        /// which must be a valid header checksum, and the UDP source port (34..<36), which must lie
        /// in 32768...60999.
        case encapsulated([UInt8])
        /// VXLAN over IPv6: `bytes` except the UDP source port (54..<56, in 32768...60999) and the
        /// UDP checksum (60..<62), which must be `Checksum.vxlan6UDP` of the frame.
        case encapsulated6([UInt8])
    }

    public struct Expectation: Sendable, CustomStringConvertible {
        public var code: UInt32
        public var verdict: String
        public var output: Output
        public var description: String { "code \(code) \(verdict) \(output == .unchanged ? "unchanged" : "rewritten")" }
    }

    // MARK: decap

    /// The classification both decap programs share: a drop or pass code, or `Code.decapOK` for
    /// valid VXLAN for us, `Code.decapFragmentOK` for a valid first fragment.
    public func classifyDecap(_ f: [UInt8]) -> UInt32 {
        guard f.count >= 14 else { return Code.decapPassShort }
        let type = f.be16(at: 12)
        if type == 0x8100 || type == 0x88A8 { return Code.decapPassVLAN }
        if type == 0x86DD, let ipv6 { return classifyDecap6(f, ipv6) }
        guard type == 0x0800 else { return Code.decapPassNotIPv4 }
        let ip = 14
        guard f.count >= ip + 20 else { return Code.decapDropMalformed }
        let ihl = Int(f[ip] & 0x0f)
        guard f[ip] >> 4 == 4, ihl >= 5, Int(f.be16(at: ip + 2)) >= ihl * 4, f.count >= ip + ihl * 4 else {
            return Code.decapDropMalformed
        }
        guard f[ip + 9] == 17 else { return Code.decapPassNotVXLAN }
        let fragmentField = f.be16(at: ip + 6)
        if fragmentField & 0x1fff != 0 { return Code.decapPassFragment }
        let udp = ip + ihl * 4
        guard f.count >= udp + 8 else { return Code.decapDropMalformed }
        guard f.be16(at: udp + 2) == udpPort else { return Code.decapPassNotVXLAN }
        let destination = IPv4Address(bytes: f[(ip + 16)..<(ip + 20)])
        guard destination == nodeIP || destination == publicIP else { return Code.decapPassOtherHost }
        let firstFragment = fragmentField & 0x2000 != 0
        let truncated = firstFragment ? Code.decapDropFragment : Code.decapDropMalformed
        guard ihl == 5 else { return Code.decapDropIPOptions }
        guard 14 + Int(f.be16(at: ip + 2)) <= f.count else { return Code.decapDropMalformed }
        guard Checksum.internet(f[ip..<(ip + 20)]) == 0 else { return Code.decapDropOuterCsum }
        let source = IPv4Address(bytes: f[(ip + 12)..<(ip + 16)])
        guard peers.contains(where: { $0.nodeIP == source || $0.sourceIP == source }) else { return Code.decapDropNotPeer }
        let vx = udp + 8
        guard f.count >= vx + 8 else { return truncated }
        guard f.be32(at: vx) == 0x0800_0000, f.be32(at: vx + 4) == vni << 8 else { return Code.decapDropBadVNI }
        let inner = vx + 8
        guard f.count >= inner + 14 else { return truncated }
        guard MACAddress(bytes: f[inner..<(inner + 6)]) == vtepMAC else { return Code.decapDropInnerNotOurs }
        guard MACAddress(bytes: f[(inner + 6)..<(inner + 12)]) != vtepMAC else { return Code.decapDropLoop }
        guard f.be16(at: inner + 12) == 0x0800 else { return Code.decapDropInnerNotIPv4 }
        let innerIP = inner + 14
        guard f.count >= innerIP + 20 else { return truncated }
        if f[ip + 1] & 0x3 == 0x3 && f[innerIP + 1] & 0x3 == 0 { return Code.decapDropECN }
        if innerSourceCheck {
            let innerSource = IPv4Address(bytes: f[(innerIP + 12)..<(innerIP + 16)])
            if innerSource != source {
                guard let owner = peer(for: innerSource), owner.nodeIP == source || owner.sourceIP == source else {
                    return Code.decapDropInnerSource
                }
            }
        }
        return firstFragment ? Code.decapFragmentOK : Code.decapOK
    }

    static let decapDrops: Set<UInt32> = [
        Code.decapDropNotPeer, Code.decapDropBadVNI, Code.decapDropMalformed, Code.decapDropFragment,
        Code.decapDropIPOptions, Code.decapDropInnerNotOurs, Code.decapDropInnerNotIPv4, Code.decapDropInnerSource,
        Code.decapDropLoop, Code.decapDropOuterCsum, Code.decapDropECN, Code.decap6DropInnerNotIPv6, Code.decap6DropUDPZeroCsum,
    ]

    /// fxdp_decap_xdp on the underlay (a driver with XDP metadata, as BPF_PROG_TEST_RUN and veth).
    public func decapXDP(_ f: [UInt8]) -> Expectation {
        let code = classifyDecap(f)
        if code == Code.decap6OK, let ipv6 { return stripped6(f, ipv6) }
        guard code == Code.decapOK else {
            return Expectation(code: code, verdict: ReferenceDatapath.decapDrops.contains(code) ? "XDP_DROP" : "XDP_PASS",
                               output: .unchanged)
        }
        // 50 bytes stripped; the mark for the steer in the metadata (the test run returns it in
        // front of the frame); the inner Ethernet header re-addressed to the underlay's MAC; an
        // outer CE copied into the ECT inner header.
        var inner = Array(f[50...])
        if f[15] & 0x3 == 0x3 && inner[15] & 0x3 != 0x3 {
            // An update of the one changed word (RFC 1624), as the kernel's IP_ECN_set_ce: a
            // checksum that was wrong stays wrong, for the stack to drop.
            let oldWord = inner.be16(at: 14)
            inner[15] |= 0x3
            let sum = UInt32(~inner.be16(at: 24)) + UInt32(~oldWord) + UInt32(inner.be16(at: 14))
            let check = ~UInt16(truncatingIfNeeded: (sum & 0xffff) + (sum >> 16) + (((sum & 0xffff) + (sum >> 16)) >> 16))
            inner[24] = UInt8(check >> 8)
            inner[25] = UInt8(check & 0xff)
        }
        return Expectation(code: Code.decapOK, verdict: "XDP_PASS",
                           output: .exact(ReferenceDatapath.xdpMetaBytes(sourceInSubnet: sourceInSenderSubnet(f))
                               + underlayMAC.bytes + inner.dropFirst(6)))
    }

    /// fxdp_decap_check on TC ingress (no offloaded VLAN tag in a test run).
    public func decapCheck(_ f: [UInt8]) -> Expectation {
        let code = classifyDecap(f)
        if code == Code.decapOK { return Expectation(code: Code.decapCheckOK, verdict: "TC_ACT_OK", output: .unchanged) }
        if code == Code.decap6OK { return Expectation(code: Code.decap6CheckOK, verdict: "TC_ACT_OK", output: .unchanged) }
        return Expectation(code: code, verdict: ReferenceDatapath.decapDrops.contains(code) ? "TC_ACT_SHOT" : "TC_ACT_OK",
                           output: .unchanged)
    }

    // MARK: encap

    /// The longest-prefix peer entry holding `address`.
    public func peer(for address: IPv4Address) -> PeerEntry? {
        peers.filter { $0.subnet.contains(address) }.max { $0.subnet.prefixLength < $1.subnet.prefixLength }
    }

    /// fxdp_encap on TC egress of flannel.<VNI>, for a frame whose skb protocol comes from its
    /// Ethernet type (as in a test run) and without GSO.
    public func encap(_ f: [UInt8]) -> Expectation {
        let pass = { (code: UInt32) in Expectation(code: code, verdict: "TC_ACT_OK", output: .unchanged) }
        guard f.count >= 14, f.be16(at: 12) == 0x0800 else { return pass(Code.encapPassNotIPv4) }
        let ip = 14
        let malformed = Expectation(code: Code.encapDropMalformed, verdict: "TC_ACT_SHOT", output: .unchanged)
        guard f.count >= ip + 20 else { return malformed }
        let ihl = Int(f[ip] & 0x0f)
        guard f[ip] >> 4 == 4, ihl >= 5, Int(f.be16(at: ip + 2)) >= ihl * 4, f.count >= ip + ihl * 4 else { return malformed }
        guard let peer = peer(for: IPv4Address(bytes: f[(ip + 16)..<(ip + 20)])) else { return pass(Code.encapPassNoPeer) }
        // The decision uses the frame length, not the IPv4 total length.
        let outerIPLength = f.count - 14 + 50
        guard outerIPLength <= 0xffff, overlayMTU == 0 || f.count - 14 <= overlayMTU else { return pass(Code.encapPassTooBig) }
        let outerDst: MACAddress
        var outerSrc = underlayMAC
        var code = Code.encapOK
        switch peer.route {
        case .unroutable: return pass(Code.encapPassFIB)
        case .unresolved:
            // Only a packet the covering route brought (inner destination = our VtepMAC) is taken:
            // bpf_redirect_neigh resolves the next hop and writes the outer Ethernet addresses,
            // left zero by the program.
            guard f.count >= 6, Array(f[0..<6]) == vtepMAC.bytes else { return pass(Code.encapPassNoNeigh) }
            outerDst = MACAddress(bytes: [0, 0, 0, 0, 0, 0])
            outerSrc = outerDst
            code = Code.encapOKNeigh
        case .resolved(let mac): outerDst = mac
        }
        var o = outerDst.bytes + outerSrc.bytes
        o.appendBE16(0x0800)
        let innerTOS = f[ip + 1] & 0x3
        o += [0x45, innerTOS == 0x3 ? 0x2 : innerTOS]
        o.appendBE16(UInt16(outerIPLength))
        o += [0, 0, 0, 0, outerTTL == 0 ? 64 : outerTTL, 17, 0, 0] // id (random), no DF, TTL, UDP, checksum (checked separately)
        o += nodeIP.bytes + peer.nodeIP.bytes
        o += [0, 0] // source port (flow hash)
        o.appendBE16(udpPort)
        o.appendBE16(UInt16(outerIPLength - 20))
        o += [0, 0] // UDP checksum 0
        o += [0x08, 0, 0, 0]
        o.appendBE32(vni << 8)
        o += peer.vtepMAC.bytes + vtepMAC.bytes
        o.appendBE16(0x0800)
        o += f[14...]
        return Expectation(code: code, verdict: "TC_ACT_REDIRECT", output: .encapsulated(o))
    }

    /// nil when `actual` is what `expected` allows, else what differs.
    public static func mismatch(_ expected: Output, input: [UInt8], actual: [UInt8]) -> String? {
        switch expected {
        case .unchanged:
            return actual == input ? nil : "output changed (\(actual.count) bytes)"
        case .exact(let bytes):
            return actual == bytes ? nil : "output differs: want \(Array(bytes.prefix(80)).hex) got \(Array(actual.prefix(80)).hex)"
        case .encapsulated(let bytes):
            guard actual.count == bytes.count else { return "encap length \(actual.count), want \(bytes.count)" }
            for i in 0..<bytes.count where !(18..<20).contains(i) && !(24..<26).contains(i) && !(34..<36).contains(i) {
                if actual[i] != bytes[i] { return "encap byte \(i): got \(actual[i]) want \(bytes[i]): \(Array(actual.prefix(80)).hex)" }
            }
            if Checksum.internet(actual[14..<34]) != 0 { return "outer IPv4 checksum invalid" }
            let sport = actual.be16(at: 34)
            if !(32768...60999).contains(sport) { return "UDP source port \(sport) outside 32768...60999" }
            return nil
        case .encapsulated6(let bytes):
            guard actual.count == bytes.count else { return "encap6 length \(actual.count), want \(bytes.count)" }
            for i in 0..<bytes.count where !(54..<56).contains(i) && !(60..<62).contains(i) {
                if actual[i] != bytes[i] { return "encap6 byte \(i): got \(actual[i]) want \(bytes[i]): \(Array(actual.prefix(100)).hex)" }
            }
            let sport = actual.be16(at: 54)
            if !(32768...60999).contains(sport) { return "UDP source port \(sport) outside 32768...60999" }
            let check = actual.be16(at: 60), want = Checksum.vxlan6UDP(actual)
            if check != want { return "UDP checksum \(check), the rule gives \(want)" }
            return nil
        }
    }
}
