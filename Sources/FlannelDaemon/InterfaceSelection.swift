// Choosing the underlay interface as flanneld does: each --iface (a name or one of its IPv4
// addresses) in order; if none of them is usable, each --iface-regex in order (matched against the
// addresses first — the matching address is the one used — then the names); if still none, the
// interface that the route to --iface-can-reach leaves by, with the route's source address. Only
// when none of the three flags is given does the interface of the default route count. An entry that
// names an interface without IPv4 is a miss like any other (flanneld logs it and tries the next).
// The public IP is --public-ip or the chosen address. Interfaces come from getifaddrs(3), the default
// route from /proc/net/route, the --iface-can-reach route from netlink (`ip route get`); all are
// read-only views of the calling thread's network namespace.

import Glibc
import Dataplane
import NetTypes
import RuntimeSupport

public enum InterfaceSelectionError: Error, CustomStringConvertible, Equatable {
    case noMatch(flag: String, value: String, available: [String])
    /// Every --iface, --iface-regex and --iface-can-reach given missed, each with why.
    case noneMatched(misses: [String], available: [String])
    case noIPv4(interface: String)
    case noDefaultRoute(available: [String])
    case systemCall(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case let .noMatch(flag, value, available):
            "no interface matches \(flag)=\(value); interfaces here: \(Self.list(available)). "
                + "Pass --iface NAME or --iface IPv4 of one of them, or fix the pattern"
        case let .noneMatched(misses, available):
            "no interface matches the --iface, --iface-regex or --iface-can-reach given (\(misses.joined(separator: "; "))); "
                + "interfaces here: \(Self.list(available)). Pass --iface NAME or --iface IPv4 of one of them, or fix the pattern"
        case let .noIPv4(interface):
            "interface \(interface) has no IPv4 address: give it one, or choose another with --iface"
        case let .noDefaultRoute(available):
            "no --iface or --iface-regex given and there is no IPv4 default route to take the interface from; "
                + "interfaces here: \(Self.list(available)). Pass --iface NAME"
        case let .systemCall(operation, errno):
            "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }

    private static func list(_ names: [String]) -> String { names.isEmpty ? "none" : names.joined(separator: ", ") }
}

public enum InterfaceSelection {
    /// All interfaces of this network namespace that are present in getifaddrs, with IPv4 addresses.
    public static func listInterfaces() throws(InterfaceSelectionError) -> [NetworkInterface] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0 else { throw .systemCall(operation: "getifaddrs", errno: errno) }
        defer { freeifaddrs(head) }
        var order: [String] = []
        var addresses: [String: [(IPv4Address, Int)]] = [:]
        var cursor = head
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            let name = String(cString: entry.pointee.ifa_name)
            if addresses[name] == nil {
                order.append(name)
                addresses[name] = []
            }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            let ip = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                IPv4Address(UInt32(bigEndian: $0.pointee.sin_addr.s_addr))
            }
            var prefix = 32
            if let mask = entry.pointee.ifa_netmask {
                let bits = mask.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    UInt32(bigEndian: $0.pointee.sin_addr.s_addr)
                }
                prefix = bits.nonzeroBitCount
            }
            addresses[name]?.append((ip, prefix))
        }
        return order.map { name in
            NetworkInterface(name: name, index: Int32(bitPattern: if_nametoindex(name)), mtu: readMTU(name),
                             ipv4: (addresses[name] ?? []).map { (address: $0.0, prefixLength: $0.1) })
        }
    }

    /// The MTU from sysfs; 0 when unreadable (then the caller says so).
    static func readMTU(_ name: String) -> Int {
        guard let text = readSmallFile("/sys/class/net/\(name)/mtu") else { return 0 }
        return Int(text.split(separator: "\n").first ?? "") ?? 0
    }

    /// The interface of the IPv4 default route with the lowest metric, from /proc/net/route text.
    public static func defaultRouteInterface(procNetRoute text: String) -> String? {
        var best: (name: String, metric: Int)?
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 8, let flags = UInt32(fields[3], radix: 16), let metric = Int(fields[6]) else { continue }
            // RTF_UP = 1; destination and mask 0 = the default route.
            guard fields[1] == "00000000", fields[7] == "00000000", flags & 1 == 1 else { continue }
            if best == nil || metric < best!.metric { best = (String(fields[0]), metric) }
        }
        return best?.name
    }

    /// Picks the interface as flanneld does (see the file note). `routeTo` answers `ip route get`
    /// for --iface-can-reach (nil: no route).
    public static func select(
        ifaces: [String], ifaceRegexes: [String], canReach: IPv4Address? = nil, publicIP: IPv4Address?,
        interfaces: [NetworkInterface], defaultRouteInterface: String?,
        routeTo: (IPv4Address) throws(InterfaceSelectionError) -> RouteToAddress? = { _ in nil }
    ) throws(InterfaceSelectionError) -> ExternalInterface {
        let available = interfaces.filter { $0.name != "lo" || !$0.ipv4.isEmpty }.map(\.description)
        guard !ifaces.isEmpty || !ifaceRegexes.isEmpty || canReach != nil else {
            guard let name = defaultRouteInterface, let found = interfaces.first(where: { $0.name == name }) else {
                throw .noDefaultRoute(available: available)
            }
            return try external(found, address: nil, publicIP: publicIP, chosenBy: "the default route")
        }
        var misses: [String] = []
        func usable(_ interface: NetworkInterface?, address: IPv4Address?, flag: String) -> ExternalInterface? {
            guard let interface else {
                misses.append("\(flag): no such interface")
                return nil
            }
            do {
                return try external(interface, address: address, publicIP: publicIP, chosenBy: flag)
            } catch {
                misses.append("\(flag): \(error)")
                return nil
            }
        }
        for wanted in ifaces {
            let flag = "--iface=\(wanted)"
            if let ip = IPv4Address(wanted) {
                if let found = usable(interfaces.first { $0.ipv4.contains { $0.address == ip } }, address: ip, flag: flag) { return found }
            } else if let found = usable(interfaces.first { $0.name == wanted }, address: nil, flag: flag) {
                return found
            }
        }
        for pattern in ifaceRegexes {
            let flag = "--iface-regex=\(pattern)"
            // An invalid pattern was rejected by the option's validate(); here it matches nothing.
            guard let regex = try? Regex(pattern) else {
                misses.append("\(flag): not a valid regular expression")
                continue
            }
            // flanneld matches the addresses first (and uses the matching one), then the names.
            for interface in interfaces {
                if let match = interface.ipv4.first(where: { $0.address.description.contains(regex) }) {
                    return try external(interface, address: match.address, publicIP: publicIP, chosenBy: flag)
                }
            }
            if let byName = interfaces.first(where: { $0.name.contains(regex) }) {
                if let found = usable(byName, address: nil, flag: flag) { return found }
            } else {
                misses.append("\(flag): matches no address or name")
            }
        }
        if let canReach {
            let flag = "--iface-can-reach=\(canReach)"
            if let route = try routeTo(canReach) {
                if let found = usable(interfaces.first { $0.index == route.interfaceIndex }, address: route.source, flag: flag) {
                    return found
                }
            } else {
                misses.append("\(flag): no route to it")
            }
        }
        throw .noneMatched(misses: misses, available: available)
    }

    /// Reads this namespace's interfaces and default route, then `select`.
    public static func selectFromSystem(_ options: InterfaceOptions) throws(InterfaceSelectionError) -> ExternalInterface {
        let interfaces = try listInterfaces()
        let routeText = readSmallFile("/proc/net/route") ?? ""
        return try select(ifaces: options.iface, ifaceRegexes: options.ifaceRegex, canReach: options.canReach,
                          publicIP: options.publicIP, interfaces: interfaces,
                          defaultRouteInterface: defaultRouteInterface(procNetRoute: routeText),
                          routeTo: routeFromKernel)
    }

    /// `ip route get <address>`.
    static func routeFromKernel(_ address: IPv4Address) throws(InterfaceSelectionError) -> RouteToAddress? {
        do {
            return try Interfaces.route(to: address)
        } catch {
            throw .systemCall(operation: "route lookup for --iface-can-reach=\(address) (\(error.operation))", errno: error.errorNumber)
        }
    }

    private static func external(_ interface: NetworkInterface, address: IPv4Address?, publicIP: IPv4Address?,
                                 chosenBy: String) throws(InterfaceSelectionError) -> ExternalInterface {
        // A given address (--iface as an IP, the regex's match, the route's source) is used as it
        // is; otherwise the interface's first IPv4 address.
        let entry = interface.ipv4.first { $0.address == address } ?? (address == nil ? interface.ipv4.first : nil)
        guard let entry else {
            guard let address else { throw .noIPv4(interface: interface.name) }
            // A route's source address that is not on the interface (policy routing): take it with the host prefix.
            return ExternalInterface(interface: interface, interfaceAddress: address, publicIP: publicIP ?? address,
                                     underlaySubnet: IPv4Subnet(containing: address, prefixLength: 32), chosenBy: chosenBy)
        }
        return ExternalInterface(
            interface: interface, interfaceAddress: entry.address, publicIP: publicIP ?? entry.address,
            underlaySubnet: IPv4Subnet(containing: entry.address, prefixLength: entry.prefixLength), chosenBy: chosenBy)
    }
}

/// Reads a small text file (procfs/sysfs) with plain syscalls; nil if it cannot be read.
func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    SystemCall.readSmallFile(path, limit: limit)
}
