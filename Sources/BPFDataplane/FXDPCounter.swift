// FXDPCounter — the Swift names of the C counter codes (enum fxdp_counter in fxdp_shared.h).
// The raw values ARE the C values (a test compares every case with the imported C constant), and
// like them they are never renumbered: dashboards key on them.

import CBPF
import NetTypes

public enum FXDPCounter: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case encapOK = 0
    case encapPassNotIPv4 = 1
    case encapPassNoPeer = 2
    case encapPassDisabled = 3
    case encapDropMalformed = 4
    case encapDropAdjust = 5
    case encapPassFIB = 6
    case encapPassTooBig = 7
    /// Encapsulated with the next hop unresolved, for a packet the covering route brought (no
    /// kernel state to fall back on): bpf_redirect_neigh resolves it.
    case encapOKNeigh = 8
    case encapPassAdjust = 9
    case encapPassNoNeigh = 10
    case encap6OK = 11
    case encap6PassGSO = 12
    case encap6PassCsum = 13
    case encap6PassNotIPv6 = 14
    case decap6OK = 15

    case decapOK = 16
    case decapCheckOK = 17
    case decapPassNotVXLAN = 18
    case decapPassDisabled = 19
    case decapDropNotPeer = 20
    case decapDropBadVNI = 21
    case decapDropMalformed = 22
    case decapDropFragment = 23
    case decapDropIPOptions = 24
    case decapDropInnerNotOurs = 25
    case decapDropAdjust = 26
    case decapPassFragment = 27
    case decapPassNotIPv4 = 28
    case decapPassVLAN = 29
    case decapPassShort = 30
    case decapDropInnerNotIPv4 = 31
    case decapPassOtherHost = 32
    case decapDropInnerSource = 33
    case decapDropLoop = 34
    case decapDropOuterCsum = 35
    case decapDropECN = 36
    case decapFragmentOK = 37
    case decapSteerOK = 38
    case decap6CheckOK = 39
    case decap6SteerOK = 40
    case decap6DropInnerNotIPv6 = 41
    case decap6DropUDPZeroCsum = 42
    case decap6PassExtHeaders = 43
    case door6OK = 44
    case door6DropNotPeer = 45
    case door6DropWrongDoor = 46
    case guard6DropPodVXLAN = 47

    case doorOK = 48
    case doorDropNotPeer = 49
    case doorDropWrongDoor = 50
    case guardDropPodVXLAN = 51

    case fastEncapOK = 52
    case fastEncapPassOff = 53
    case fastEncapPassNotPod = 54
    case fastEncapPassNotPeer = 55
    case fastEncapPassConntrack = 56
    case fastEncapPassLimits = 57
    case fastDecapOK = 58
    case fastDecapPassNotPod = 59
    case fastDecapPassConntrack = 60
    case fastDecapPassLimits = 61
    case fastEncapPassIPv6 = 62

    /// The C constant this case mirrors.
    public var cValue: fxdp_counter { fxdp_counter(rawValue: rawValue) }

    /// The metric-style name, the C name without FXDP_C_ in lower case: "encap_ok", "decap_drop_not_peer".
    public var name: String {
        switch self {
        case .encapOK: "encap_ok"
        case .encapPassNotIPv4: "encap_pass_not_ipv4"
        case .encapPassNoPeer: "encap_pass_no_peer"
        case .encapPassDisabled: "encap_pass_disabled"
        case .encapDropMalformed: "encap_drop_malformed"
        case .encapDropAdjust: "encap_drop_adjust"
        case .encapPassFIB: "encap_pass_fib"
        case .encapPassTooBig: "encap_pass_too_big"
        case .encapOKNeigh: "encap_ok_neigh"
        case .encapPassAdjust: "encap_pass_adjust"
        case .encapPassNoNeigh: "encap_pass_no_neigh"
        case .encap6OK: "encap6_ok"
        case .encap6PassGSO: "encap6_pass_gso"
        case .encap6PassCsum: "encap6_pass_csum"
        case .encap6PassNotIPv6: "encap6_pass_not_ipv6"
        case .decap6OK: "decap6_ok"
        case .decapOK: "decap_ok"
        case .decapCheckOK: "decap_check_ok"
        case .decapPassNotVXLAN: "decap_pass_not_vxlan"
        case .decapPassDisabled: "decap_pass_disabled"
        case .decapDropNotPeer: "decap_drop_not_peer"
        case .decapDropBadVNI: "decap_drop_bad_vni"
        case .decapDropMalformed: "decap_drop_malformed"
        case .decapDropFragment: "decap_drop_fragment"
        case .decapDropIPOptions: "decap_drop_ip_options"
        case .decapDropInnerNotOurs: "decap_drop_inner_not_ours"
        case .decapDropAdjust: "decap_drop_adjust"
        case .decapPassFragment: "decap_pass_fragment"
        case .decapPassNotIPv4: "decap_pass_not_ipv4"
        case .decapPassVLAN: "decap_pass_vlan"
        case .decapPassShort: "decap_pass_short"
        case .decapDropInnerNotIPv4: "decap_drop_inner_not_ipv4"
        case .decapPassOtherHost: "decap_pass_other_host"
        case .decapDropInnerSource: "decap_drop_inner_source"
        case .decapDropLoop: "decap_drop_loop"
        case .decapDropOuterCsum: "decap_drop_outer_csum"
        case .decapDropECN: "decap_drop_ecn"
        case .decapFragmentOK: "decap_fragment_ok"
        case .decapSteerOK: "decap_steer_ok"
        case .decap6CheckOK: "decap6_check_ok"
        case .decap6SteerOK: "decap6_steer_ok"
        case .decap6DropInnerNotIPv6: "decap6_drop_inner_not_ipv6"
        case .decap6DropUDPZeroCsum: "decap6_drop_udp_zero_csum"
        case .decap6PassExtHeaders: "decap6_pass_ext_headers"
        case .door6OK: "door6_ok"
        case .door6DropNotPeer: "door6_drop_not_peer"
        case .door6DropWrongDoor: "door6_drop_wrong_door"
        case .guard6DropPodVXLAN: "guard6_drop_pod_vxlan"
        case .doorOK: "door_ok"
        case .doorDropNotPeer: "door_drop_not_peer"
        case .doorDropWrongDoor: "door_drop_wrong_door"
        case .guardDropPodVXLAN: "guard_drop_pod_vxlan"
        case .fastEncapOK: "fast_encap_ok"
        case .fastEncapPassOff: "fast_encap_pass_off"
        case .fastEncapPassNotPod: "fast_encap_pass_not_pod"
        case .fastEncapPassNotPeer: "fast_encap_pass_not_peer"
        case .fastEncapPassConntrack: "fast_encap_pass_conntrack"
        case .fastEncapPassLimits: "fast_encap_pass_limits"
        case .fastDecapOK: "fast_decap_ok"
        case .fastDecapPassNotPod: "fast_decap_pass_not_pod"
        case .fastDecapPassConntrack: "fast_decap_pass_conntrack"
        case .fastDecapPassLimits: "fast_decap_pass_limits"
        case .fastEncapPassIPv6: "fast_encap_pass_ipv6"
        }
    }

    public var description: String { name }

    /// Packets BPF encapsulated: at flannel.<VNI> or, on the fast path, where the pod's packet entered the host.
    public var isEncapsulated: Bool { self == .encapOK || self == .encapOKNeigh || self == .fastEncapOK || self == .encap6OK }

    /// Valid VXLAN from a peer that a decap program accepted: stripped by XDP, left to the kernel
    /// device, or (fast path on) handed to the pod or declined to the kernel path.
    public var isDecapAccepted: Bool {
        switch self {
        case .decapOK, .decapCheckOK, .fastDecapOK, .fastDecapPassNotPod, .fastDecapPassConntrack, .fastDecapPassLimits,
             .decap6OK, .decap6CheckOK: true
        default: false
        }
    }

    /// True for the codes whose packets the program dropped: the programs' own mask.
    public var isDrop: Bool { fxdp_counter_is_drop(rawValue) != 0 }

    /// Size of the C counter array (FXDP_C_MAX).
    public static var arraySize: UInt32 { UInt32(FXDP_C_MAX.rawValue) }
}

/// Packets and bytes of one counter, summed over CPUs (NetTypes' PacketCount, which the layers
/// above share).
public typealias FXDPCount = PacketCount
