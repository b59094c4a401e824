// Choosing the underlay interface as flanneld does: each --iface (a name or one of its IPv4
// addresses) in order, else each --iface-regex (matched against the addresses first, then the
// names), else the interface of the default route. The public IP is --public-ip or the chosen
// interface's first IPv4 address. Interfaces come from getifaddrs(3), the default route from
// /proc/net/route; both are read-only views of the calling thread's network namespace.

import Glibc
import NetTypes

/// One interface with what the daemon needs from it.
public struct NetworkInterface: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var index: Int32
    public var mtu: Int
    /// IPv4 addresses with their prefix, in the kernel's order (the primary first).
    public var ipv4: [(address: IPv4Address, prefixLength: Int)]

    public init(name: String, index: Int32, mtu: Int, ipv4: [(address: IPv4Address, prefixLength: Int)]) {
        self.name = name
        self.index = index
        self.mtu = mtu
        self.ipv4 = ipv4
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.index == b.index && a.mtu == b.mtu
            && a.ipv4.map(\.address) == b.ipv4.map(\.address) && a.ipv4.map(\.prefixLength) == b.ipv4.map(\.prefixLength)
    }

    public var description: String {
        let addresses = ipv4.map { "\($0.address)/\($0.prefixLength)" }.joined(separator: ",")
        return "\(name) (\(addresses.isEmpty ? "no IPv4" : addresses))"
    }
}

/// The interface the overlay runs over, and the addresses the node uses on it.
public struct ExternalInterface: Sendable, Equatable {
    public var interface: NetworkInterface
    /// The interface's own address: the VXLAN device's local address.
    public var interfaceAddress: IPv4Address
    /// The address other nodes reach us at (--public-ip, else `interfaceAddress`); goes in the lease.
    public var publicIP: IPv4Address
    /// The L2 network the interface sits on; peers inside it qualify for DirectRouting.
    public var underlaySubnet: IPv4Subnet
}

public enum InterfaceSelectionError: Error, CustomStringConvertible, Equatable {
    case noMatch(flag: String, value: String, available: [String])
    case noIPv4(interface: String)
    case noDefaultRoute(available: [String])
    case systemCall(operation: String, errno: Int32)

    public var description: String {
        switch self {
        case let .noMatch(flag, value, available):
            "no interface matches \(flag)=\(value); interfaces here: \(Self.list(available)). "
                + "Pass --iface NAME or --iface IPv4 of one of them, or fix the pattern"
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

    /// Picks the interface as flanneld does (see the file note).
    public static func select(
        ifaces: [String], ifaceRegexes: [String], publicIP: IPv4Address?,
        interfaces: [NetworkInterface], defaultRouteInterface: String?
    ) throws(InterfaceSelectionError) -> ExternalInterface {
        let available = interfaces.filter { $0.name != "lo" || !$0.ipv4.isEmpty }.map(\.description)
        var chosen: NetworkInterface?
        var firstFailure: InterfaceSelectionError?
        if !ifaces.isEmpty {
            for wanted in ifaces {
                if let ip = IPv4Address(wanted) {
                    chosen = interfaces.first { $0.ipv4.contains { $0.address == ip } }
                } else {
                    chosen = interfaces.first { $0.name == wanted }
                }
                if chosen != nil { break }
                firstFailure = firstFailure ?? .noMatch(flag: "--iface", value: wanted, available: available)
            }
            guard let chosen else { throw firstFailure! }
            return try external(chosen, publicIP: publicIP, preferred: ifaces.compactMap { IPv4Address($0) })
        }
        if !ifaceRegexes.isEmpty {
            for pattern in ifaceRegexes {
                // An invalid pattern was rejected by the option's validate(); treat it as no match here.
                guard let regex = try? Regex(pattern) else { continue }
                // flanneld matches the addresses first, then the names.
                chosen = interfaces.first { $0.ipv4.contains { $0.address.description.contains(regex) } }
                    ?? interfaces.first { $0.name.contains(regex) }
                if chosen != nil { break }
                firstFailure = firstFailure ?? .noMatch(flag: "--iface-regex", value: pattern, available: available)
            }
            guard let chosen else { throw firstFailure! }
            return try external(chosen, publicIP: publicIP, preferred: [])
        }
        guard let name = defaultRouteInterface, let found = interfaces.first(where: { $0.name == name }) else {
            throw .noDefaultRoute(available: available)
        }
        return try external(found, publicIP: publicIP, preferred: [])
    }

    /// Reads this namespace's interfaces and default route, then `select`.
    public static func selectFromSystem(_ options: InterfaceOptions) throws(InterfaceSelectionError) -> ExternalInterface {
        let interfaces = try listInterfaces()
        let routeText = readSmallFile("/proc/net/route") ?? ""
        return try select(ifaces: options.iface, ifaceRegexes: options.ifaceRegex, publicIP: options.publicIP,
                          interfaces: interfaces, defaultRouteInterface: defaultRouteInterface(procNetRoute: routeText))
    }

    private static func external(_ interface: NetworkInterface, publicIP: IPv4Address?,
                                 preferred: [IPv4Address]) throws(InterfaceSelectionError) -> ExternalInterface {
        // --iface given as an IP means that very address, not the interface's first one.
        let entry = interface.ipv4.first { preferred.contains($0.address) } ?? interface.ipv4.first
        guard let entry else { throw .noIPv4(interface: interface.name) }
        return ExternalInterface(
            interface: interface, interfaceAddress: entry.address, publicIP: publicIP ?? entry.address,
            underlaySubnet: IPv4Subnet(containing: entry.address, prefixLength: entry.prefixLength))
    }
}

/// Reads a small text file (procfs/sysfs) with plain syscalls; nil if it cannot be read.
func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while data.count < limit {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        data.append(contentsOf: buffer[0..<n])
    }
    return String(decoding: data, as: UTF8.self)
}
