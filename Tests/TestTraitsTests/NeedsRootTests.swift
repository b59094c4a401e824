// The rule `.needsRoot` applies: root runs, no root skips, no root under CI fails. Pure functions of
// (isRoot, CI), so these run as any user.

import TestSupport
import TestTraits
import Testing

@Suite("needsRoot: privileged tests skip outside CI, fail inside it")
struct NeedsRootTests {
    @Test("CI values that count as set", arguments: ["true", "TRUE", "1", "yes", "github"])
    func ciSet(_ value: String) {
        #expect(Privileges.isCI(value))
    }

    @Test("CI values that count as unset", arguments: [nil, "", "0", "false", "False", "no", "off"] as [String?])
    func ciUnset(_ value: String?) {
        #expect(!Privileges.isCI(value))
    }

    @Test("verdict: root runs whatever CI says; no root skips outside CI and fails under CI")
    func verdicts() {
        #expect(Privileges.verdict(isRoot: true, ci: nil) == .run)
        #expect(Privileges.verdict(isRoot: true, ci: "true") == .run)
        #expect(Privileges.verdict(isRoot: false, ci: nil) == .skip)
        #expect(Privileges.verdict(isRoot: false, ci: "false") == .skip)
        #expect(Privileges.verdict(isRoot: false, ci: "true") == .fail)
    }

    @Test("the trait's condition: true runs, false skips with the reason, a throw fails the test")
    func condition() async throws {
        #expect(try await ConditionTrait.needsRoot(isRoot: true, ci: "true").evaluate())
        #expect(try await ConditionTrait.needsRoot(isRoot: true, ci: nil).evaluate())

        let skipping = ConditionTrait.needsRoot(isRoot: false, ci: nil)
        #expect(try await !skipping.evaluate())
        #expect(skipping.comments.map(\.rawValue) == [Privileges.skipReason])
        #expect(Privileges.skipReason.contains("needs root"))

        await #expect(throws: Privileges.NotRootInCI.self) {
            _ = try await ConditionTrait.needsRoot(isRoot: false, ci: "true").evaluate()
        }
    }
}
