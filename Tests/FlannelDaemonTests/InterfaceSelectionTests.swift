import Dataplane
import FlannelDaemon
import Glibc
import NetTypes
import Testing

extension DaemonSuite {
@Suite("Interface selection as flanneld does it")
struct InterfaceSelectionTests {
    // A fixed interface list for the selection rules; the system tests below read the real one.
    let interfaces = [
        NetworkInterface(name: "lo", index: 1, mtu: 65536, ipv4: [(IPv4Address(127, 0, 0, 1), 8)]),
        NetworkInterface(name: "eth0", index: 2, mtu: 1500, ipv4: [(IPv4Address(192, 0, 2, 2), 24), (IPv4Address(192, 0, 2, 9), 24)]),
        NetworkInterface(name: "ens5", index: 3, mtu: 9001, ipv4: [(IPv4Address(10, 20, 0, 4), 16)]),
        NetworkInterface(name: "bare0", index: 4, mtu: 1500, ipv4: []),
    ]

    @Test("--iface by name; the public IP is the first IPv4")
    func byName() throws {
        let e = try InterfaceSelection.select(ifaces: ["ens5"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: "eth0")
        #expect(e.interface.name == "ens5")
        #expect(e.interfaceAddress == IPv4Address(10, 20, 0, 4))
        #expect(e.publicIP == IPv4Address(10, 20, 0, 4))
        #expect(e.underlaySubnet == IPv4Subnet(cidr: "10.20.0.0/16"))
    }

    @Test("--iface by IP picks that very address")
    func byIP() throws {
        let e = try InterfaceSelection.select(ifaces: ["192.0.2.9"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(e.interface.name == "eth0")
        #expect(e.interfaceAddress == IPv4Address(192, 0, 2, 9))
    }

    @Test("several --iface: the first that exists wins")
    func firstFound() throws {
        let e = try InterfaceSelection.select(ifaces: ["eth9", "10.9.9.9", "eth0"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(e.interface.name == "eth0")
    }

    @Test("--public-ip overrides the advertised address, not the local one")
    func publicIP() throws {
        let e = try InterfaceSelection.select(ifaces: ["eth0"], ifaceRegexes: [], publicIP: IPv4Address(203, 0, 113, 5), interfaces: interfaces, defaultRouteInterface: nil)
        #expect(e.interfaceAddress == IPv4Address(192, 0, 2, 2))
        #expect(e.publicIP == IPv4Address(203, 0, 113, 5))
    }

    @Test("--iface-regex matches addresses first, then names")
    func regex() throws {
        let byAddress = try InterfaceSelection.select(ifaces: [], ifaceRegexes: ["^10\\.20\\."], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byAddress.interface.name == "ens5")
        let byName = try InterfaceSelection.select(ifaces: [], ifaceRegexes: ["nomatch", "^eth"], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(byName.interface.name == "eth0")
    }

    @Test("--iface that matches nothing falls back to --iface-regex, as flanneld does")
    func ifaceFallsBackToRegex() throws {
        let e = try InterfaceSelection.select(ifaces: ["eth9", "bare0"], ifaceRegexes: ["^ens"], publicIP: nil,
                                              interfaces: interfaces, defaultRouteInterface: "eth0")
        #expect(e.interface.name == "ens5")
        #expect(e.chosenBy == "--iface-regex=^ens")
        // A matching --iface still wins over the regex.
        let first = try InterfaceSelection.select(ifaces: ["eth0"], ifaceRegexes: ["^ens"], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(first.interface.name == "eth0" && first.chosenBy == "--iface=eth0")
    }

    @Test("--iface-regex matching an address uses that address, not the interface's first")
    func regexUsesMatchedAddress() throws {
        let e = try InterfaceSelection.select(ifaces: [], ifaceRegexes: ["\\.9$"], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        #expect(e.interface.name == "eth0")
        #expect(e.interfaceAddress == IPv4Address(192, 0, 2, 9) && e.publicIP == IPv4Address(192, 0, 2, 9))
    }

    @Test("--iface-can-reach: after --iface and --iface-regex, the interface and source of the route to the address")
    func canReach() throws {
        let target = IPv4Address(10, 20, 9, 9)
        let route: (IPv4Address) throws(InterfaceSelectionError) -> RouteToAddress? = { address in
            address == target ? RouteToAddress(interfaceIndex: 3, source: IPv4Address(10, 20, 0, 4)) : nil
        }
        let e = try InterfaceSelection.select(ifaces: ["eth9"], ifaceRegexes: ["^wlan"], canReach: target, publicIP: nil,
                                              interfaces: interfaces, defaultRouteInterface: "eth0", routeTo: route)
        #expect(e.interface.name == "ens5" && e.interfaceAddress == IPv4Address(10, 20, 0, 4))
        #expect(e.chosenBy == "--iface-can-reach=10.20.9.9")
        do {
            _ = try InterfaceSelection.select(ifaces: [], ifaceRegexes: [], canReach: IPv4Address(198, 51, 100, 1), publicIP: nil,
                                              interfaces: interfaces, defaultRouteInterface: "eth0", routeTo: route)
            Issue.record("no route to --iface-can-reach must be an error, not the default route")
        } catch {
            #expect(error.description.contains("--iface-can-reach=198.51.100.1: no route to it"), "\(error)")
        }
    }

    @Test("given flags that all miss are an error naming each miss; the default route is not used then")
    func allMiss() {
        do {
            _ = try InterfaceSelection.select(ifaces: ["eth9"], ifaceRegexes: ["^wlan"], publicIP: nil, interfaces: interfaces, defaultRouteInterface: "eth0")
            Issue.record("must not fall back to the default route")
        } catch {
            #expect(error.description.contains("--iface=eth9: no such interface"), "\(error)")
            #expect(error.description.contains("--iface-regex=^wlan: matches no address or name"), "\(error)")
        }
    }

    @Test("no flags: the default route's interface")
    func defaultRoute() throws {
        let e = try InterfaceSelection.select(ifaces: [], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: "ens5")
        #expect(e.interface.name == "ens5")
    }

    @Test("errors say what exists and what to do")
    func errors() {
        #expect(throws: InterfaceSelectionError.self) {
            try InterfaceSelection.select(ifaces: ["eth9"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        }
        do {
            _ = try InterfaceSelection.select(ifaces: ["eth9"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
        } catch {
            #expect(error.description.contains("--iface=eth9"))
            #expect(error.description.contains("eth0 (192.0.2.2/24,192.0.2.9/24)"))
            #expect(error.description.contains("Pass --iface"))
        }
        do {
            _ = try InterfaceSelection.select(ifaces: ["bare0"], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
            Issue.record("an interface without IPv4 must be refused")
        } catch {
            #expect(error.description.contains("--iface=bare0: interface bare0 has no IPv4 address"), "\(error)")
        }
        do {
            _ = try InterfaceSelection.select(ifaces: [], ifaceRegexes: [], publicIP: nil, interfaces: interfaces, defaultRouteInterface: nil)
            Issue.record("no default route must be an error")
        } catch {
            #expect(error.description.contains("no IPv4 default route"))
        }
    }

    @Test("/proc/net/route: the default route with the lowest metric, routes that are down ignored")
    func procNetRoute() {
        let text = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
            eth1\t00000000\t010200C0\t0002\t0\t0\t10\t00000000\t0\t0\t0
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            """
        #expect(InterfaceSelection.defaultRouteInterface(procNetRoute: text) == "eth0")
        #expect(InterfaceSelection.defaultRouteInterface(procNetRoute: "Iface\tDestination\n") == nil)
    }

    @Test("the real interface list has lo with 127.0.0.1 and the real MTU")
    func systemList() throws {
        let list = try InterfaceSelection.listInterfaces()
        let lo = try #require(list.first { $0.name == "lo" })
        #expect(lo.ipv4.contains { $0.address == IPv4Address(127, 0, 0, 1) && $0.prefixLength == 8 })
        #expect(lo.index == Int32(if_nametoindex("lo")))
        #expect(lo.mtu == 65536)
    }

    @Test("the real selection: --iface lo and --iface 127.0.0.1 agree")
    func systemSelect() throws {
        let byName = try InterfaceOptions.parse(["--iface", "lo"])
        let byIP = try InterfaceOptions.parse(["--iface=127.0.0.1"])
        let a = try InterfaceSelection.selectFromSystem(byName)
        var b = try InterfaceSelection.selectFromSystem(byIP)
        #expect(a.chosenBy == "--iface=lo" && b.chosenBy == "--iface=127.0.0.1")
        b.chosenBy = a.chosenBy
        #expect(a == b)
        #expect(a.publicIP == IPv4Address(127, 0, 0, 1))
    }

    @Test("the real default route interface is the one `ip route show default` names")
    func systemDefaultRoute() throws {
        let fromIP = try runTool("/usr/sbin/ip", ["-4", "route", "show", "default"])
        let words = fromIP.split(separator: " ").map(String.init)
        let expected = words.firstIndex(of: "dev").map { words[$0 + 1] }
        let procText = try #require(readText("/proc/net/route"))
        #expect(InterfaceSelection.defaultRouteInterface(procNetRoute: procText) == expected)
    }
}
}
