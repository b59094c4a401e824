// Design note: the programs stay attached when the daemon exits, which also means nothing notices
// when someone else removes them (`tc filter del`, `ip link set xdp off`, another agent's cleanup).
// The peer tables are repaired by the reconciler's periodic pass; this guard does the same for the
// attachments: every `interval` it reads our slots back from the kernel and, when one of ours is
// empty, attaches again (FlannelBPF.attach is idempotent: what is still attached keeps its id) and
// says so in the log. Until then the kernel vxlan device carries the traffic (the stock flannel path).
// The same check puts back map pins someone removed (`rm <bpffs>/flanneld-xdp/...`): the maps live on
// in the programs, but tools and the next start find them only by their pins. A removed netfilter
// link pin detaches that program at once (the pin is what holds the link): it is linked again.
// And it keeps the encap's outer TTL equal to net.ipv4.ip_default_ttl, which an administrator may
// change at any time, as the kernel vxlan device follows it. The checks call into the kernel: they
// run on the data path's own thread.

import BPFDataplane
import Logging
import RuntimeSupport
import ServiceLifecycle

struct AttachmentGuard: Service, @unchecked Sendable {
    // @unchecked: FlannelBPF is itself @unchecked Sendable (read-only after init).
    let bpf: FlannelBPF
    let overlayIfindex: Int32
    let underlayIfindex: Int32
    /// flannel-v6.<VNI> on a dual-stack node: the IPv6 half is watched and re-attached too.
    var overlay6Ifindex: Int32? = nil
    let mode: BPFDataplane.DecapMode
    let interval: Duration
    let thread: DedicatedThreadExecutor
    let logger: Logger
    private let errorLog = RateLimitedLog(window: .seconds(60))

    init(bpf: FlannelBPF, overlayIfindex: Int32, underlayIfindex: Int32, mode: BPFDataplane.DecapMode,
         overlay6Ifindex: Int32? = nil, interval: Duration = .seconds(5), thread: DedicatedThreadExecutor, logger: Logger) {
        self.bpf = bpf
        self.overlay6Ifindex = overlay6Ifindex
        self.overlayIfindex = overlayIfindex
        self.underlayIfindex = underlayIfindex
        self.mode = mode
        self.interval = interval
        self.thread = thread
        self.logger = logger
    }

    /// What is missing from our slots now ("" when everything is attached).
    func missing(_ state: AttachmentState) -> [String] {
        var gone: [String] = []
        if state.encapProgramID == nil { gone.append("encap (TC egress, ifindex \(overlayIfindex))") }
        switch mode {
        case .xdp:
            if state.xdpProgramID == nil { gone.append("decap (XDP, ifindex \(underlayIfindex))") }
            if state.decapCheckProgramID == nil { gone.append("decap steer (TC ingress, ifindex \(underlayIfindex))") }
        case .tc where state.decapCheckProgramID == nil: gone.append("decap check (TC ingress, ifindex \(underlayIfindex))")
        default: break
        }
        if state.doorProgramID == nil { gone.append("vxlan door (netfilter input)") }
        if state.podGuardProgramID == nil { gone.append("pod guard (netfilter forward)") }
        if let overlay6Ifindex {
            if state.encap6ProgramID == nil { gone.append("IPv6 encap (TC egress, ifindex \(overlay6Ifindex))") }
            if state.door6ProgramID == nil { gone.append("IPv6 vxlan door (netfilter input)") }
            if state.podGuard6ProgramID == nil { gone.append("IPv6 pod guard (netfilter forward)") }
        }
        return gone
    }

    /// One check; re-attaches what is missing and re-pins removed map pins. Returns true when it
    /// repaired something.
    @discardableResult
    func checkOnce() -> Bool {
        let repinned = checkPins()
        checkTTL()
        do {
            let state = try FlannelBPF.attachmentState(overlayIfindex: overlayIfindex, underlayIfindex: underlayIfindex,
                                                       pinDirectory: bpf.pinDirectory, overlay6Ifindex: overlay6Ifindex)
            let gone = missing(state)
            guard !gone.isEmpty else {
                errorLog.reset("attachment")
                return repinned
            }
            logger.warning("BPF program detached by someone else: \(gone.joined(separator: ", ")); re-attaching")
            let now = try bpf.attach(overlayIfindex: overlayIfindex, underlayIfindex: underlayIfindex, mode: mode,
                                     overlay6Ifindex: overlay6Ifindex)
            logger.notice("BPF data path re-attached: \(now)")
            return true
        } catch {
            errorLog.log(logger, level: .error, key: "attachment",
                         "checking/re-attaching the BPF programs failed: \(error); the kernel vxlan path carries traffic meanwhile")
            return false
        }
    }

    /// Follows net.ipv4.ip_default_ttl into the encap's outer TTL.
    func checkTTL() {
        let ttl = DataplaneComposer.defaultTTL(logger: logger)
        do {
            if try bpf.setOuterTTL(ttl) { logger.info("outer TTL of the BPF encap now \(ttl == 0 ? 64 : Int(ttl)) (net.ipv4.ip_default_ttl)") }
        } catch {
            errorLog.log(logger, level: .error, key: "ttl", "updating the encap's outer TTL failed: \(error)")
        }
    }

    /// Puts back removed map pins; true when it did.
    func checkPins() -> Bool {
        do {
            let repairs = try bpf.repairPins()
            errorLog.reset("pins")
            for repair in repairs {
                logger.warning("BPF map pin repaired: \(repair); pinned again")
            }
            return !repairs.isEmpty
        } catch {
            errorLog.log(logger, level: .error, key: "pins",
                         "checking/re-pinning the BPF maps failed: \(error); traffic is unaffected, but a restart would start with empty maps")
            return false
        }
    }

    func run() async throws {
        // Ends on graceful shutdown (the sleep is cancelled) without touching the attachments.
        try? await cancelWhenGracefulShutdown {
            while true {
                try await Task.sleep(for: interval)
                _ = await thread.run { checkOnce() }
            }
        }
    }
}
