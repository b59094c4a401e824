// Choosing the underlay ("external") interface the way flanneld does, from the kernel's own
// tables over netlink:
// - `--iface` values, tried in order; each is an interface name or an IPv4 address held by one;
//   the first that resolves wins;
// - else `--iface-regex`, matched first against every interface's IPv4 addresses, then against
//   interface names;
// - else the interface of the default route (main table).
// The node's PublicIP is then the interface's first IPv4 address unless `--public-ip` says otherwise
// (that override is the caller's business).

import NetTypes
import Netlink

/// The interface VXLAN packets leave and arrive on, with its address.
public struct ExternalInterface: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var name: String
    public var mtu: Int
    /// The interface's IPv4 address that was matched, or its first one.
    public var address: IPv4Address
    public var prefixLength: Int

    public init(index: Int32, name: String, mtu: Int, address: IPv4Address, prefixLength: Int) {
        self.index = index; self.name = name; self.mtu = mtu; self.address = address; self.prefixLength = prefixLength
    }

    public var description: String { "\(name) (ifindex \(index), \(address)/\(prefixLength), mtu \(mtu))" }

    /// Finds the interface; see the file's note for the order. Throws `noExternalInterface` with
    /// what was tried when nothing matches.
    public static func find(
        ifaces: [String] = [], ifaceRegex: String? = nil, netlink nl: inout NetlinkSocket
    ) throws(OverlayError) -> ExternalInterface {
        do {
            let links = try nl.links()
            let addresses = try nl.addresses()
            func make(_ link: LinkInfo, _ address: AddressInfo?) -> ExternalInterface? {
                guard let a = address ?? addresses.first(where: { $0.index == link.index && $0.scope == 0 })
                        ?? addresses.first(where: { $0.index == link.index }) else { return nil }
                return ExternalInterface(index: link.index, name: link.name, mtu: link.mtu, address: a.address, prefixLength: a.prefixLength)
            }

            if !ifaces.isEmpty {
                for spec in ifaces {
                    if let ip = IPv4Address(spec) {
                        if let a = addresses.first(where: { $0.address == ip }), let l = links.first(where: { $0.index == a.index }),
                           let found = make(l, a) { return found }
                    } else if let l = links.first(where: { $0.name == spec }), let found = make(l, nil) {
                        return found
                    }
                }
                throw OverlayError.noExternalInterface("none of --iface \(ifaces.joined(separator: ", ")) is an interface name or an IPv4 address on this node")
            }

            if let ifaceRegex {
                let regex: Regex<AnyRegexOutput>
                do { regex = try Regex(ifaceRegex) } catch {
                    throw OverlayError.noExternalInterface("--iface-regex \(ifaceRegex) is not a valid regular expression: \(error)")
                }
                for a in addresses where "\(a.address)".contains(regex) {
                    if let l = links.first(where: { $0.index == a.index }), let found = make(l, a) { return found }
                }
                for l in links where l.name.contains(regex) {
                    if let found = make(l, nil) { return found }
                }
                throw OverlayError.noExternalInterface("no interface name or IPv4 address matches --iface-regex \(ifaceRegex)")
            }

            let defaults = try nl.routes().filter { $0.destination.prefixLength == 0 && $0.type == 1 }
                .sorted { ($0.priority ?? 0) < ($1.priority ?? 0) }
            for r in defaults {
                if let oif = r.outputIndex, let l = links.first(where: { $0.index == oif }), let found = make(l, nil) {
                    return found
                }
            }
            throw OverlayError.noExternalInterface("no default route with an IPv4-addressed interface: pass --iface")
        } catch let e as OverlayError {
            throw e
        } catch let e as NetlinkError {
            throw .netlink(e, while: "choosing the external interface")
        } catch {
            throw .noExternalInterface("\(error)")
        }
    }
}
