// DataplaneError — what BPFDataplane throws when the failure is its own (bad input, a slot held by
// a program that is not ours, a map that holds something we did not write). Failures of the BPF
// calls underneath come through as BPFLoader's BPFError, unchanged.

import BPFLoader
import Glibc
import RuntimeSupport

public struct DataplaneError: ExplainedError, Sendable, Equatable {
    /// What was attempted, e.g. `attach(fxdp_encap, ifindex 7 egress)`.
    public var operation: String
    /// errno when a system call failed, else 0.
    public var errno: Int32
    /// The bad input or the state found.
    public var detail: String
    /// What to do about it.
    public var hint: String

    public init(operation: String, errno: Int32 = 0, detail: String, hint: String) {
        self.operation = operation
        self.errno = errno
        self.detail = detail
        self.hint = hint
    }

    public var errorNumber: Int32 { errno }
    public var remedy: String { hint }
}
