// `.ownThreads`: a Swift Testing trait that runs each test case on an `OwnThreadsExecutor` (see
// TestSupport/OwnThreadsExecutor.swift for why). On a suite it applies to every test inside.
// Its own target because TestSupport is also linked into executables (fxdp-demo, fxdp-bench), which must not
// link the Testing library.

import TestSupport
import Testing

public struct OwnThreadsTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        OwnThreadsExecutor.widenSharedPool()
        guard testCase != nil else { return try await function() }
        try await OwnThreadsExecutor.run(name: test.name) { try await function() }
    }
}

extension Trait where Self == OwnThreadsTrait {
    /// Each test case runs on two threads of its own instead of Swift's shared cooperative pool:
    /// blocking calls in it stall nobody else, and others' blocking calls do not delay it.
    public static var ownThreads: Self { Self() }
}
