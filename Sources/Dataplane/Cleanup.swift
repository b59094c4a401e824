// `flanneld-xdp cleanup`'s kernel side: only what is ours goes. Deleting flannel.<VNI> takes its
// address, routes, neighbours and fdb with it; host-gw and DirectRouting routes live on the
// underlay and survive it, so those inside the flannel network are removed one by one.
//
// With --keep-kernel-path the node is handed to stock flanneld (or to the kernel path alone), and
// the BPF path no longer needs per-peer kernel state to carry traffic (the covering route steers
// every pod packet to the encap program): that state is programmed in the background and may lag.
// So before the programs go, the kernel state is checked against the pinned peer map and what is
// missing is programmed; only a complete kernel state lets the programs and the covering route go.

import BPFDataplane
import CBPF
import Logging
import NetTypes
import Netlink
import Overlay

public enum DataplaneCleanup {
    /// Removes our BPF programs from every interface of this namespace (only programs named fxdp_*),
    /// our pins, and — unless `keepKernelPath` — the flannel.<VNI> vxlan devices and, when `network`
    /// (the flannel network, from subnet.env) is known, our blackhole and underlay routes inside it.
    /// Returns what failed, one line each; everything else was still tried.
    /// `ipv6Network` (subnet.env's FLANNEL_IPV6_NETWORK) likewise for IPv6 host-gw/DirectRouting routes.
    /// With `keepKernelPath`, `ownSubnet` (subnet.env's) lets the handover check tell our subnet
    /// from the peers'.
    public static func run(bpffs: String, keepKernelPath: Bool, network: IPv4Subnet?, ipv6Network: IPv6Subnet? = nil,
                           ownSubnet: IPv4Subnet? = nil,
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
        if keepKernelPath {
            do {
                try completeKernelState(overlay: overlay, bpffs: bpffs, network: network, ownSubnet: ownSubnet, logger: logger)
            } catch {
                return ["\(error); the BPF programs stay attached (run cleanup again once the cause is fixed)"]
            }
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

    /// The handover check (the file's note): every peer of the pinned map has its neighbour, fdb
    /// entry and route on flannel.<VNI> (what missed is programmed, batched), then the covering
    /// route goes. Nothing to check without pins or without the device.
    static func completeKernelState(overlay: KernelOverlay, bpffs: String, network: IPv4Subnet?, ownSubnet: IPv4Subnet?,
                                    logger: Logger) throws(HandoverError) {
        let pinned: PinnedDataplane
        let settings: NodeConfig
        do {
            guard let opened = try PinnedDataplane.open(bpffs: bpffs), let config = try NodeConfig.read(from: opened.config) else { return }
            (pinned, settings) = (opened, config)
        } catch {
            throw HandoverError(detail: "reading the pinned peer map: \(error)")
        }
        let link: LinkInfo
        do {
            guard let found = try overlay.existingDevice(vni: settings.vni), found.index == settings.overlayIfindex else {
                logger.warning("flannel.\(settings.vni) (ifindex \(settings.overlayIfindex)) is gone: no kernel state to hand over")
                return
            }
            link = found
        } catch {
            throw HandoverError(detail: "finding flannel.\(settings.vni): \(error)")
        }
        guard let network = network ?? settings.network else {
            throw HandoverError(detail: "the flannel network is unknown (neither subnet.env nor the pinned config names it): the kernel state cannot be checked before the handover")
        }
        let device = FlannelVXLANDevice(name: link.name, index: link.index, mac: link.mac ?? settings.vtepMAC, vni: settings.vni,
                                        port: settings.udpPort, localIP: settings.nodeIP, underlayIndex: settings.underlayIfindex,
                                        mtu: link.mtu, subnet: ownSubnet, origin: .adopted)
        do {
            let table = try overlay.kernelVXLANPeerTable(device: device, network: network)
            var wanted = Set<Peer>()
            for (key, value) in try pinned.peers.entries() {
                guard let subnet = IPv4Subnet(address: IPv4Address(tuple: key.subnet), prefixLength: Int(key.prefixlen)),
                      subnet != ownSubnet else { continue }
                wanted.insert(Peer(subnet: subnet, publicIP: IPv4Address(tuple: value.node_ip), vtepMAC: MACAddress(tuple: value.vtep_mac),
                                   direct: value.flags & UInt16(FXDP_PEER_F_DIRECT) != 0))
            }
            let missing = Array(wanted.subtracting(try table.currentPeers()))
            if !missing.isEmpty {
                logger.notice("the kernel state lacked \(missing.count) of \(wanted.count) peer(s): programming them before the handover")
                if let (peer, error) = table.upsert(batch: missing).first {
                    throw HandoverError(detail: "programming \(peer) on \(device.name): \(error)")
                }
                let still = wanted.subtracting(try table.currentPeers())
                guard still.isEmpty else {
                    throw HandoverError(detail: "\(still.count) peer(s) still lack kernel state on \(device.name), e.g. \(still.first!)")
                }
            }
            logger.info("kernel state complete for \(wanted.count) peer(s) on \(device.name): stock flanneld can take over")
            try table.removeCoveringRoute()
        } catch let error as HandoverError {
            throw error
        } catch {
            throw HandoverError(detail: "\(error)")
        }
    }
}

/// The kernel state could not be made complete before a handover: the programs stay.
public struct HandoverError: Error, CustomStringConvertible {
    public var detail: String
    public var description: String { "handover to the kernel path refused: \(detail)" }
}
