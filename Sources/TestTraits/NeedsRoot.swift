// `.needsRoot`: the trait every privileged test (network namespaces, BPF) carries. As root the test
// runs; without root it is skipped with `Privileges.skipReason`, unless the `CI` environment
// variable is set: then the condition throws `Privileges.NotRootInCI` and Swift Testing reports the
// test as failed without running it, so CI cannot go green by skipping (TestSupport/Privileges.swift).

import TestSupport
import Testing

extension Trait where Self == ConditionTrait {
    /// Runs as root; skips without root; fails without root when `CI` is set.
    public static var needsRoot: Self {
        .enabled(if: try Privileges.mayRunPrivilegedTest(isRoot: Privileges.isRoot, ci: Privileges.ciVariable),
                 Comment(rawValue: Privileges.skipReason))
    }

    /// The same decision for a given privilege and `CI` value (for testing the rule itself).
    public static func needsRoot(isRoot: Bool, ci: String?) -> Self {
        .enabled(if: try Privileges.mayRunPrivilegedTest(isRoot: isRoot, ci: ci), Comment(rawValue: Privileges.skipReason))
    }
}
