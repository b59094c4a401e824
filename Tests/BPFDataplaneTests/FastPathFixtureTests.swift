// The fast path's decisions, one verdict at a time, through BPF_PROG_TEST_RUN in a namespace set up
// as a node: a pod bridge with a pod behind a veth (its peer in the pod's own namespace), a "remote"
// namespace the node forwards to (so that real TCP and UDP flows leave real conntrack entries:
// confirmed, answered, TCP established), one DNATed connection, the underlay with the peer node's
// neighbour pinned. Each case names the counter and verdict it must give and, when the fast path
// takes the packet, the exact bytes it must leave: the kernel path's decisions (TTL, ECN, MACs of
// the bridge and the pod) done by the program.

import BPFDataplane
import BPFLoader
import CBPF
import Glibc
import NetTypes
import TestTraits
import Testing
import TestSupport

final class FastPathLab: @unchecked Sendable {
    static let us = IPv4Address(192, 168, 61, 2)
    static let peer = IPv4Address(192, 168, 61, 1)
    static let unresolvedPeer = IPv4Address(192, 168, 61, 3)
    static let ourPods = IPv4Subnet(cidr: "10.5.2.0/24")!
    static let peerPods = IPv4Subnet(cidr: "10.5.1.0/24")!
    static let unresolvedPods = IPv4Subnet(cidr: "10.5.3.0/24")!
    static let directPods = IPv4Subnet(cidr: "10.5.4.0/24")!
    static let pod = IPv4Address(10, 5, 2, 9)
    static let remote = IPv4Address(10, 5, 1, 7)
    static let service = IPv4Address(10, 96, 0, 10)
    static let ourVTEP = MACAddress("02:00:00:00:01:02")!
    static let peerVTEP = MACAddress("02:00:00:00:01:01")!
    static let peerUnderlayMAC = MACAddress("02:00:00:00:bb:01")!
    static let strangerMAC = MACAddress("02:00:00:00:cc:50")!

    let tag: String
    let node: TestNamespace, podNS: TestNamespace, remoteNS: TestNamespace
    let bpffs: PrivateBPFFS
    let bpf: FlannelBPF
    var config: NodeConfig
    let bridgeIndex: Int32, underlayIndex: Int32, portIndex: Int32
    let bridgeMAC: MACAddress, podMAC: MACAddress, underlayMAC: MACAddress
    /// Live flows (their sockets stay open while the lab lives): pod port → remote port.
    var tcp: (podPort: UInt16, remotePort: UInt16) = (0, 0)
    var udp: (podPort: UInt16, remotePort: UInt16) = (0, 0)
    var natted: (podPort: UInt16, backendPort: UInt16) = (0, 0)
    private var sockets: [Int32] = []

    init() throws {
        tag = Names.unique()
        node = try TestNamespace(tag)
        podNS = try TestNamespace(tag + "p")
        remoteNS = try TestNamespace(tag + "r")
        do {
            bpffs = try PrivateBPFFS(tag)
        } catch {
            for ns in [node, podNS, remoteNS] { ns.close() }
            throw error
        }
        do {
            // Underlay: a veth whose both ends stay in the node (only the neighbour matters).
            let (x, y) = ("\(tag)x", "\(tag)y")
            try node.sh(["ip", "link", "add", x, "type", "veth", "peer", "name", y])
            try node.sh(["ip", "addr", "add", "\(FastPathLab.us)/24", "dev", x])
            for dev in [x, y] { try node.sh(["ip", "link", "set", dev, "up"]) }
            try node.sh(["ip", "neigh", "replace", "\(FastPathLab.peer)", "lladdr", "\(FastPathLab.peerUnderlayMAC)", "dev", x, "nud", "permanent"])
            try node.sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            // The pod bridge and the pod.
            try node.sh(["ip", "link", "add", "cni0", "type", "bridge"])
            try node.sh(["ip", "addr", "add", "10.5.2.1/24", "dev", "cni0"])
            try node.sh(["ip", "link", "set", "cni0", "up"])
            try node.sh(["ip", "link", "add", "vp", "type", "veth", "peer", "name", "eth0", "netns", podNS.name])
            try node.sh(["ip", "link", "set", "vp", "master", "cni0", "up"])
            try podNS.sh(["ip", "addr", "add", "\(FastPathLab.pod)/24", "dev", "eth0"])
            try podNS.sh(["ip", "link", "set", "eth0", "up"])
            try podNS.sh(["ip", "route", "add", "default", "via", "10.5.2.1"])
            // The remote side, routed by the node (standing in for flannel.1 and a peer's pod).
            try node.sh(["ip", "link", "add", "nr", "type", "veth", "peer", "name", "eth0", "netns", remoteNS.name])
            try node.sh(["ip", "addr", "add", "10.5.1.1/32", "dev", "nr"])
            try node.sh(["ip", "link", "set", "nr", "up"])
            try node.sh(["ip", "route", "add", "10.5.1.0/24", "dev", "nr"])
            try remoteNS.sh(["ip", "addr", "add", "\(FastPathLab.remote)/24", "dev", "eth0"])
            try remoteNS.sh(["ip", "link", "set", "eth0", "up"])
            try remoteNS.sh(["ip", "route", "add", "10.5.2.0/24", "via", "10.5.1.1", "dev", "eth0"])
            // Connection tracking on (as --ip-masq or kube-proxy turn it on), a service DNAT.
            try node.sh(["nft", "add table ip fxct; add chain ip fxct tracked { type filter hook forward priority 0 ; } ; add rule ip fxct tracked ct state established counter"])
            try node.sh(["iptables", "-w", "5", "-t", "nat", "-A", "PREROUTING", "-d", "\(FastPathLab.service)/32", "-p", "tcp",
                         "--dport", "80", "-j", "DNAT", "--to-destination", "\(FastPathLab.remote):7001"])
            bridgeIndex = try node.ifindex("cni0")
            portIndex = try node.ifindex("vp")
            underlayIndex = try node.ifindex(x)
            bridgeMAC = try node.mac("cni0")
            podMAC = try podNS.mac("eth0")
            underlayMAC = try node.mac(x)
            config = NodeConfig(nodeIP: FastPathLab.us, vtepMAC: FastPathLab.ourVTEP, vni: 1, udpPort: 8472,
                                underlayIfindex: underlayIndex, underlayMAC: underlayMAC, overlayIfindex: try node.ifindex("nr"),
                                overlayMTU: 1450, fastPath: true, conntrackTCPLiberal: true)
            bpf = try FlannelBPF(bpffs: bpffs.path)
            try bpf.writeConfig(config)
            let table = try bpf.peerTable()
            try table.upsert(Peer(subnet: FastPathLab.peerPods, publicIP: FastPathLab.peer, vtepMAC: FastPathLab.peerVTEP))
            try table.upsert(Peer(subnet: FastPathLab.unresolvedPods, publicIP: FastPathLab.unresolvedPeer,
                                  vtepMAC: MACAddress("02:00:00:00:01:03")!))
            try table.upsert(Peer(subnet: FastPathLab.directPods, publicIP: FastPathLab.peer, vtepMAC: FastPathLab.peerVTEP, direct: true))
            try makeFlows()
            // A neighbour on the bridge whose MAC no port learnt.
            try node.sh(["ip", "neigh", "replace", "10.5.2.50", "lladdr", "\(FastPathLab.strangerMAC)", "dev", "cni0", "nud", "permanent"])
            let pass = try node.run { try FastPathSync(bpf: bpf, podSubnet: FastPathLab.ourPods, logger: .init(label: "test")).syncOnce() }
            guard pass.pods == 1, pass.bridges == [bridgeIndex: "cni0"], pass.hooked == [portIndex: "vp"] else {
                throw CommandFailed(command: ["FastPathSync"], status: 0, output: "\(pass)")
            }
            // The verdicts are tried with test runs: the attached encap would count the pod's own
            // background packets (its TCP's, IPv6 router solicitations) in the same counters.
            try node.run { try bpf.detachFastEncap(portIfindex: portIndex) }
        } catch {
            for fd in sockets { Glibc.close(fd) }
            bpffs.close()
            for ns in [node, podNS, remoteNS] { ns.close() }
            throw error
        }
    }

    /// A TCP connection pod → remote (established), a UDP exchange (answered), and a TCP connection
    /// to the service (DNATed to the remote).
    private func makeFlows() throws {
        func port(_ fd: Int32) -> UInt16 {
            var sa = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            return UInt16(bigEndian: sa.sin_port)
        }
        func connected(to address: IPv4Address, _ p: UInt16, listener: Int32) throws -> UInt16 {
            let client = try podNS.run { socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
            sockets.append(client)
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let rc = withSockaddr(socketAddress(address, port: p)) { connect(client, $0, $1) }
            guard rc == 0 else { throw CommandFailed(command: ["connect \(address):\(p)"], status: errno, output: "") }
            let accepted = accept(listener, nil, nil)
            guard accepted >= 0 else { throw CommandFailed(command: ["accept"], status: errno, output: "") }
            sockets.append(accepted)
            // One exchange each way: the final ACK of the handshake went through conntrack too.
            _ = write(client, "x", 1)
            var b: UInt8 = 0
            _ = read(accepted, &b, 1)
            _ = write(accepted, "y", 1)
            _ = read(client, &b, 1)
            return port(client)
        }
        /// A TCP listener on 0.0.0.0:`port` in the remote namespace.
        func listening(on port: UInt16, reuseAddress: Bool) throws -> Int32 {
            try remoteNS.run { () throws -> Int32 in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var one: Int32 = 1
                if reuseAddress { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
                let rc = withSockaddr(socketAddress(IPv4Address(0), port: port)) { bind(fd, $0, $1) }
                guard rc == 0, listen(fd, 4) == 0 else { throw CommandFailed(command: ["listen \(port)"], status: errno, output: "") }
                return fd
            }
        }
        let listener = try listening(on: 7000, reuseAddress: true)
        sockets.append(listener)
        tcp = (try connected(to: FastPathLab.remote, 7000, listener: listener), 7000)
        let natListener = try listening(on: 7001, reuseAddress: false)
        sockets.append(natListener)
        natted = (try connected(to: FastPathLab.service, 80, listener: natListener), 7001)
        let probe = try UDPProbe.ttlsSeen(from: podNS.name, to: remoteNS.name, server: (FastPathLab.remote, 6000), ttl: 64, count: 1)
        udp = (probe.ends.clientAsSeenByServer.1, 6000)
    }

    func close() {
        for fd in sockets { Glibc.close(fd) }
        sockets = []
        bpffs.close()
        for ns in [node, podNS, remoteNS] { ns.close() }
    }

    func setConfig(_ change: (inout NodeConfig) -> Void) throws {
        change(&config)
        try bpf.writeConfig(config)
    }

    /// Runs `program` once on `frame` arriving on `ifindex`; the verdict, the output and the counters that moved.
    func run(_ program: FXDPProgram, _ frame: [UInt8], ifindex: Int32) throws -> (verdict: String, output: [UInt8], moved: [FXDPCounter: FXDPCount]) {
        let prog = try bpf.program(program)
        let before = try bpf.counters()
        let result = try node.run { try prog.testRun(packet: frame, skb: TestRunSKB(ifindex: ifindex)) }
        let after = try bpf.counters()
        return (Verdict.tc(result.retval), result.packet, counterDelta(before, after))
    }

    // MARK: frames

    /// A pod's IPv4 packet: TCP (with `flags`), UDP, or ICMP.
    enum L4 { case tcp(UInt8), udp, icmp }

    static func ipPacket(src: IPv4Address, dst: IPv4Address, sport: UInt16, dport: UInt16, l4: L4, ttl: UInt8 = 64, tos: UInt8 = 0,
                         payload: Int = 100, fragment: PacketBuilder.Fragment = .init(dontFragment: true), options: [UInt8] = []) -> [UInt8] {
        let data = [UInt8](repeating: 0x5a, count: payload)
        let (proto, body): (UInt8, [UInt8]) = switch l4 {
        case .tcp(let flags): (IPProto.tcp, PacketBuilder.tcp(src: src, dst: dst, srcPort: sport, dstPort: dport, seq: 1000, ack: 2000, flags: flags, payload: data))
        case .udp: (IPProto.udp, PacketBuilder.udp(src: src, dst: dst, srcPort: sport, dstPort: dport, payload: data))
        case .icmp: (IPProto.icmp, PacketBuilder.icmpEcho(id: 1, sequence: 1, payload: data))
        }
        return PacketBuilder.ipv4(src: src, dst: dst, proto: proto, payload: body, ttl: ttl, tos: tos, fragment: fragment, options: options)
    }

    /// What the pod sends to its gateway (the bridge's MAC).
    func fromPod(_ ip: [UInt8], srcMAC: MACAddress? = nil, dstMAC: MACAddress? = nil) -> [UInt8] {
        PacketBuilder.ethernet(dst: dstMAC ?? bridgeMAC, src: srcMAC ?? podMAC, type: EtherType.ipv4) + ip
    }

    /// A peer's VXLAN datagram carrying `ip` to our VTEP.
    func fromPeer(_ ip: [UInt8], outerTOS: UInt8 = 0) -> [UInt8] {
        PacketBuilder.vxlanFrame(outerDst: underlayMAC, outerSrc: FastPathLab.peerUnderlayMAC, src: FastPathLab.peer, dst: FastPathLab.us,
                                 inner: PacketBuilder.ethernet(dst: FastPathLab.ourVTEP, src: FastPathLab.peerVTEP, type: EtherType.ipv4) + ip,
                                 tos: outerTOS)
    }

    /// `ip` as ip_forward leaves it: TTL one less, the header checksum fixed; `tos` replaced if given.
    static func forwarded(_ ip: [UInt8], tos: UInt8? = nil) -> [UInt8] {
        var out = ip
        out[8] -= 1
        if let tos { out[1] = tos }
        out[10] = 0
        out[11] = 0
        out.setBE16(Checksum.internet(out[0..<20]), at: 10)
        return out
    }
}

@Suite("FastPathFixtureTests: every verdict of the fast path's programs", .serialized,
       .needsRoot, .ownThreads)
struct FastPathFixtureTests {
    typealias L = FastPathLab

    @Test func fastEncapVerdicts() throws {
        let lab = try FastPathLab()
        defer { lab.close() }
        let tcpOut = L.ipPacket(src: L.pod, dst: L.remote, sport: lab.tcp.podPort, dport: lab.tcp.remotePort, l4: .tcp(0x10))
        let udpOut = L.ipPacket(src: L.pod, dst: L.remote, sport: lab.udp.podPort, dport: lab.udp.remotePort, l4: .udp)
        let bridge = lab.bridgeIndex

        // Taken: encapsulated for the peer exactly as the encap at flannel.1 would, inner TTL one less;
        // on the bridge (what it passes up) and on the pod's own port (before the bridge).
        for (label, ip, ifindex) in [("tcp", tcpOut, bridge), ("udp", udpOut, bridge), ("tcp on the port", tcpOut, lab.portIndex)] {
            let r = try lab.run(.fastEncap, lab.fromPod(ip), ifindex: ifindex)
            #expect(r.verdict == "TC_ACT_REDIRECT" && r.moved.keys.sorted { $0.rawValue < $1.rawValue } == [.fastEncapOK], "\(label): \(r.verdict) \(r.moved)")
            let parsed = try #require(ParsedFrame(r.output), "\(label)")
            #expect(parsed.dst == L.peerUnderlayMAC && parsed.src == lab.underlayMAC)
            #expect(parsed.ipv4?.src == L.us && parsed.ipv4?.dst == L.peer && parsed.ipv4?.headerChecksumValid == true)
            #expect(parsed.udp?.dstPort == 8472 && parsed.vxlanVNI == 1)
            let inner = try #require(parsed.innerOffset)
            #expect(Array(r.output[inner..<(inner + 14)]) == PacketBuilder.ethernet(dst: L.peerVTEP, src: L.ourVTEP, type: EtherType.ipv4))
            #expect(Array(r.output[(inner + 14)...]) == L.forwarded(ip), "\(label): the inner packet, forwarded")
        }

        // Declined, unchanged, each for its reason.
        let ttl1 = L.ipPacket(src: L.pod, dst: L.remote, sport: lab.tcp.podPort, dport: lab.tcp.remotePort, l4: .tcp(0x10), ttl: 1)
        let cases: [(String, [UInt8], Int32, FXDPCounter)] = [
            ("from a MAC no port learnt", lab.fromPod(tcpOut, srcMAC: L.strangerMAC), bridge, .fastEncapPassNotPod),
            ("to another MAC than the bridge's", lab.fromPod(tcpOut, dstMAC: L.strangerMAC), bridge, .fastEncapPassNotPod),
            ("on another interface than the pod's port or bridge", lab.fromPod(tcpOut), lab.underlayIndex, .fastEncapPassNotPod),
            ("to another MAC than the bridge's, on the port", lab.fromPod(tcpOut, dstMAC: L.strangerMAC), lab.portIndex, .fastEncapPassNotPod),
            ("to no peer's subnet", lab.fromPod(L.ipPacket(src: L.pod, dst: IPv4Address(10, 9, 9, 9), sport: 1, dport: 2, l4: .udp)), bridge,
             .fastEncapPassNotPeer),
            ("to a DirectRouting peer's pods (routed unencapsulated)",
             lab.fromPod(L.ipPacket(src: L.pod, dst: IPv4Address(10, 5, 4, 4), sport: 1, dport: 2, l4: .udp)), bridge, .fastEncapPassNotPeer),
            ("a flow conntrack does not know", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: 1, dport: 2, l4: .tcp(0x10))), bridge,
             .fastEncapPassConntrack),
            ("a SYN of a known tuple", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: lab.tcp.podPort, dport: lab.tcp.remotePort,
                                                              l4: .tcp(0x02))), bridge, .fastEncapPassConntrack),
            ("ICMP", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: 0, dport: 0, l4: .icmp)), bridge, .fastEncapPassConntrack),
            ("the DNATed flow (after the translation, as br_netfilter shows it)",
             lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: lab.natted.podPort, dport: lab.natted.backendPort, l4: .tcp(0x10))),
             bridge, .fastEncapPassConntrack),
            ("TTL 1", lab.fromPod(ttl1), bridge, .fastEncapPassLimits),
            ("IP options", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: lab.tcp.podPort, dport: lab.tcp.remotePort, l4: .tcp(0x10),
                                                  options: [1, 1, 1, 1])), bridge, .fastEncapPassLimits),
            ("a fragment", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: lab.udp.podPort, dport: lab.udp.remotePort, l4: .udp,
                                                  fragment: .init(moreFragments: true))), bridge, .fastEncapPassLimits),
            ("over the overlay MTU", lab.fromPod(L.ipPacket(src: L.pod, dst: L.remote, sport: lab.udp.podPort, dport: lab.udp.remotePort,
                                                            l4: .udp, payload: 1440)), bridge, .fastEncapPassLimits),
            ("the peer node's MAC unresolved", lab.fromPod(L.ipPacket(src: L.pod, dst: IPv4Address(10, 5, 3, 3), sport: 1, dport: 2, l4: .udp)),
             bridge, .fastEncapPassLimits),
        ]
        for (label, frame, ifindex, counter) in cases {
            let r = try lab.run(.fastEncap, frame, ifindex: ifindex)
            #expect(r.verdict == "TC_ACT_OK" && r.output == frame, "\(label): \(r.verdict)")
            #expect(r.moved == [counter: FXDPCount(packets: 1, bytes: UInt64(frame.count))], "\(label): \(r.moved)")
        }

        // TCP needs liberal window tracking; UDP does not.
        try lab.setConfig { $0.conntrackTCPLiberal = false }
        #expect(try lab.run(.fastEncap, lab.fromPod(tcpOut), ifindex: bridge).moved.keys.first == .fastEncapPassConntrack)
        #expect(try lab.run(.fastEncap, lab.fromPod(udpOut), ifindex: bridge).moved.keys.first == .fastEncapOK)
        // Off: nothing taken.
        try lab.setConfig { $0.fastPath = false }
        let off = try lab.run(.fastEncap, lab.fromPod(udpOut), ifindex: bridge)
        #expect(off.verdict == "TC_ACT_OK" && off.moved.keys.first == .fastEncapPassOff)
    }

    @Test func fastDecapVerdicts() throws {
        let lab = try FastPathLab()
        defer { lab.close() }
        let tcpIn = L.ipPacket(src: L.remote, dst: L.pod, sport: lab.tcp.remotePort, dport: lab.tcp.podPort, l4: .tcp(0x10))
        let udpIn = L.ipPacket(src: L.remote, dst: L.pod, sport: lab.udp.remotePort, dport: lab.udp.podPort, l4: .udp)
        let underlay = lab.underlayIndex
        let toPod = PacketBuilder.ethernet(dst: lab.podMAC, src: lab.bridgeMAC, type: EtherType.ipv4)

        // Taken: stripped, addressed from the bridge to the pod, forwarded, into the pod.
        for (label, ip) in [("tcp", tcpIn), ("udp", udpIn)] {
            let r = try lab.run(.decapCheck, lab.fromPeer(ip), ifindex: underlay)
            #expect(r.verdict == "TC_ACT_REDIRECT" && r.moved.keys.first == .fastDecapOK && r.moved.count == 1, "\(label): \(r.verdict) \(r.moved)")
            #expect(r.output == toPod + L.forwarded(ip), "\(label)")
        }
        // Outer CE on an ECT packet: copied in (IP_ECN_decapsulate), as the kernel's decap does.
        let ect = L.ipPacket(src: L.remote, dst: L.pod, sport: lab.tcp.remotePort, dport: lab.tcp.podPort, l4: .tcp(0x10), tos: 0x02)
        let ce = try lab.run(.decapCheck, lab.fromPeer(ect, outerTOS: 0x03), ifindex: underlay)
        #expect(ce.moved.keys.first == .fastDecapOK && ce.output == toPod + L.forwarded(ect, tos: 0x03))

        let cases: [(String, [UInt8], FXDPCounter)] = [
            ("a flow conntrack does not know", L.ipPacket(src: L.remote, dst: L.pod, sport: 1, dport: 2, l4: .udp), .fastDecapPassConntrack),
            ("a SYN", L.ipPacket(src: L.remote, dst: L.pod, sport: lab.tcp.remotePort, dport: lab.tcp.podPort, l4: .tcp(0x12)),
             .fastDecapPassConntrack),
            ("ICMP", L.ipPacket(src: L.remote, dst: L.pod, sport: 0, dport: 0, l4: .icmp), .fastDecapPassConntrack),
            ("a reply the stack must un-NAT", L.ipPacket(src: L.remote, dst: L.pod, sport: lab.natted.backendPort, dport: lab.natted.podPort,
                                                         l4: .tcp(0x10)), .fastDecapPassConntrack),
            ("TTL 1", L.ipPacket(src: L.remote, dst: L.pod, sport: lab.tcp.remotePort, dport: lab.tcp.podPort, l4: .tcp(0x10), ttl: 1),
             .fastDecapPassLimits),
            ("IP options", L.ipPacket(src: L.remote, dst: L.pod, sport: lab.tcp.remotePort, dport: lab.tcp.podPort, l4: .tcp(0x10),
                                      options: [1, 1, 1, 1]), .fastDecapPassLimits),
            ("a fragment", L.ipPacket(src: L.remote, dst: L.pod, sport: lab.udp.remotePort, dport: lab.udp.podPort, l4: .udp,
                                      fragment: .init(moreFragments: true)), .fastDecapPassLimits),
            ("an address of the node itself", L.ipPacket(src: L.remote, dst: IPv4Address(10, 5, 2, 1), sport: 1, dport: 2, l4: .udp),
             .fastDecapPassNotPod),
            ("a neighbour whose MAC no port learnt", L.ipPacket(src: L.remote, dst: IPv4Address(10, 5, 2, 50), sport: 1, dport: 2, l4: .udp),
             .fastDecapPassNotPod),
            ("an address without a neighbour yet", L.ipPacket(src: L.remote, dst: IPv4Address(10, 5, 2, 77), sport: 1, dport: 2, l4: .udp),
             .fastDecapPassLimits),
        ]
        for (label, ip, counter) in cases {
            let frame = lab.fromPeer(ip)
            let r = try lab.run(.decapCheck, frame, ifindex: underlay)
            #expect(r.verdict == "TC_ACT_OK" && r.output == frame, "\(label): \(r.verdict)")
            #expect(r.moved == [counter: FXDPCount(packets: 1, bytes: UInt64(frame.count))], "\(label): \(r.moved)")
        }

        // With the inner source check off, a source outside the sender's subnets is still never
        // handed past the stack (rp_filter is the stack's).
        try lab.setConfig { $0.innerSourceCheck = false }
        let spoofed = L.ipPacket(src: IPv4Address(10, 5, 9, 9), dst: L.pod, sport: 1, dport: 2, l4: .udp)
        #expect(try lab.run(.decapCheck, lab.fromPeer(spoofed), ifindex: underlay).moved.keys.first == .fastDecapPassLimits)
        #expect(try lab.run(.decapCheck, lab.fromPeer(udpIn), ifindex: underlay).moved.keys.first == .fastDecapOK)
        // TCP needs liberal window tracking.
        try lab.setConfig { $0.conntrackTCPLiberal = false }
        #expect(try lab.run(.decapCheck, lab.fromPeer(tcpIn), ifindex: underlay).moved.keys.first == .fastDecapPassConntrack)
        // Off: valid VXLAN is the kernel device's, as before the fast path existed.
        try lab.setConfig { $0.fastPath = false }
        let off = try lab.run(.decapCheck, lab.fromPeer(udpIn), ifindex: underlay)
        #expect(off.verdict == "TC_ACT_OK" && off.moved.keys.first == .decapCheckOK)
    }
}

@Suite("FastPathSyncTests: which pods and interfaces the fast path takes", .serialized,
       .needsRoot, .ownThreads)
struct FastPathSyncTests {
    func sync(_ lab: FastPathLab) throws -> FastPathPass {
        try lab.node.run { try FastPathSync(bpf: lab.bpf, podSubnet: FastPathLab.ourPods, logger: .init(label: "test")).syncOnce() }
    }

    @Test("a pod whose veth another tool acts on (a shaping qdisc, an ingress qdisc, others' filters on either hook) is left to the kernel path; back when the tool leaves")
    func podsOtherToolsActOnAreLeftAlone() throws {
        let lab = try FastPathLab()
        defer { lab.close() }
        let port = lab.portIndex
        var pass = try sync(lab)
        #expect(pass.pods == 1 && pass.hooked == [port: "vp"], "\(pass)")
        let other = try lab.bpf.program(.decapCheck)
        let changes: [(String, () throws -> Void, () throws -> Void)] = [
            ("a tbf root qdisc (what the pod receives is shaped)",
             { try lab.node.sh(["tc", "qdisc", "add", "dev", "vp", "root", "tbf", "rate", "1gbit", "burst", "32k", "latency", "50ms"]) },
             { try lab.node.sh(["tc", "qdisc", "del", "dev", "vp", "root"]) }),
            ("another filter on the veth's egress",
             { try lab.node.run { try TC.attach(other, ifindex: port, direction: .egress, handle: 1, priority: 1) } },
             { try lab.node.run { try TC.detach(ifindex: port, direction: .egress, handle: 1, priority: 1, expectedProgramID: nil) } }),
            ("another filter on the veth's ingress, before ours",
             { try lab.node.run { try TC.attach(other, ifindex: port, direction: .ingress, handle: 1, priority: 1) } },
             { try lab.node.run { try TC.detach(ifindex: port, direction: .ingress, handle: 1, priority: 1, expectedProgramID: nil) } }),
            ("an ingress qdisc (the bandwidth plugin shapes what the pod sends with one)",
             { try lab.node.sh(["tc", "qdisc", "del", "dev", "vp", "clsact"]); try lab.node.sh(["tc", "qdisc", "add", "dev", "vp", "ingress"]) },
             { try lab.node.sh(["tc", "qdisc", "del", "dev", "vp", "ingress"]) }),
        ]
        for (label, add, remove) in changes {
            try add()
            pass = try sync(lab)
            #expect(pass.pods == 0 && pass.hooked.isEmpty, "\(label): \(pass)")
            #expect(try lab.node.run { try FlannelBPF.fastEncapInterfaces() }.isEmpty, "\(label): our encap must leave the veth")
            try remove()
            pass = try sync(lab)
            #expect(pass.pods == 1 && pass.hooked == [port: "vp"], "\(label), removed: \(pass)")
        }
    }
}
