// LibbpfLogging — libbpf's messages into swift-log.
//
// Design: libbpf has one process-wide print callback taking a va_list; a C shim formats it and
// calls back here with a finished string. Warnings are also captured per thread while a BPFLoader
// call runs, so a failure carries them in its BPFError whether or not a logger is installed.

import CBPF
import Logging
import RuntimeSupport
import Synchronization

public enum LibbpfLogging {
    private static let current = Mutex<Logger?>(nil)

    /// Routes libbpf's warnings to `.warning`, info to `.info`, debug (very chatty) to `.debug`.
    public static func install(logger: Logger) {
        current.withLock { $0 = logger }
        cbpf_libbpf_set_log_sink { level, message in
            guard let message else { return }
            LibbpfLogging.emit(level: level, message: String(cString: message))
        }
    }

    /// Stops forwarding (warnings are still captured into errors).
    public static func uninstall() {
        current.withLock { $0 = nil }
        cbpf_libbpf_set_log_sink(nil)
    }

    private static func emit(level: Int32, message: String) {
        guard let logger = current.withLock({ $0 }) else { return }
        let text = message.trimmingTrailingNewlines()
        // libbpf before 1.2 warns about SEC("netfilter") at open; BPFObject.setNetfilterType gives
        // those programs their type before load, so the warning says nothing a reader can act on.
        if text.contains("unrecognized ELF section name 'netfilter'") {
            logger.debug("libbpf: \(text)")
            return
        }
        switch UInt32(level) {
        case LIBBPF_WARN.rawValue: logger.warning("libbpf: \(text)")
        case LIBBPF_INFO.rawValue: logger.info("libbpf: \(text)")
        default: logger.debug("libbpf: \(text)")
        }
    }
}
