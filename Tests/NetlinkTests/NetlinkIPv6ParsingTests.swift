@testable import Netlink
import NetTypes
import Testing

/// IPv6 replies: the family byte decides which parser takes a message, and an fdb entry's
/// destination is read at its own length.
@Suite("Netlink parsing: IPv6") struct NetlinkIPv6ParsingTests {
    typealias P = NetlinkParsingTests
    let peer = IPv6Address("fd77::3")!
    let subnet = IPv6Subnet(cidr: "fd00:5:0:3::/64")!

    @Test("an IPv6 route reply parses as IPv6 only")
    func route() {
        var fixed: [UInt8] = [10, 64, 0, 0, 254, 3, 0, 1]
        fixed.appendU32(4)
        var oif: [UInt8] = []
        oif.appendU32(9)
        let bytes = P.message(type: 24, fixed: fixed, attributes: [(1, subnet.address.bytes), (5, subnet.address.bytes), (4, oif)])
        #expect(NetlinkSocket.parseRoute(P.parse(bytes), as: IPv6Subnet.self)
                == IPv6Route(destination: subnet, gateway: subnet.address, outputIndex: 9, onlink: true))
        #expect(NetlinkSocket.parseRoute(P.parse(bytes)) == nil, "an IPv4 dump skips it")
        for cut in 0..<bytes.count { _ = NetlinkSocket.parseRoute(P.parse(Array(bytes.prefix(cut))), as: IPv6Subnet.self) }
    }

    @Test("neighbours and fdb entries: the destination's length picks the family")
    func neighbourAndFDB() {
        var ndm: [UInt8] = [10, 0, 0, 0]
        ndm.appendI32(5)
        ndm.appendU16(0x80)
        ndm += [0, 0]
        let neigh = P.message(type: 28, fixed: ndm, attributes: [(1, subnet.address.bytes), (2, [0x0e, 0, 0, 0, 6, 3])])
        #expect(NetlinkSocket.parseNeighbour(P.parse(neigh), as: IPv6Address.self)?.address == subnet.address)
        #expect(NetlinkSocket.parseNeighbour(P.parse(neigh)) == nil)
        var fdbHeader = ndm
        fdbHeader[0] = 7
        fdbHeader[10] = 2 // NTF_SELF
        let fdb = P.message(type: 28, fixed: fdbHeader, attributes: [(2, [0x0e, 0, 0, 0, 6, 3]), (1, peer.bytes)])
        #expect(NetlinkSocket.parseFDB(P.parse(fdb), as: IPv6Address.self)?.destination == peer)
        #expect(NetlinkSocket.parseFDB(P.parse(fdb)) == nil, "an IPv4 fdb dump does not report an IPv6 remote as none")
        let plain = P.message(type: 28, fixed: fdbHeader, attributes: [(2, [0x0e, 0, 0, 0, 6, 3])])
        #expect(NetlinkSocket.parseFDB(P.parse(plain))?.destination == nil)
        #expect(NetlinkSocket.parseFDB(P.parse(plain), as: IPv6Address.self)?.destination == nil)
    }
}
