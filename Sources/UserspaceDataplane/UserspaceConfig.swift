// Configuration and errors of the userspace data path. The daemon fills a `UserspaceConfig` from the
// network config (vxlan or udp backend) and the chosen interface; addresses, routes and link state of
// the TUN stay with the daemon (netlink), this module only owns the TUN queues and UDP sockets.
import Glibc
import NetTypes

public struct UserspaceConfig: Sendable, Hashable {
    /// What goes on the wire.
    public enum Encapsulation: Sendable, Hashable {
        /// flannel's vxlan backend framing: UDP to peer:port, 8-byte VXLAN header (I flag + VNI), inner
        /// Ethernet (dst = peer VtepMAC, src = `localVTEPMAC`, type IPv4), then the packet. Overhead 50.
        case vxlan(vni: UInt32, port: UInt16, localVTEPMAC: MACAddress)
        /// flannel's legacy udp backend: the raw IPv4 packet is the UDP payload. Overhead 28.
        case udp(port: UInt16)

        public var port: UInt16 {
            switch self {
            case .vxlan(_, let port, _): port
            case .udp(let port): port
            }
        }

        /// Bytes the outer headers add on the underlay (outer IPv4 + UDP [+ VXLAN + inner Ethernet]).
        public var overhead: Int {
            switch self {
            case .vxlan: 50
            case .udp: 28
            }
        }
    }

    public var encapsulation: Encapsulation
    /// Our PublicIP: the UDP sockets bind to it (outer source; datagrams to it are ours).
    public var localIP: IPv4Address
    /// The TUN interface name (flannel's udp backend uses `flannel0`). At most 15 bytes.
    public var tunName: String
    /// The TUN MTU: the underlay MTU minus `encapsulation.overhead`. Set on the TUN at init.
    public var mtu: Int
    /// TUN queues; one TUN→UDP and one UDP→TUN worker thread per queue. >1 uses IFF_MULTI_QUEUE.
    public var queues: Int
    /// Source address of ICMP errors written back into the TUN (net unreachable, frag needed): the
    /// address the daemon gives the TUN, `<own subnet>.0`, as flannel's udp backend does.
    public var icmpSourceIP: IPv4Address
    /// Datagrams per recvmmsg/sendmmsg call (1...64).
    public var batchSize: Int
    /// ICMP errors per second each worker may write back (token bucket, burst = the same number).
    public var icmpRateLimit: Int
    /// IFF_VNET_HDR + TUNSETOFFLOAD(TSO4|CSUM) on the TUN: the kernel hands over TCP segments up to
    /// 64 KB that are split here into MTU-size packets (sent with UDP GSO); on receive UDP GRO and
    /// TCP coalescing into GSO writes. Falls back to plain packets if the kernel refuses.
    public var offloads: Bool
    /// SO_RCVBUF/SO_SNDBUF of the UDP sockets (0 = the kernel default). 16 MB: with 4 MB, four
    /// TCP streams overflowed the receive buffer in bursts (UdpRcvbufErrors, ~5000 retransmits in
    /// 3 s); with 16 MB none. Memory is only used while datagrams wait.
    public var socketBufferBytes: Int
    /// Deliver a decapsulated packet only when its source lies in a subnet of the peer that sent
    /// it, or is that peer's own address (the BPF path's check, `--inner-source-check`).
    public var innerSourceCheck: Bool
    /// IPv6 pods over the IPv6 underlay (dual-stack and IPv6-only networks; vxlan framing only,
    /// as flannel's udp backend carries IPv4 alone). nil: IPv4 only.
    public var ipv6: UserspaceIPv6Config?

    public init(
        encapsulation: Encapsulation, localIP: IPv4Address, tunName: String, mtu: Int,
        queues: Int = 1, icmpSourceIP: IPv4Address, batchSize: Int = 32, icmpRateLimit: Int = 100,
        offloads: Bool = true, socketBufferBytes: Int = 16 << 20, innerSourceCheck: Bool = true,
        ipv6: UserspaceIPv6Config? = nil
    ) {
        self.ipv6 = ipv6
        self.encapsulation = encapsulation
        self.localIP = localIP
        self.tunName = tunName
        self.mtu = mtu
        self.queues = queues
        self.icmpSourceIP = icmpSourceIP
        self.batchSize = batchSize
        self.icmpRateLimit = icmpRateLimit
        self.offloads = offloads
        self.socketBufferBytes = socketBufferBytes
        self.innerSourceCheck = innerSourceCheck
    }

    /// The problems with this configuration, empty when it is usable.
    public func validationProblems() -> [String] {
        var problems: [String] = []
        if tunName.isEmpty || tunName.utf8.count > 15 || tunName.contains("/") || tunName.contains(" ") {
            problems.append("tunName \"\(tunName)\" must be 1...15 bytes without '/' or spaces")
        }
        if !(68...65_000).contains(mtu) { problems.append("mtu \(mtu) must be within 68...65000") }
        if !(1...64).contains(queues) { problems.append("queues \(queues) must be within 1...64") }
        if !(1...64).contains(batchSize) { problems.append("batchSize \(batchSize) must be within 1...64") }
        if icmpRateLimit < 0 { problems.append("icmpRateLimit \(icmpRateLimit) must be >= 0") }
        if encapsulation.port == 0 { problems.append("UDP port must not be 0") }
        if case .vxlan(let vni, _, let mac) = encapsulation {
            if vni >= 1 << 24 { problems.append("VNI \(vni) must fit in 24 bits") }
            if mac.isMulticast || mac.isZero { problems.append("local VTEP MAC \(mac) must be unicast and non-zero") }
        }
        if let ipv6 {
            if case .udp = encapsulation { problems.append("IPv6 needs the vxlan framing: flannel's udp backend carries IPv4 only") }
            problems += ipv6.problems
        }
        return problems
    }
}

/// Why the userspace data path could not be set up or changed. Each case names the operation, the
/// input and errno where there is one.
public enum UserspaceError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidConfig([String])
    case openTUN(name: String, queue: Int, errno: Int32)
    case setMTU(name: String, mtu: Int, errno: Int32)
    case setOffload(name: String, errno: Int32)
    case udpSocket(address: IPv4Address, port: UInt16, errno: Int32)
    case udp6Socket(address: IPv6Address, port: UInt16, errno: Int32)
    case pipe(errno: Int32)
    case threadStart(name: String, errno: Int32)
    case peerWithoutVTEPMAC(Peer)
    case ipv6PeerWithoutVTEPMAC(IPv6Peer)
    case alreadyStopped

    public var description: String {
        switch self {
        case .invalidConfig(let problems):
            "userspace data path: invalid configuration: " + problems.joined(separator: "; ")
        case .openTUN(let name, let queue, let e):
            "opening TUN \(name) queue \(queue) failed: \(errnoText(e)); check that /dev/net/tun exists "
                + "(modprobe tun), that we have CAP_NET_ADMIN, and that \(name) is not an existing non-TUN device "
                + "or a TUN opened with other flags"
        case .setMTU(let name, let mtu, let e):
            "setting MTU \(mtu) on \(name) failed: \(errnoText(e))"
        case .setOffload(let name, let e):
            "TUNSETOFFLOAD on \(name) failed: \(errnoText(e)); run without offloads"
        case .udpSocket(let address, let port, let e):
            "binding UDP \(address):\(port) failed: \(errnoText(e)); is another flanneld or a kernel vxlan "
                + "device using the port, and is \(address) an address of this network namespace?"
        case .pipe(let e):
            "creating the stop pipe failed: \(errnoText(e))"
        case .threadStart(let name, let e):
            "starting worker thread \(name) failed: \(errnoText(e))"
        case .udp6Socket(let address, let port, let e):
            "binding UDP [\(address)]:\(port) failed: \(errnoText(e)); is a kernel flannel-v6 device or another flanneld "
                + "using the port, and is \(address) an address of this network namespace?"
        case .ipv6PeerWithoutVTEPMAC(let peer):
            "IPv6 peer \(peer) has no VtepMAC: the vxlan framing needs its lease's BackendV6Data.VtepMAC"
        case .peerWithoutVTEPMAC(let peer):
            "peer \(peer) has no VtepMAC: the vxlan framing needs one (a lease of another backend type?)"
        case .alreadyStopped:
            "the userspace data path was stopped; create a new one"
        }
    }
}

extension UserspaceError {
    /// The kernel refused an offload feature (TUNSETOFFLOAD flags, IFF_VNET_HDR, UDP_GRO): worth
    /// retrying without offloads. A busy port or a missing /dev/net/tun is not.
    var isOffloadRefusal: Bool {
        switch self {
        case .setOffload: true
        case .openTUN(_, _, let e): e == EINVAL
        case .udpSocket(_, _, let e): e == ENOPROTOOPT || e == EINVAL
        default: false
        }
    }
}

func errnoText(_ e: Int32) -> String {
    "\(String(cString: strerror(e))) (errno \(e))"
}
