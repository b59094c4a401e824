// Design note: which data path carries the node's traffic, and putting it in place. The daemon
// asks twice, around the lease:
//
//   prepare — before the lease exists, because the lease publishes the VtepMAC: chooses (the
//             backend, --dataplane, what loads), loads the BPF object, and settles the VtepMAC (an
//             existing flannel.<VNI> keeps its MAC, else our previous lease's, else a random one),
//             and in a dual-stack or IPv6-only network flannel-v6.<VNI>'s the same way (the lease's
//             BackendV6Data.VtepMAC).
//             BPF that cannot load sends --dataplane=auto to the userspace path before any kernel
//             vxlan device exists (its socket would hold the VXLAN port the userspace path binds).
//   attach  — with the lease's subnet: makes flannel.<VNI> (or the TUN), attaches the programs
//             disabled, and returns the tables the reconciler fills, in their order, with the
//             services that keep the data path up. An attach that fails under auto removes what it
//             made and falls back to the userspace path with the same VtepMAC.
//
// IPv6 rides on the path IPv4 takes: BPF attaches its IPv6 half on flannel-v6.<VNI>, the userspace
// path carries both families in its TUN, host-gw adds IPv6 routes. An IPv6-only network has no
// flannel.<VNI>, which the BPF and userspace paths are built around: it runs on the kernel's
// flannel-v6.<VNI> alone (`ActiveDataPath.kernelVXLAN`), as stock flanneld does.
//
// The result (`DataplaneSetup`) carries a typed `ActiveDataPath`; the prose summary is for people.
// Every kernel call here may block (the object load runs the verifier): they run on this
// composition's own thread, which the upkeep services keep afterwards.

import BPFDataplane
import Logging
import NetTypes
import Overlay
import RuntimeSupport
import ServiceLifecycle
import UserspaceDataplane

/// What the daemon asks of the data path: its flags and the network config's part.
public struct DataplaneRequest: Sendable {
    public var choice: DataplaneChoice
    /// The bpffs mount the maps and links are pinned under.
    public var bpffs: String
    /// --bpf-object: a staged object instead of the built-in one; never a fallback.
    public var bpfObject: String?
    public var innerSourceCheck: Bool
    public var fastPath: Bool
    public var backend: BackendKind
    /// The network config's VXLAN ID, UDP port (also the udp backend's), Learning and GBP.
    public var vni: UInt32
    public var port: UInt16
    public var learning: Bool
    public var gbp: Bool
    /// The flannel network.
    public var network: IPv4Subnet
    public var underlay: ExternalInterface
    /// The network config's IPv6Network in a dual-stack or IPv6-only network; nil: IPv4 only. The
    /// node's IPv6 addresses are `underlay.interfaceIPv6Address` and `underlay.publicIPv6`.
    public var ipv6Network: IPv6Subnet?
    /// false in an IPv6-only network (EnableIPv4 false): no flannel.<VNI>, no IPv4 peers.
    public var enableIPv4: Bool

    public init(choice: DataplaneChoice, bpffs: String, bpfObject: String?, innerSourceCheck: Bool, fastPath: Bool,
                backend: BackendKind, vni: UInt32, port: UInt16, learning: Bool, gbp: Bool, network: IPv4Subnet,
                underlay: ExternalInterface, ipv6Network: IPv6Subnet? = nil, enableIPv4: Bool = true) {
        self.ipv6Network = ipv6Network
        self.enableIPv4 = enableIPv4
        self.choice = choice
        self.bpffs = bpffs
        self.bpfObject = bpfObject
        self.innerSourceCheck = innerSourceCheck
        self.fastPath = fastPath
        self.backend = backend
        self.vni = vni
        self.port = port
        self.learning = learning
        self.gbp = gbp
        self.network = network
        self.underlay = underlay
    }
}

public enum DataplaneStartError: Error, CustomStringConvertible {
    case vtepMACMismatch(deviceName: String, deviceMAC: MACAddress, leaseMAC: MACAddress)
    case dataplaneRequired(choice: DataplaneChoice, reason: String)
    /// `--bpf-object` was given and that object cannot run: never a fallback (see DataplaneOptions).
    case bpfObjectUnusable(path: String, reason: String)

    public var description: String {
        switch self {
        case let .vtepMACMismatch(name, device, lease):
            "\(name) has MAC \(device) but the lease was taken with VtepMAC \(lease) (the device changed during start-up); restart flanneld-xdp"
        case let .dataplaneRequired(choice, reason):
            "--dataplane=\(choice) was asked for but the BPF data path cannot run here: \(reason). "
                + "Use --dataplane=auto to fall back to the userspace path, or fix the cause"
        case let .bpfObjectUnusable(path, reason):
            "--bpf-object=\(path) was given but the BPF data path cannot run with it: \(reason). "
                + "With --bpf-object there is no fallback (neither the built-in object nor the userspace path): flanneld-xdp "
                + "stops, and traffic keeps flowing on what a previous run attached (or, had attaching begun, on the kernel "
                + "vxlan device). Fix the object or leave the flag out"
        }
    }
}

/// What the data path needs before the lease exists; `vtepMAC` goes into the lease's BackendData,
/// `ipv6VTEPMAC` into its BackendV6Data.
public struct PreparedDataplane: Sendable {
    public internal(set) var vtepMAC: MACAddress?
    /// flannel-v6.<VNI>'s MAC (or the userspace path's IPv6 one); nil without IPv6 or without vxlan.
    public internal(set) var ipv6VTEPMAC: MACAddress?
    /// An IPv6-only vxlan network: flannel-v6.<VNI> alone, without programs.
    var kernelOnly = false
    var bpf: FlannelBPF?
    var decapMode: BPFDataplane.DecapMode?
    /// Why BPF is not used (auto fell back), for the summary.
    var fallbackReason: String?
    var userspace: Bool
}

/// The data path that start-up settled on, and the tables the reconciler drives.
public struct DataplaneSetup: Sendable {
    public var path: ActiveDataPath
    /// For people: the path, its programs or device, and why (logs, `status`).
    public var summary: String
    /// The tables the reconciler fills (it applies them by stage: maps, then kernel state).
    public var tables: [PeerTableBinding]
    /// The IPv6 tables, which the IPv6 reconciler fills the same way (empty without IPv6).
    public var ipv6Tables: [IPv6TableBinding] = []
    /// Keep the data path up while the daemon runs: the userspace path's threads, the attachment
    /// guard, the fast path's upkeep. Each leaves the data path in place on shutdown, except the
    /// userspace path, which cannot outlive the process.
    public var services: [any Service]
    /// Turns the BPF programs on once the first reconcile has filled their maps, and adds the
    /// covering route that brings every pod packet for the network to them (see `attach`).
    public var enableAfterFirstFill: (@Sendable () async throws -> Void)?
    /// The userspace path's counters in Prometheus' text format (nil on the other paths).
    public var metricsText: (@Sendable () -> String)?
}

/// Chooses, prepares, attaches and falls back (the design note).
public final class DataplaneComposer: Sendable {
    public let request: DataplaneRequest
    let logger: Logger
    /// Start-up's kernel calls run here, and afterwards the upkeep services.
    let thread = DedicatedThreadExecutor(name: "fxdp-dataplane")

    public init(_ request: DataplaneRequest, logger: Logger) {
        self.request = request
        self.logger = logger
    }

    /// Loads BPF (for vxlan) and settles the VtepMAC before the lease is taken: an existing
    /// flannel.<VNI> keeps its MAC (adoption from stock flanneld, restarts), else our previous
    /// lease's VtepMAC is reused (no MAC churn for peers after a reboot), else a random one.
    /// flannel-v6.<VNI>'s MAC is settled the same way, from `previousIPv6VTEPMAC` (BackendV6Data).
    public func prepare(previousVTEPMAC: @Sendable () async -> MACAddress?,
                        previousIPv6VTEPMAC: @Sendable () async -> MACAddress? = { nil }) async throws -> PreparedDataplane {
        var prepared = try await prepareIPv4(previousVTEPMAC: previousVTEPMAC)
        guard request.ipv6Network != nil, case .vxlan = request.backend else { return prepared }
        if prepared.userspace {
            prepared.ipv6VTEPMAC = prepared.ipv6VTEPMAC ?? request.underlay.publicIPv6.map(Self.stableUserspaceIPv6VTEPMAC)
            return prepared
        }
        let name = FlannelVXLANv6Device.name(vni: request.vni)
        if let mac = try await thread.run({ try KernelOverlay(logger: logger).existingIPv6Device(vni: request.vni)?.mac }) {
            logger.info("\(name) exists with MAC \(mac): keeping it as BackendV6Data.VtepMAC")
            prepared.ipv6VTEPMAC = mac
        } else if let mac = await previousIPv6VTEPMAC() {
            logger.info("reusing BackendV6Data.VtepMAC \(mac) of our previous lease for \(name)")
            prepared.ipv6VTEPMAC = mac
        } else {
            prepared.ipv6VTEPMAC = MACAddress.randomLocal()
        }
        return prepared
    }

    private func prepareIPv4(previousVTEPMAC: @Sendable () async -> MACAddress?) async throws -> PreparedDataplane {
        switch request.backend {
        case .hostGW, .udp:
            if let path = request.bpfObject {
                logger.warning("--bpf-object \(path) is not used: backend \(request.backend) has no BPF data path")
            }
            return PreparedDataplane(userspace: request.backend == .udp)
        case .vxlan:
            break
        }
        if !request.enableIPv4 {
            // An IPv6-only network: no flannel.<VNI>, which the BPF and userspace paths need.
            let reason = "an IPv6-only network (EnableIPv4 false) has no flannel.<VNI>, which the BPF and userspace paths are built on"
            guard request.choice == .auto, request.bpfObject == nil else {
                throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: reason)
            }
            logger.notice("\(reason): the kernel's \(FlannelVXLANv6Device.name(vni: request.vni)) carries the traffic, as with stock flanneld")
            var prepared = PreparedDataplane(fallbackReason: reason, userspace: false)
            prepared.kernelOnly = true
            return prepared
        }
        if request.choice == .userspace {
            return PreparedDataplane(vtepMAC: Self.stableUserspaceVTEPMAC(publicIP: request.underlay.publicIP), userspace: true)
        }
        let bpf: FlannelBPF
        var mac: MACAddress?
        switch try await thread.run({ try loadBPF() }) {
        case .fellBack(let prepared):
            return prepared
        case .loaded(let loaded, let existingMAC):
            (bpf, mac) = (loaded, existingMAC)
        }
        if let mac {
            logger.info("\(FlannelVXLANDevice.name(vni: request.vni)) exists with MAC \(mac): keeping it as VtepMAC")
        } else {
            mac = await previousVTEPMAC()
            if let mac { logger.info("reusing VtepMAC \(mac) of our previous lease") }
        }
        let mode: BPFDataplane.DecapMode = switch request.choice {
        case .xdp: .xdp
        case .tc: .tc
        default: await thread.run { BPFDataplane.DecapMode.defaultMode(ifindex: request.underlay.interface.index) }
        }
        return PreparedDataplane(vtepMAC: mac ?? MACAddress.randomLocal(), bpf: bpf, decapMode: mode, userspace: false)
    }

    private enum Loaded {
        case loaded(FlannelBPF, existingMAC: MACAddress?)
        case fellBack(PreparedDataplane)
    }

    /// Loads the object; under auto, a failure prepares the userspace path instead.
    private func loadBPF() throws -> Loaded {
        let deviceName = FlannelVXLANDevice.name(vni: request.vni)
        let bpf: FlannelBPF
        do {
            bpf = try FlannelBPF(bpffs: request.bpffs, object: request.bpfObject.map { .file($0) } ?? .embedded, logger: logger)
        } catch {
            // A staged object that cannot run is an operator's mistake to fix, not a reason to change
            // the node's data path: falling back on a running node would take a lease with another
            // VtepMAC (peers re-point at it) and a VXLAN port flannel.<VNI> still holds.
            if let path = request.bpfObject { throw DataplaneStartError.bpfObjectUnusable(path: path, reason: "\(error)") }
            guard request.choice == .auto else { throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: "\(error)") }
            // A node that ran the BPF path before (restarted after a kernel or capability change)
            // still has flannel.<VNI>: its socket holds the VXLAN port the userspace path binds, and
            // its MAC is the VtepMAC every peer knows. Keep the MAC (the lease stays as it is) and
            // remove the device (its routes go with it; the userspace path sets up its own).
            // Its netfilter door, too: left in place, it would judge the userspace path's datagrams
            // by the previous run's peers.
            try FlannelBPF.detachNetfilterLinks(bpffs: request.bpffs)
            let overlay = try KernelOverlay(logger: logger)
            // flannel-v6.<VNI> likewise holds the port on the IPv6 underlay; its MAC stays BackendV6Data's.
            var ipv6MAC: MACAddress?
            if request.ipv6Network != nil, let device6 = try overlay.existingIPv6Device(vni: request.vni) {
                ipv6MAC = device6.mac
                try overlay.deleteDevice(index: device6.index)
            }
            if let device = try overlay.existingDevice(vni: request.vni), let mac = device.mac {
                logger.warning("BPF data path unavailable (\(error)); using the userspace path. \(deviceName) from an earlier run is removed (it holds UDP port \(request.port)); its MAC \(mac) stays our VtepMAC")
                try overlay.deleteDevice(index: device.index)
                return .fellBack(PreparedDataplane(vtepMAC: mac, ipv6VTEPMAC: ipv6MAC, fallbackReason: "\(error)", userspace: true))
            }
            logger.warning("BPF data path unavailable (\(error)); using the userspace path")
            return .fellBack(PreparedDataplane(vtepMAC: Self.stableUserspaceVTEPMAC(publicIP: request.underlay.publicIP),
                                               ipv6VTEPMAC: ipv6MAC, fallbackReason: "\(error)", userspace: true))
        }
        let overlay = try KernelOverlay(logger: logger)
        return .loaded(bpf, existingMAC: try overlay.existingDevice(vni: request.vni)?.mac)
    }

    /// Puts the prepared data path in place for `subnet` (the lease's) with the overlay `mtu`, and
    /// its IPv6 half for `ipv6Subnet` (the lease's IPv6 subnet; nil without IPv6).
    public func attach(_ prepared: PreparedDataplane, subnet: IPv4Subnet, mtu: Int, ipv6Subnet: IPv6Subnet? = nil) async throws -> DataplaneSetup {
        try await thread.run { try attachHere(prepared, subnet: subnet, mtu: mtu, ipv6Subnet: ipv6Subnet) }
    }

    /// What the IPv6 half runs with: the lease's IPv6 subnet, the node's IPv6 addresses, the network.
    struct IPv6Half {
        var subnet: IPv6Subnet
        var network: IPv6Subnet
        var localIP: IPv6Address
        var publicIP: IPv6Address
        /// flannel-v6.<VNI>'s MTU: the IPv4 overlay's less the 20 bytes IPv6's header adds (underlay − 70).
        var mtu: Int
    }

    private func ipv6Half(_ ipv6Subnet: IPv6Subnet?, mtu: Int) throws -> IPv6Half? {
        guard let network = request.ipv6Network else { return nil }
        guard let subnet = ipv6Subnet, let local = request.underlay.interfaceIPv6Address else {
            throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: "the IPv6 half needs the lease's IPv6 subnet and the interface's IPv6 address")
        }
        return IPv6Half(subnet: subnet, network: network, localIP: local, publicIP: request.underlay.publicIPv6 ?? local, mtu: mtu - 20)
    }

    private func attachHere(_ prepared: PreparedDataplane, subnet: IPv4Subnet, mtu: Int, ipv6Subnet: IPv6Subnet?) throws -> DataplaneSetup {
        let underlay = request.underlay
        let v6 = try ipv6Half(ipv6Subnet, mtu: mtu)
        if prepared.userspace {
            return try startUserspace(prepared, subnet: subnet, mtu: mtu, ipv6: v6)
        }
        let overlay = try KernelOverlay(logger: logger)
        if prepared.kernelOnly {
            guard let v6, let mac6 = prepared.ipv6VTEPMAC else {
                throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: "an IPv6-only network without an IPv6 half")
            }
            let device6 = try ensureIPv6Device(overlay, v6, mac: mac6)
            let table6 = try overlay.kernelVXLANv6PeerTable(device: device6, network: v6.network)
            return DataplaneSetup(path: .kernelVXLAN(reason: prepared.fallbackReason ?? "IPv6-only"),
                                  summary: "kernel vxlan \(device6.name) without BPF programs (IPv6-only network)",
                                  tables: [], ipv6Tables: [IPv6TableBinding(table6, stage: .kernelState)], services: [])
        }
        guard let bpf = prepared.bpf, let mode = prepared.decapMode, let vtepMAC = prepared.vtepMAC else {
            // host-gw: plain routes via the peers' node IPs (IPv6: via their PublicIPv6).
            let table = try overlay.hostGWPeerTable(underlayIndex: underlay.interface.index, network: request.network, ownSubnet: subnet)
            var tables6: [IPv6TableBinding] = []
            if let v6 {
                let table6 = try overlay.hostGWv6PeerTable(underlayIndex: underlay.interface.index, network: v6.network, ownSubnet: v6.subnet)
                tables6.append(IPv6TableBinding(table6, stage: .kernelState))
            }
            return DataplaneSetup(path: .hostGW, summary: "host-gw routes on \(underlay.interface.name)",
                                  tables: request.enableIPv4 ? [PeerTableBinding(table, stage: .kernelState, view: Peer.kernelView)] : [],
                                  ipv6Tables: tables6, services: [])
        }
        var device = try overlay.ensureVXLANDevice(
            vni: request.vni, port: request.port, localIP: underlay.interfaceAddress, underlayIndex: underlay.interface.index,
            mtu: mtu, learning: request.learning, gbp: request.gbp, preferredMAC: vtepMAC)
        device = try overlay.configureVXLANDevice(device, subnet: subnet, network: request.network)
        logger.info("\(device.origin == .adopted ? "adopted" : "set up") \(device)")
        guard device.mac == vtepMAC else {
            throw DataplaneStartError.vtepMACMismatch(deviceName: device.name, deviceMAC: device.mac, leaseMAC: vtepMAC)
        }
        let kernel = try overlay.kernelVXLANPeerTable(device: device, network: request.network)
        // BPF maps first (encap takes the packet before the kernel would), then the kernel's
        // routes/neighbours/fdb: the routes steer pod traffic into flannel.<VNI> and stay as the
        // fallback path. DirectRouting peers get plain routes, and stay in the maps (flagged
        // direct): a peer that judges the underlay otherwise may still send us VXLAN.
        let kernelBinding = PeerTableBinding(kernel, stage: .kernelState, view: Peer.kernelView)
        // flannel-v6.<VNI> before any program: the IPv6 half attaches to it.
        var device6: FlannelVXLANv6Device?
        if let v6, let mac6 = prepared.ipv6VTEPMAC { device6 = try ensureIPv6Device(overlay, v6, mac: mac6) }
        do {
            let node = NodeConfig(nodeIP: underlay.interfaceAddress, vtepMAC: device.mac, vni: request.vni,
                                  udpPort: request.port, underlayIfindex: underlay.interface.index,
                                  underlayMAC: try Interfaces.mac(named: underlay.interface.name),
                                  overlayIfindex: device.index, overlayMTU: UInt16(clamping: device.mtu), enabled: false,
                                  outerTTL: Self.defaultTTL(logger: logger), innerSourceCheck: request.innerSourceCheck,
                                  network: request.network, publicIP: underlay.publicIP, fastPath: request.fastPath,
                                  conntrackTCPLiberal: request.fastPath && FastPathSettings.tcpLiberal(logger: logger))
            // Attached disabled (every program hands every packet to the kernel, which carries the
            // traffic as flanneld did), enabled once the first reconcile filled the maps: enabled
            // with empty maps, decap dropped a peer's VXLAN as "not a peer" until its node entry
            // was written — one lost ping in half the takeovers of a running stock node.
            try bpf.writeConfig(node)
            var tables6: [IPv6TableBinding] = []
            if let v6, let device6 {
                let hopLimit = Self.defaultTTL(path: "/proc/sys/net/ipv6/conf/\(underlay.interface.name)/hop_limit", logger: logger)
                try bpf.writeConfig6(NodeConfig6(nodeIP: v6.localIP, vtepMAC: device6.mac, overlayIfindex: device6.index,
                                                 overlayMTU: UInt16(clamping: device6.mtu), outerHopLimit: hopLimit,
                                                 network: v6.network, publicIP: v6.publicIP))
                let kernel6 = try overlay.kernelVXLANv6PeerTable(device: device6, network: v6.network)
                tables6 = [IPv6TableBinding(BPFIPv6Peers(try bpf.ipv6PeerTable()), stage: .dataPath),
                           IPv6TableBinding(kernel6, stage: .kernelState)]
            } else {
                try bpf.writeConfig6(nil)
            }
            let state = try bpf.attach(overlayIfindex: device.index, underlayIfindex: underlay.interface.index, mode: mode,
                                       overlay6Ifindex: device6?.index)
            // Maps of an earlier layout: their programs were just replaced, nothing reads them.
            if let stale = try? bpf.removeOtherABIPins(), !stale.isEmpty {
                logger.notice("removed the pins of an earlier version's maps: \(stale.joined(separator: ", "))")
            }
            let maps = try bpf.peerTable()
            var services: [any Service] = [
                AttachmentGuard(bpf: bpf, overlayIfindex: device.index, underlayIfindex: underlay.interface.index,
                                mode: state.decapMode ?? mode, overlay6Ifindex: device6?.index, thread: thread, logger: logger),
            ]
            if request.fastPath {
                services.append(FastPathService(sync: FastPathSync(bpf: bpf, podSubnet: subnet, logger: logger), thread: thread, logger: logger))
            } else {
                FastPathSettings.removeLeftovers(bpf, logger: logger)
            }
            // `status` shows the summary: say when the programs are a staged object, not the built-in one.
            let staged = bpf.source == .embedded ? "" : ", programs from \(bpf.source)"
            let fast = request.fastPath ? "fast path on; " : ""
            let devices = device.name + (device6.map { " and \($0.name)" } ?? "")
            let covering = "covering route \(request.network) via \(KernelVXLANPeerTable.coveringGateway) dev \(device.name) onlink"
            return DataplaneSetup(path: .bpf(decap: DecapMode(mode), fastPath: request.fastPath),
                                  summary: "BPF (\(mode == .xdp ? "XDP" : "TC-checked kernel") decap; \(fast)\(state)) over \(devices)\(staged)",
                                  tables: [PeerTableBinding(maps, stage: .dataPath), kernelBinding], ipv6Tables: tables6, services: services,
                                  enableAfterFirstFill: { [thread, logger, covering] in
                                      try await thread.run {
                                          try bpf.setEnabled(true)
                                          // Only now: with the programs disabled the route would
                                          // send pod traffic to the kernel device, which drops it.
                                          try kernel.ensureCoveringRoute()
                                      }
                                      logger.info("\(covering): peers are reachable once in the maps")
                                  })
        } catch {
            if let path = request.bpfObject { throw DataplaneStartError.bpfObjectUnusable(path: path, reason: "\(error)") }
            guard request.choice == .auto else { throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: "\(error)") }
            // --dataplane=auto: the userspace path, as when loading fails. Our partial attachments
            // go, and so does flannel.<VNI>: its kernel socket holds the VXLAN port the userspace
            // path binds. The VtepMAC (already in the lease) stays the same.
            logger.warning("attaching the BPF programs failed (\(error)); using the userspace path")
            try? FlannelBPF.detachAll(overlayIfindex: device.index, underlayIfindex: underlay.interface.index, bpffs: request.bpffs,
                                      overlay6Ifindex: device6?.index)
            try overlay.deleteDevice(index: device.index)
            if let device6 { try overlay.deleteDevice(index: device6.index) }
            var fallback = prepared
            fallback.bpf = nil
            fallback.fallbackReason = "attaching the BPF programs failed: \(error)"
            return try startUserspace(fallback, subnet: subnet, mtu: mtu, ipv6: v6)
        }
    }

    /// flannel-v6.<VNI> as flanneld makes it: over the IPv6 underlay address, the settled MAC,
    /// <IPv6 subnet>/128, up. An existing device whose MAC is not the lease's is an error, as for IPv4.
    private func ensureIPv6Device(_ overlay: KernelOverlay, _ v6: IPv6Half, mac: MACAddress) throws -> FlannelVXLANv6Device {
        var device = try overlay.ensureVXLANDevice(
            vni: request.vni, port: request.port, localIP: v6.localIP, underlayIndex: request.underlay.interface.index,
            mtu: v6.mtu, learning: request.learning, gbp: request.gbp, preferredMAC: mac)
        device = try overlay.configureVXLANDevice(device, subnet: v6.subnet, network: v6.network)
        logger.info("\(device.origin == .adopted ? "adopted" : "set up") \(device)")
        guard device.mac == mac else {
            throw DataplaneStartError.vtepMACMismatch(deviceName: device.name, deviceMAC: device.mac, leaseMAC: mac)
        }
        return device
    }

    private func startUserspace(_ prepared: PreparedDataplane, subnet: IPv4Subnet, mtu: Int, ipv6 v6: IPv6Half?) throws -> DataplaneSetup {
        let encapsulation: UserspaceConfig.Encapsulation
        let tunName: String
        if let mac = prepared.vtepMAC {
            encapsulation = .vxlan(vni: request.vni, port: request.port, localVTEPMAC: mac)
            tunName = String("flannel-u.\(request.vni)".prefix(15))
        } else {
            encapsulation = .udp(port: request.port)
            tunName = "flannel0"
        }
        var ipv6Config: UserspaceIPv6Config?
        if let v6 {
            guard let mac6 = prepared.ipv6VTEPMAC, prepared.vtepMAC != nil else {
                throw DataplaneStartError.dataplaneRequired(choice: request.choice, reason: "IPv6 on the userspace path needs the vxlan backend")
            }
            ipv6Config = UserspaceIPv6Config(localIP: v6.localIP, localVTEPMAC: mac6, mtu: v6.mtu)
        }
        let config = UserspaceConfig(encapsulation: encapsulation, localIP: request.underlay.interfaceAddress,
                                     tunName: tunName, mtu: mtu, icmpSourceIP: subnet.address,
                                     innerSourceCheck: request.innerSourceCheck, ipv6: ipv6Config)
        let dataplane = try UserspaceDataplane(config: config, logger: logger)
        let overlay = try KernelOverlay(logger: logger)
        try overlay.configureTUN(name: tunName, subnet: subnet, network: request.network, mtu: mtu)
        if let v6 { try overlay.configureTUNIPv6(name: tunName, subnet: v6.subnet, network: v6.network, mtu: v6.mtu) }
        try dataplane.start()
        let why = prepared.fallbackReason.map { " (BPF unavailable: \($0))" } ?? ""
        return DataplaneSetup(path: .userspace(fallbackReason: prepared.fallbackReason), summary: "userspace TUN \(tunName)\(why)",
                              tables: [PeerTableBinding(dataplane, stage: .dataPath)],
                              ipv6Tables: v6 == nil ? [] : [IPv6TableBinding(dataplane.ipv6Peers, stage: .dataPath)],
                              services: [UserspaceDataplaneService(dataplane: dataplane, logger: logger)],
                              metricsText: { dataplane.counters.prometheusText() })
    }

    /// A VtepMAC for the userspace path that stays the same across restarts without any state: the
    /// locally administered prefix 0e:fd plus the PublicIP (unique in the cluster by construction).
    public static func stableUserspaceVTEPMAC(publicIP: IPv4Address) -> MACAddress {
        MACAddress(bytes: [0x0e, 0xfd] + publicIP.bytes)
    }

    /// The userspace path's IPv6 VtepMAC, stable across restarts like the IPv4 one: 0e:fe plus four
    /// bytes folded from the PublicIPv6 (FNV-1a), distinct from the IPv4 MAC's 0e:fd.
    public static func stableUserspaceIPv6VTEPMAC(publicIPv6: IPv6Address) -> MACAddress {
        var hash: UInt32 = 2_166_136_261
        for byte in publicIPv6.bytes { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        return MACAddress(bytes: [0x0e, 0xfe, UInt8(hash >> 24), UInt8(truncatingIfNeeded: hash >> 16),
                                  UInt8(truncatingIfNeeded: hash >> 8), UInt8(truncatingIfNeeded: hash)])
    }

    /// The outer TTL the kernel vxlan device sends with flannel's TTL "auto": the network
    /// namespace's net.ipv4.ip_default_ttl (a hop-limit metric on the route to a peer, which the
    /// kernel would prefer, is not followed: docs/BPF-DATAPATH.md). 0 (64) when unreadable.
    public static func defaultTTL(path: String = "/proc/sys/net/ipv4/ip_default_ttl", logger: Logger) -> UInt8 {
        guard let text = SystemCall.readSmallFile(path, limit: 64),
              let ttl = UInt8(text.filter { !$0.isWhitespace }), ttl > 0 else {
            logger.warning("cannot read \(path): the BPF encap sends with TTL 64")
            return 0
        }
        return ttl
    }
}

/// Keeps the userspace path's threads running; stops them on shutdown (they cannot outlive us).
struct UserspaceDataplaneService: Service {
    let dataplane: UserspaceDataplane
    let logger: Logger
    func run() async throws {
        try? await gracefulShutdown()
        dataplane.stop()
        logger.info("userspace data path stopped (it cannot outlive the process)")
    }
}
