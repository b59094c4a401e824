// Start-up and shutdown of the node agent. The order matters and is flanneld's, with the BPF data
// path slotted in before readiness: interface → config → lease → overlay device → data path →
// tables filled from the lease snapshot → subnet.env → READY=1 → services (renewal, watch,
// periodic reconcile, health). SIGTERM/SIGINT stop the services and nothing else: the data path,
// the device, the routes and the lease stay, so a restart or upgrade does not disturb traffic and
// gets the same subnet back. Only `cleanup` removes what is ours.

import Glibc
import Logging
import NetTypes
import ServiceLifecycle

public enum DaemonError: Error, CustomStringConvertible {
    case notWired(stage: String, waitingFor: String)

    public var description: String {
        switch self {
        case let .notWired(stage, waitingFor):
            "\(stage) is not wired into this build yet (waiting for \(waitingFor)); this binary can parse flags, choose the interface and serve /healthz, nothing more"
        }
    }
}

public enum Daemon {
    /// Installs the stderr log handler once per process, at `level`.
    public static func bootstrapLogging(level: Logger.Level) {
        LoggingBootstrap.once(level: level)
    }

    public static func run(_ options: FlannelOptions) async throws {
        bootstrapLogging(level: options.logging.logLevel.level)
        var logger = Logger(label: "flanneld-xdp")
        logger.logLevel = options.logging.logLevel.level
        logger.info("flanneld-xdp \(FlannelDaemonVersion.string) starting")

        let external = try InterfaceSelection.selectFromSystem(options.interface)
        logger.info("using interface \(external.interface.name) (index \(external.interface.index), mtu \(external.interface.mtu)), interface IP \(external.interfaceAddress), public IP \(external.publicIP)")

        throw DaemonError.notWired(stage: "reading the network config and acquiring the lease", waitingFor: "wt/leases")
    }

    public static func cleanup(bpffs: String, keepKernelPath: Bool, logLevel: LogLevelChoice) async throws {
        bootstrapLogging(level: logLevel.level)
        throw DaemonError.notWired(stage: "cleanup", waitingFor: "wt/bpf and wt/netlink")
    }
}

/// LoggingSystem.bootstrap may run only once per process.
enum LoggingBootstrap {
    private static let done = Synchronization.Atomic<Bool>(false)

    static func once(level: Logger.Level) {
        guard done.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

import Synchronization
