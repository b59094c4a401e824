// ExplainedError — the one shape of the project's own errors, and its one text format: what was
// attempted, the system's errno when a call failed, the bad input or the state found, and what to
// do about it.
//
//   attach(fxdp_encap, tcx egress, ifindex 7) failed: Device or resource busy (errno 16): link 12 runs …
//   hint: is a flanneld-xdp with another --bpffs running here? …

import Glibc

public protocol ExplainedError: Error, CustomStringConvertible {
    /// What was attempted, e.g. `bpf_map_update_elem(fxdp_peers_v2)` or `open /run/flannel/x`.
    var operation: String { get }
    /// The errno a system call reported (positive), or 0 when the failure is not a system error.
    var errorNumber: Int32 { get }
    /// The bad input, the state found, a verifier log. May be empty.
    var detail: String { get }
    /// What to do about it.
    var remedy: String { get }
    /// The errno's text (strerror, unless the error knows better).
    var errorNumberText: String { get }
}

extension ExplainedError {
    public var description: String { ExplainedErrorText.format(self) }
    public var errorNumberText: String { strerror(errorNumber).map { String(cString: $0) } ?? "errno \(errorNumber)" }
}

public enum ExplainedErrorText {
    public static func format(_ error: some ExplainedError) -> String {
        var text = "\(error.operation) failed"
        if error.errorNumber != 0 { text += ": \(error.errorNumberText) (errno \(error.errorNumber))" }
        let detail = error.detail.trimmingTrailingNewlines()
        if !detail.isEmpty { text += (detail.contains("\n") ? ":\n" : ": ") + detail }
        if !error.remedy.isEmpty { text += "\nhint: " + error.remedy }
        return text
    }
}

extension String {
    /// The text without the line breaks and spaces at its end (tool output, verifier logs).
    public func trimmingTrailingNewlines() -> String {
        var text = Substring(self)
        while let last = text.last, last == "\n" || last == "\r" || last == " " { text.removeLast() }
        return String(text)
    }

    /// The text without the spaces and line breaks at either end (a procfs value, a one-line answer).
    public func trimmingSpacesAndNewlines() -> String {
        var text = Substring(self)
        while let first = text.first, first == " " || first == "\n" { text.removeFirst() }
        return String(text).trimmingTrailingNewlines()
    }
}
