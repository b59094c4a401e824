import NetTypes
import Testing

@Suite struct NetTypesTests {
    @Test func parsesAndPrintsAddresses() {
        #expect(IPv4Address("10.5.52.0")?.description == "10.5.52.0")
        #expect(IPv4Address("10.5.52.0")?.bytes == [10, 5, 52, 0])
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", "1..2.3", " 1.2.3.4"] {
            #expect(IPv4Address(bad) == nil, "\(bad) must not parse")
        }
    }

    @Test func parsesSubnets() throws {
        let s = try #require(IPv4Subnet(cidr: "10.5.0.0/16"))
        #expect(s.contains(IPv4Address("10.5.255.1")!))
        #expect(!s.contains(IPv4Address("10.6.0.1")!))
        #expect(IPv4Subnet(cidr: "10.5.0.1/16") == nil, "host bits set")
        #expect(IPv4Subnet(cidr: "10.5.0.0/33") == nil)
        #expect(IPv4Subnet(leaseKey: "10.5.52.0-24")?.description == "10.5.52.0/24")
        #expect(IPv4Subnet(leaseKey: "10.5.52.0-24")?.leaseKey == "10.5.52.0-24")
        #expect(IPv4Subnet(cidr: "0.0.0.0/0")?.contains(IPv4Address("8.8.8.8")!) == true)
    }

    @Test func parsesMACs() {
        #expect(MACAddress("C6:D2:32:6f:8f:44")?.description == "c6:d2:32:6f:8f:44")
        #expect(MACAddress("c6:d2:32:6f:8f") == nil)
        #expect(MACAddress("c6:d2:32:6f:8f:4g") == nil)
        let r = MACAddress.randomLocal()
        #expect(!r.isMulticast && r.bytes[0] & 2 == 2)
    }
}

@Suite struct IPv6NetTypesTests {
    @Test func subnetArithmetic() throws {
        let s = try #require(IPv6Subnet(cidr: "fd00:5:0:3::/64"))
        #expect(s.host(1).description == "fd00:5:0:3::1")
        #expect(s.last.description == "fd00:5:0:3:ffff:ffff:ffff:ffff")
        #expect(s.contains(IPv6Address("fd00:5:0:3:1::1")!) && !s.contains(IPv6Address("fd00:5:0:4::")!))
        #expect(IPv6Subnet(cidr: "fd00:5:0:3::1/64") == nil, "host bits set")
        #expect(IPv6Subnet(cidr: "fd00::/129") == nil)
        #expect(IPv6Subnet(containing: IPv6Address("fd00:5:0:3:1::1")!, prefixLength: 64) == s)
        #expect(try #require(IPv6Subnet(cidr: "fd00:5::/48")).overlaps(s))
        #expect(IPv6Subnet(cidr: "::/0")!.contains(IPv6Address("2001:db8::1")!))
        #expect(IPv6Address("fe80::1")!.isLinkLocal && IPv6Address("ff02::1")!.isMulticast && IPv6Address("::1")!.isLoopback)
        #expect(IPv6Address(bytes: IPv6Address("fd00::1")!.bytes) == IPv6Address("fd00::1"))
        #expect(IPv6Address("fd00::1")! < IPv6Address("fd00::2")!)
        #expect(IPv6Address.unspecifiedAddress == IPv6Address("::") && IPv4Address.unspecifiedAddress == IPv4Address(0))
    }
}
