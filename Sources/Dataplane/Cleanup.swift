// `flanneld-xdp cleanup`'s kernel side: only what is ours goes. Deleting flannel.<VNI> takes its
// address, routes, neighbours and fdb with it; host-gw and DirectRouting routes live on the
// underlay and survive it, so those inside the flannel network are removed one by one.

import BPFDataplane
import Logging
import NetTypes
import Overlay

public enum DataplaneCleanup {
    /// Removes our BPF programs from every interface of this namespace (only programs named fxdp_*),
    /// our pins, and — unless `keepKernelPath` — the flannel.<VNI> vxlan devices and, when `network`
    /// (the flannel network, from subnet.env) is known, our blackhole and underlay routes inside it.
    /// Returns what failed, one line each; everything else was still tried.
    /// `ipv6Network` (subnet.env's FLANNEL_IPV6_NETWORK) likewise for IPv6 host-gw/DirectRouting routes.
    public static func run(bpffs: String, keepKernelPath: Bool, network: IPv4Subnet?, ipv6Network: IPv6Subnet? = nil,
                           logger: Logger) -> [String] {
        var failures: [String] = []
        let overlay: KernelOverlay
        let links: [(index: Int32, name: String, isOurDevice: Bool)]
        do {
            overlay = try KernelOverlay(logger: logger)
            links = try overlay.links().map { ($0.index, $0.name, $0.kind == "vxlan" && ($0.name.hasPrefix("flannel.") || $0.name.hasPrefix("flannel-v6."))) }
        } catch {
            return ["listing the interfaces: \(error)"]
        }
        for link in links {
            do {
                try FlannelBPF.detachAll(overlayIfindex: link.index, underlayIfindex: link.index, bpffs: bpffs)
            } catch {
                failures.append("detaching from \(link.name): \(error)")
            }
        }
        do {
            try FlannelBPF.removePins(bpffs: bpffs)
            logger.info("removed our BPF programs (fxdp_*) and the pins under \(bpffs)/\(FlannelBPF.pinFolderName)")
        } catch {
            failures.append("removing pins: \(error)")
        }
        if keepKernelPath {
            logger.info("kept flannel.<VNI> and its kernel routes (--keep-kernel-path): stock flanneld can take over")
            return failures
        }
        if let network {
            do {
                let removed = try BlackholeRoute.remove(inside: network)
                if !removed.isEmpty { logger.info("removed the blackhole route(s) \(removed.map(\.description).joined(separator: ", "))") }
            } catch {
                failures.append("removing blackhole routes in \(network): \(error)")
            }
        }
        let underlays: [Int32?] = network == nil && ipv6Network == nil ? [nil] : links.filter { !$0.isOurDevice }.map { Optional($0.index) }
        for underlay in underlays {
            do {
                _ = try overlay.removeFlannelDevices(vni: nil, network: network, ipv6Network: ipv6Network, underlayIndex: underlay)
            } catch {
                failures.append("\(error)")
            }
        }
        return failures
    }
}
