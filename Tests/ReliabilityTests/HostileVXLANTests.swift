// VXLAN that must never reach a socket or a pod: from a host on the wire that is not a peer node,
// from a real peer with a wrong VNI, and from inside a pod (UDP to the node's port 8472). Each is
// sent as an ordinary UDP datagram (bash /dev/udp: the sender's real source address) carrying a
// VXLAN header and an inner ICMP echo to node A's pod. Required: node A's drop counters move by
// reason, flannel.1 on A receives nothing (so the kernel's vxlan socket never saw them), and a
// tcpdump in A's pod captures nothing. A positive control (the same frame, right VNI, from the peer)
// must arrive at the pod, proving the method would show a leak.

import Foundation
import Glibc
import NetTypes
import TestSupport
import Testing
import CBPF

@Suite("HostileVXLANTests: VXLAN from strangers, wrong VNIs and pods is dropped before any socket or pod", .serialized,
       .enabled(if: Privileges.isRoot, Privileges.skipReason))
struct HostileVXLANTests {
    static func rxPackets(_ cluster: FlannelCluster, _ ns: String, _ ifname: String) throws -> Int {
        Int(try cluster.lab.sh(ns, ["/bin/cat", "/sys/class/net/\(ifname)/statistics/rx_packets"])
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    @Test func strangersWrongVNIAndPodsAreDropped() throws {
        let cluster = try FlannelCluster(tag: "rlv", api: .v3, daemonPath: TestBinaries.flanneldXDP(), nodes: 2)
        defer { cluster.cleanup() }
        for node in cluster.nodes { try cluster.startDaemon(node) }
        let (a, b) = (cluster.nodes[0], cluster.nodes[1])
        #expect(try waitUntil(5) { try pinnedPeers(cluster, a) == [b.podSubnet] } != nil)

        // A stranger on the wire: not a node, no lease.
        let stranger = cluster.lab.name("st")
        try cluster.lab.addNamespace(stranger)
        try cluster.lab.sh(cluster.lab.wireNamespace, ["link", "add", "vst", "type", "veth", "peer", "name", "eth0", "netns", stranger])
        try cluster.lab.sh(cluster.lab.wireNamespace, ["link", "set", "vst", "master", "br0", "up"])
        try cluster.lab.sh(stranger, ["addr", "add", "192.168.77.50/24", "dev", "eth0"])
        try cluster.lab.sh(stranger, ["link", "set", "eth0", "up"])

        // The frame: VXLAN + inner Ethernet to A's VtepMAC + an ICMP echo to A's pod from a made-up source.
        let vtep = MACAddress(try cluster.lab.sh(a.name, ["/bin/cat", "/sys/class/net/flannel.1/address"])
            .trimmingCharacters(in: .whitespacesAndNewlines))!
        let fakeSource = IPv4Address(10, 5, 2, 99)
        func payload(vni: UInt32) -> [UInt8] {
            PacketBuilder.vxlan(vni: vni)
                + PacketBuilder.ethernet(dst: vtep, src: MACAddress("02:00:00:00:99:99")!, type: EtherType.ipv4)
                + PacketBuilder.ipv4(src: fakeSource, dst: a.podIP, proto: IPProto.icmp,
                                     payload: PacketBuilder.icmpEcho(id: 9, sequence: 1, payload: Array(repeating: 0x42, count: 32)))
        }
        let dir = cluster.workDir
        try Data(payload(vni: 1)).write(to: URL(fileURLWithPath: dir + "/vx-good.bin"))
        try Data(payload(vni: 77)).write(to: URL(fileURLWithPath: dir + "/vx-badvni.bin"))
        func send(_ ns: String, _ file: String, count: Int) throws {
            let script = "for i in $(seq \(count)); do cat \(dir)/\(file) > /dev/udp/\(a.nodeIP)/8472; done"
            _ = try cluster.lab.sh(ns, ["/bin/bash", "-c", script])
        }
        func counter(_ c: fxdp_counter) throws -> UInt64 { try cluster.pinnedCounter(a, c) }

        // tcpdump in A's pod for anything from the made-up source.
        let capture = dir + "/pod-a.pcap.txt"
        let tcpdump = try cluster.lab.spawn(a.podNamespace, ["/usr/bin/tcpdump", "-i", "eth0", "-n", "-l", "-p",
                                                             "src host \(fakeSource)"], stdout: capture)
        usleep(800_000)
        let rxBefore = try HostileVXLANTests.rxPackets(cluster, a.name, "flannel.1")
        let notPeerBefore = try counter(FXDP_C_DECAP_DROP_NOT_PEER), badVNIBefore = try counter(FXDP_C_DECAP_DROP_BAD_VNI)

        try send(stranger, "vx-good.bin", count: 20)          // not a peer
        try send(b.podNamespace, "vx-good.bin", count: 20)    // from inside a pod (source = pod IP)
        try send(b.name, "vx-badvni.bin", count: 20)          // a real peer, wrong VNI
        usleep(500_000)

        let notPeer = try counter(FXDP_C_DECAP_DROP_NOT_PEER) - notPeerBefore
        let badVNI = try counter(FXDP_C_DECAP_DROP_BAD_VNI) - badVNIBefore
        let rxAfter = try HostileVXLANTests.rxPackets(cluster, a.name, "flannel.1")
        let leaked = CommandRunnerOutput.lines(fileText(capture)).filter { $0.contains("\(fakeSource)") }
        print("HostileVXLANTests: drop_not_peer +\(notPeer), drop_bad_vni +\(badVNI), flannel.1 rx +\(rxAfter - rxBefore), pod saw \(leaked.count)")
        #expect(notPeer == 40, "stranger + pod datagrams counted as not-peer: \(notPeer) of 40")
        #expect(badVNI == 20, "wrong-VNI datagrams: \(badVNI) of 20")
        #expect(rxAfter == rxBefore, "flannel.1 (the kernel vxlan socket) received \(rxAfter - rxBefore)")
        #expect(leaked.isEmpty, "the pod saw: \(leaked.prefix(3))")

        // Positive control: the same frame with the right VNI from the peer node reaches the pod.
        try send(b.name, "vx-good.bin", count: 3)
        let seen = waitUntil(3) { fileText(capture).contains("\(fakeSource)") }
        tcpdump.kill(SIGINT)
        _ = tcpdump.waitExit(timeout: 3)
        #expect(seen != nil, "the control frame never reached the pod: the test could not see a leak")
    }
}

enum CommandRunnerOutput {
    static func lines(_ text: String) -> [String] { text.split(separator: "\n").map(String.init) }
}
