import Glibc

/// Whether a privileged test (network namespaces, BPF) runs, skips or fails. Such tests are marked
/// with the `.needsRoot` trait (TestTraits), which applies `verdict`: as root they run; without root
/// they skip with `skipReason` on a developer's machine, but **fail** when the `CI` environment
/// variable is set, so a CI job that lost its root privileges cannot pass by skipping them.
public enum Privileges {
    public static var isRoot: Bool { geteuid() == 0 }

    /// The `CI` environment variable of this process (`.ci/run` exports `CI=true`).
    public static var ciVariable: String? { getenv("CI").map { String(cString: $0) } }

    public enum Verdict: Equatable, Sendable {
        case run, skip, fail
    }

    /// True when `ci` (the value of `CI`) says this is a CI run: set, non-empty and not a
    /// negation (`0`, `false`, `no`, `off`, any case).
    public static func isCI(_ ci: String?) -> Bool {
        guard let ci, !ci.isEmpty else { return false }
        return !["0", "false", "no", "off"].contains(ci.lowercased())
    }

    /// What a privileged test does, from whether this process is root and the value of `CI`.
    public static func verdict(isRoot: Bool, ci: String?) -> Verdict {
        if isRoot { return .run }
        return isCI(ci) ? .fail : .skip
    }

    /// Printed by Swift Testing for each privileged test skipped outside CI.
    public static let skipReason =
        "needs root (network namespaces, BPF): run `sudo make test`; skipped because this run is not root and CI is not set (with CI=true it fails instead)"

    /// Thrown by the `.needsRoot` condition under CI without root: the test is reported as failed.
    public struct NotRootInCI: Error, CustomStringConvertible {
        public init() {}
        public var description: String {
            "CI is set but the tests do not run as root: privileged tests (network namespaces, BPF) must run in CI, not skip; run the test command as root"
        }
    }

    /// The `.needsRoot` condition: true runs the test, false skips it, a throw fails it.
    public static func mayRunPrivilegedTest(isRoot: Bool, ci: String?) throws -> Bool {
        switch verdict(isRoot: isRoot, ci: ci) {
        case .run: return true
        case .skip: return false
        case .fail: throw NotRootInCI()
        }
    }
}
