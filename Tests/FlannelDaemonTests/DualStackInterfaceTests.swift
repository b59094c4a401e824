import Dataplane
import FlannelDaemon
import Glibc
import NetTypes
import Testing

extension DaemonSuite {
@Suite("Interface selection for IPv6 (dual-stack and IPv6-only), as flanneld does it")
struct DualStackInterfaceTests {
    let interfaces = [
        NetworkInterface(name: "lo", index: 1, mtu: 65536, ipv4: [(IPv4Address(127, 0, 0, 1), 8)], ipv6: [(IPv6Address("::1")!, 128)]),
        NetworkInterface(name: "eth0", index: 2, mtu: 1500, ipv4: [(IPv4Address(192, 0, 2, 2), 24)],
                         ipv6: [(IPv6Address("fe80::2")!, 64), (IPv6Address("2001:db8::2")!, 64), (IPv6Address("2001:db8::9")!, 64)]),
        NetworkInterface(name: "ens5", index: 3, mtu: 9001, ipv4: [(IPv4Address(10, 20, 0, 4), 16)], ipv6: [(IPv6Address("fe80::5")!, 64)]),
        NetworkInterface(name: "v4only", index: 4, mtu: 1500, ipv4: [(IPv4Address(10, 30, 0, 4), 16)]),
    ]

    @Test("an interface's IPv6 address: the first global one, else link-local")
    func preferredIPv6() {
        #expect(interfaces[1].preferredIPv6 == IPv6Address("2001:db8::2"))
        #expect(interfaces[2].preferredIPv6 == IPv6Address("fe80::5"))
        #expect(interfaces[3].preferredIPv6 == nil)
    }

    @Test("dual-stack: the IPv4 interface's IPv6 address; --public-ipv6 on it is used as the local address too")
    func dualStack() throws {
        let v4 = try InterfaceSelection.select(ifaces: ["eth0"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        let plain = try InterfaceSelection.addingIPv6(to: v4, publicIPv6: nil)
        #expect(plain.interfaceIPv6Address == IPv6Address("2001:db8::2") && plain.publicIPv6 == IPv6Address("2001:db8::2"))
        let own = try InterfaceSelection.addingIPv6(to: v4, publicIPv6: IPv6Address("2001:db8::9"))
        #expect(own.interfaceIPv6Address == IPv6Address("2001:db8::9") && own.publicIPv6 == IPv6Address("2001:db8::9"))
        // A public address elsewhere (NAT): advertised, not used as the source.
        let nat = try InterfaceSelection.addingIPv6(to: v4, publicIPv6: IPv6Address("2001:db8:ffff::1"))
        #expect(nat.interfaceIPv6Address == IPv6Address("2001:db8::2") && nat.publicIPv6 == IPv6Address("2001:db8:ffff::1"))
        // --iface given as an IPv6 address names the interface holding it.
        let byV6 = try InterfaceSelection.select(ifaces: ["2001:db8::9"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byV6.interface.name == "eth0" && byV6.interfaceAddress == IPv4Address(192, 0, 2, 2))
        let none = try InterfaceSelection.select(ifaces: ["v4only"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(throws: InterfaceSelectionError.noIPv6(interface: "v4only")) { try InterfaceSelection.addingIPv6(to: none, publicIPv6: nil) }
        #expect(InterfaceSelectionError.noIPv6(interface: "v4only").description.contains("EnableIPv6"))
    }

    @Test("IPv6-only: --iface (name or IPv6), --iface-regex over IPv6 addresses then names, else the IPv6 default route")
    func ipv6Only() throws {
        let byName = try InterfaceSelection.selectIPv6Only(ifaces: ["eth0"], ifaceRegexes: [], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byName.interfaceIPv6Address == IPv6Address("2001:db8::2") && byName.publicIPv6 == IPv6Address("2001:db8::2"))
        #expect(byName.publicIP == IPv4Address(0))
        let byIP = try InterfaceSelection.selectIPv6Only(ifaces: ["nope", "2001:db8::9"], ifaceRegexes: [], publicIPv6: IPv6Address("2001:db8:1::1"),
                                                        interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byIP.interface.name == "eth0" && byIP.interfaceIPv6Address == IPv6Address("2001:db8::9") && byIP.publicIPv6 == IPv6Address("2001:db8:1::1"))
        let byRegex = try InterfaceSelection.selectIPv6Only(ifaces: [], ifaceRegexes: ["^2001:db8::9$"], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byRegex.interfaceIPv6Address == IPv6Address("2001:db8::9"))
        let byRegexName = try InterfaceSelection.selectIPv6Only(ifaces: [], ifaceRegexes: ["^ens"], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byRegexName.interface.name == "ens5" && byRegexName.interfaceIPv6Address == IPv6Address("fe80::5"))
        let byDefault = try InterfaceSelection.selectIPv6Only(ifaces: [], ifaceRegexes: [], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: "eth0")
        #expect(byDefault.chosenBy == "the IPv6 default route")
        #expect(throws: InterfaceSelectionError.self) {
            try InterfaceSelection.selectIPv6Only(ifaces: ["v4only"], ifaceRegexes: [], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: nil)
        }
        #expect(throws: InterfaceSelectionError.self) {
            try InterfaceSelection.selectIPv6Only(ifaces: [], ifaceRegexes: [], publicIPv6: nil, interfaces: interfaces, defaultRouteInterface: nil)
        }
    }

    @Test("the IPv6 default route from /proc/net/ipv6_route: usable routes only, lowest metric")
    func ipv6DefaultRoute() {
        let text = """
            20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003     ens5
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000200 00000001 00000000 00000003     eth0
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
            """
        #expect(InterfaceSelection.ipv6DefaultRouteInterface(procNetIPv6Route: text) == "eth0")
        #expect(InterfaceSelection.ipv6DefaultRouteInterface(procNetIPv6Route: "") == nil)
    }

    @Test("this namespace's interfaces carry their IPv6 addresses (lo has ::1)")
    func systemInterfacesHaveIPv6() throws {
        let lo = try InterfaceSelection.listInterfaces().first { $0.name == "lo" }
        // A kernel without IPv6 on lo is possible; when there is one, it is ::1/128.
        if let v6 = lo?.ipv6.first { #expect(v6.address == IPv6Address("::1") && v6.prefixLength == 128) }
    }
}
}
