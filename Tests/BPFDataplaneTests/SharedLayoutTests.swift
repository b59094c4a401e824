// The kernel/user contract: struct sizes as the C side pins them, and the Swift counter enum
// mirroring the C enum value by value.

import BPFDataplane
import CBPF
import Testing

@Suite struct SharedLayoutTests {
    @Test func structSizesMatchTheCHeader() {
        #expect(MemoryLayout<fxdp_peer_key>.size == 8)
        #expect(MemoryLayout<fxdp_peer_value>.size == 16)
        #expect(MemoryLayout<fxdp_peer_value>.offset(of: \fxdp_peer_value.source_ip) == 12)
        #expect(MemoryLayout<fxdp_node_key>.size == 4)
        #expect(MemoryLayout<fxdp_node_value>.size == 4)
        #expect(MemoryLayout<fxdp_drop_event>.size == 152)
        #expect(MemoryLayout<fxdp_drop_event>.offset(of: \fxdp_drop_event.sample) == 24)
        #expect(MemoryLayout<fxdp_monitor>.size == 16)
        #expect(MemoryLayout<fxdp_monitor_budget>.size == 16)
        #expect(MemoryLayout<fxdp_config>.size == 64)
        #expect(MemoryLayout<fxdp_stranger>.size == 16)
        #expect(MemoryLayout<fxdp_xdp_meta>.size == 8)
        #expect(MemoryLayout<fxdp_local_key>.size == 8)
        #expect(MemoryLayout<fxdp_local_value>.size == 16)
        #expect(MemoryLayout<fxdp_config>.offset(of: \fxdp_config.outer_ttl) == 34)
        #expect(MemoryLayout<fxdp_config>.offset(of: \fxdp_config.network) == 36)
        #expect(MemoryLayout<fxdp_config>.offset(of: \fxdp_config.public_ip) == 40)
        #expect(MemoryLayout<fxdp_count>.size == 16)
        #expect(MemoryLayout<fxdp_config>.offset(of: \fxdp_config.vni) == 12)
        #expect(MemoryLayout<fxdp_config>.offset(of: \fxdp_config.underlay_mac) == 28)
        #expect(MemoryLayout<fxdp_peer6_key>.size == 20)
        #expect(MemoryLayout<fxdp_peer6_value>.size == 40)
        #expect(MemoryLayout<fxdp_peer6_value>.offset(of: \fxdp_peer6_value.vtep_mac) == 32)
        #expect(MemoryLayout<fxdp_node6_key>.size == 16)
        #expect(MemoryLayout<fxdp_config6>.size == 96)
        #expect(MemoryLayout<fxdp_config6>.offset(of: \fxdp_config6.vtep_mac) == 48)
        #expect(MemoryLayout<fxdp_config6>.offset(of: \fxdp_config6.overlay_ifindex) == 56)
        #expect(MemoryLayout<fxdp_config6>.offset(of: \fxdp_config6.flags) == 62)
    }

    @Test func counterEnumMirrorsTheCEnum() {
        let c: [(FXDPCounter, fxdp_counter)] = [
            (.encapOK, FXDP_C_ENCAP_OK), (.encapPassNotIPv4, FXDP_C_ENCAP_PASS_NOT_IPV4),
            (.encapPassNoPeer, FXDP_C_ENCAP_PASS_NO_PEER), (.encapPassDisabled, FXDP_C_ENCAP_PASS_DISABLED),
            (.encapDropMalformed, FXDP_C_ENCAP_DROP_MALFORMED), (.encapDropAdjust, FXDP_C_ENCAP_DROP_ADJUST),
            (.encapPassFIB, FXDP_C_ENCAP_PASS_FIB), (.encapPassTooBig, FXDP_C_ENCAP_PASS_TOO_BIG),
            (.encapOKNeigh, FXDP_C_ENCAP_OK_NEIGH), (.encapPassAdjust, FXDP_C_ENCAP_PASS_ADJUST), (.encapPassNoNeigh, FXDP_C_ENCAP_PASS_NO_NEIGH),
            (.decapOK, FXDP_C_DECAP_OK), (.decapCheckOK, FXDP_C_DECAP_CHECK_OK),
            (.decapPassNotVXLAN, FXDP_C_DECAP_PASS_NOT_VXLAN), (.decapPassDisabled, FXDP_C_DECAP_PASS_DISABLED),
            (.decapDropNotPeer, FXDP_C_DECAP_DROP_NOT_PEER), (.decapDropBadVNI, FXDP_C_DECAP_DROP_BAD_VNI),
            (.decapDropMalformed, FXDP_C_DECAP_DROP_MALFORMED), (.decapDropFragment, FXDP_C_DECAP_DROP_FRAGMENT),
            (.decapDropIPOptions, FXDP_C_DECAP_DROP_IP_OPTIONS), (.decapDropInnerNotOurs, FXDP_C_DECAP_DROP_INNER_NOT_OURS),
            (.decapDropAdjust, FXDP_C_DECAP_DROP_ADJUST), (.decapPassFragment, FXDP_C_DECAP_PASS_FRAGMENT),
            (.decapPassNotIPv4, FXDP_C_DECAP_PASS_NOT_IPV4), (.decapPassVLAN, FXDP_C_DECAP_PASS_VLAN),
            (.decapPassShort, FXDP_C_DECAP_PASS_SHORT), (.decapDropInnerNotIPv4, FXDP_C_DECAP_DROP_INNER_NOT_IPV4),
            (.decapPassOtherHost, FXDP_C_DECAP_PASS_OTHER_HOST),
            (.decapDropInnerSource, FXDP_C_DECAP_DROP_INNER_SOURCE), (.decapDropLoop, FXDP_C_DECAP_DROP_LOOP),
            (.decapDropOuterCsum, FXDP_C_DECAP_DROP_OUTER_CSUM), (.decapDropECN, FXDP_C_DECAP_DROP_ECN),
            (.decapFragmentOK, FXDP_C_DECAP_FRAGMENT_OK), (.decapSteerOK, FXDP_C_DECAP_STEER_OK),
            (.doorOK, FXDP_C_DOOR_OK), (.doorDropNotPeer, FXDP_C_DOOR_DROP_NOT_PEER),
            (.doorDropWrongDoor, FXDP_C_DOOR_DROP_WRONG_DOOR), (.guardDropPodVXLAN, FXDP_C_GUARD_DROP_POD_VXLAN),
            (.fastEncapOK, FXDP_C_FAST_ENCAP_OK), (.fastEncapPassOff, FXDP_C_FAST_ENCAP_PASS_OFF),
            (.fastEncapPassNotPod, FXDP_C_FAST_ENCAP_PASS_NOT_POD), (.fastEncapPassNotPeer, FXDP_C_FAST_ENCAP_PASS_NOT_PEER),
            (.fastEncapPassConntrack, FXDP_C_FAST_ENCAP_PASS_CONNTRACK), (.fastEncapPassLimits, FXDP_C_FAST_ENCAP_PASS_LIMITS),
            (.fastDecapOK, FXDP_C_FAST_DECAP_OK), (.fastDecapPassNotPod, FXDP_C_FAST_DECAP_PASS_NOT_POD),
            (.fastDecapPassConntrack, FXDP_C_FAST_DECAP_PASS_CONNTRACK), (.fastDecapPassLimits, FXDP_C_FAST_DECAP_PASS_LIMITS),
            (.encap6OK, FXDP_C_ENCAP6_OK), (.encap6PassGSO, FXDP_C_ENCAP6_PASS_GSO), (.encap6PassCsum, FXDP_C_ENCAP6_PASS_CSUM),
            (.encap6PassNotIPv6, FXDP_C_ENCAP6_PASS_NOT_IPV6), (.decap6OK, FXDP_C_DECAP6_OK),
            (.decap6CheckOK, FXDP_C_DECAP6_CHECK_OK), (.decap6SteerOK, FXDP_C_DECAP6_STEER_OK),
            (.decap6DropInnerNotIPv6, FXDP_C_DECAP6_DROP_INNER_NOT_IPV6), (.decap6DropUDPZeroCsum, FXDP_C_DECAP6_DROP_UDP_ZERO_CSUM),
            (.decap6PassExtHeaders, FXDP_C_DECAP6_PASS_EXT_HEADERS), (.door6OK, FXDP_C_DOOR6_OK),
            (.door6DropNotPeer, FXDP_C_DOOR6_DROP_NOT_PEER), (.door6DropWrongDoor, FXDP_C_DOOR6_DROP_WRONG_DOOR),
            (.guard6DropPodVXLAN, FXDP_C_GUARD6_DROP_POD_VXLAN), (.fastEncapPassIPv6, FXDP_C_FAST_ENCAP_PASS_IPV6),
        ]
        #expect(c.count == FXDPCounter.allCases.count, "every Swift case is paired with its C constant")
        for (swift, cValue) in c {
            #expect(swift.rawValue == cValue.rawValue, "\(swift.name)")
            #expect(swift.cValue == cValue)
        }
        #expect(Set(FXDPCounter.allCases.map(\.name)).count == FXDPCounter.allCases.count)
        #expect(FXDPCounter.allCases.allSatisfy { $0.rawValue < FXDPCounter.arraySize })
        // The programs' drop mask and the names agree: a counter is a drop exactly when its name says so.
        for counter in FXDPCounter.allCases {
            #expect(counter.isDrop == counter.name.contains("_drop_"), "\(counter.name)")
        }
        #expect(fxdp_counter_is_drop(64) == 0 && fxdp_counter_is_drop(UInt32.max) == 0)
    }

    @Test func mapNamesCarryTheABIVersion() {
        for name in FlannelBPF.pinnedMapNames {
            #expect(name.hasSuffix("_v\(FXDP_ABI_VERSION)"))
        }
    }

    @Test func driverDefaults() {
        #expect(DecapMode.defaultMode(driver: "veth") == .tc)
        #expect(DecapMode.defaultMode(driver: nil) == .tc)
        #expect(DecapMode.defaultMode(driver: "mlx5_core") == .xdp)
        #expect(DecapMode.defaultMode(driver: "virtio_net") == .xdp)
    }
}
