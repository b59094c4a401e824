@testable import Netlink
import NetTypes
import Testing

/// Parsing of kernel replies must never trap on short or malformed input (a crash kills the whole
/// test process, and the daemon): these run without root.
@Suite("Netlink parsing") struct NetlinkParsingTests {
    static func message(type: UInt16, fixed: [UInt8], attributes: [(UInt16, [UInt8])]) -> [UInt8] {
        var body = fixed
        while body.count % 4 != 0 { body.append(0) }
        for (t, v) in attributes {
            var a: [UInt8] = []
            a.appendU16(UInt16(4 + v.count))
            a.appendU16(t)
            a += v
            while a.count % 4 != 0 { a.append(0) }
            body += a
        }
        var m: [UInt8] = []
        m.appendU32(UInt32(16 + body.count))
        m.appendU16(type)
        m.appendU16(0)
        m.appendU32(1)
        m.appendU32(0)
        return m + body
    }

    static func parse(_ bytes: [UInt8]) -> NetlinkMessage {
        bytes.withUnsafeBytes { NetlinkMessage(bytes: $0) }
    }

    @Test("a route reply parses: destination, gateway, device, onlink, table")
    func routeReply() {
        var fixed: [UInt8] = [2, 24, 0, 0, 254, 3, 0, 1]
        fixed.appendU32(4) // RTNH_F_ONLINK
        var oif: [UInt8] = []
        oif.appendU32(7)
        let bytes = Self.message(type: 24, fixed: fixed, attributes: [(1, [10, 5, 2, 0]), (5, [10, 5, 2, 0]), (4, oif)])
        let r = NetlinkSocket.parseRoute(Self.parse(bytes))
        #expect(r == Route(destination: IPv4Subnet(cidr: "10.5.2.0/24")!, gateway: IPv4Address("10.5.2.0")!, outputIndex: 7, onlink: true))
    }

    @Test("truncated and malformed replies are skipped, not trapped on")
    func malformed() {
        var fixed: [UInt8] = [2, 24, 0, 0, 254, 3, 0, 1]
        fixed.appendU32(0)
        let good = Self.message(type: 24, fixed: fixed, attributes: [(1, [10, 5, 2, 0]), (5, [10, 5, 2, 0])])
        for cut in 0..<good.count {
            _ = NetlinkSocket.parseRoute(Self.parse(Array(good.prefix(cut))))
            _ = NetlinkSocket.parseLink(Self.parse(Array(good.prefix(cut))))
            _ = NetlinkSocket.parseNeighbour(Self.parse(Array(good.prefix(cut))))
            _ = NetlinkSocket.parseFDB(Self.parse(Array(good.prefix(cut))))
            _ = NetlinkSocket.parseAddress(Self.parse(Array(good.prefix(cut))))
            _ = Self.parse(Array(good.prefix(cut))).errorPayload()
        }
        // Wrong-sized address attributes and an attribute whose length runs past the end.
        let odd = Self.message(type: 24, fixed: fixed, attributes: [(1, [10, 5, 2]), (5, [1, 2, 3, 4, 5, 6, 7])])
        #expect(NetlinkSocket.parseRoute(Self.parse(odd))?.gateway == nil)
        var overrun = good
        overrun[28] = 0xff // first attribute's length
        #expect(NetlinkSocket.parseRoute(Self.parse(overrun))?.destination.prefixLength == 24)
        // A prefix length over 32 is rejected.
        var bad = good
        bad[17] = 40
        #expect(NetlinkSocket.parseRoute(Self.parse(bad)) == nil)
    }

    @Test("a vxlan link reply parses its IFLA_INFO_DATA")
    func vxlanLink() {
        var fixed: [UInt8] = [0, 0, 1, 0]
        fixed.appendI32(5)
        fixed.appendU32(0x1043)
        fixed.appendU32(0)
        func nested(_ attrs: [(UInt16, [UInt8])]) -> [UInt8] {
            var out: [UInt8] = []
            for (t, v) in attrs {
                out.appendU16(UInt16(4 + v.count)); out.appendU16(t); out += v
                while out.count % 4 != 0 { out.append(0) }
            }
            return out
        }
        var vni: [UInt8] = []
        vni.appendU32(1)
        var link: [UInt8] = []
        link.appendU32(2)
        let data = nested([(1, vni), (3, link), (4, [192, 168, 77, 1]), (7, [0]), (15, [0x21, 0x18])])
        let info = nested([(1, Array("vxlan\0".utf8)), (2 | 0x8000, data)])
        var mtu: [UInt8] = []
        mtu.appendU32(1450)
        let bytes = Self.message(type: 16, fixed: fixed, attributes: [
            (3, Array("flannel.1\0".utf8)), (4, mtu), (1, [0x0e, 1, 2, 3, 4, 5]), (18 | 0x8000, info),
        ])
        let l = NetlinkSocket.parseLink(Self.parse(bytes))
        #expect(l?.name == "flannel.1" && l?.mtu == 1450 && l?.isUp == true && l?.kind == "vxlan")
        #expect(l?.vxlan == VXLANInfo(vni: 1, local: IPv4Address("192.168.77.1")!, port: 8472, learning: false, underlayIndex: 2))
    }

    @Test("error texts name the device instead of its index, without mangling longer numbers")
    func deviceNames() {
        #expect("10.5.2.0/24 via 10.5.2.0 dev #1 onlink".replacingDeviceIndex(1, with: "flannel.1") == "10.5.2.0/24 via 10.5.2.0 dev flannel.1 onlink")
        #expect("dev #12".replacingDeviceIndex(1, with: "x") == "dev #12")
        let e = NetlinkError(operation: "RTM_NEWROUTE", object: "10.5.2.0/24 via 10.5.2.0 dev flannel.1", errno: 17)
        #expect(e.description == "RTM_NEWROUTE 10.5.2.0/24 via 10.5.2.0 dev flannel.1: File exists (errno 17)")
        #expect(NetlinkError(operation: "socket", object: "", errno: 1).description.contains("CAP_NET_ADMIN"))
    }
}
