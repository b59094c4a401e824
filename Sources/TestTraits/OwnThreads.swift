// `.ownThreads`: a Swift Testing trait that runs each test case on an `OwnThreadsExecutor` (see
// TestSupport/OwnThreadsExecutor.swift for why). On a suite it applies to every test inside.
// Its own target because TestSupport is also linked into executables (fxdp-demo, fxdp-bench), which must not
// link the Testing library.
//
// Every suite whose tests block a thread (driving `ip`, ping, iperf3, etcd, the daemon binary)
// carries it, so Swift's shared pool (one thread per core) stays free for the timers, watches and
// renewals of the async tests. At most `concurrentCases` such test cases run at a time: threads of
// their own would otherwise let every case of every blocking suite start at once (dozens of network
// namespaces and daemons on two cores), and the slowest of them miss their deadlines. A case waits
// for its turn without holding a thread.

import TestSupport
import Testing

public struct OwnThreadsTrait: SuiteTrait, TestTrait, TestScoping {
    public var isRecursive: Bool { true }

    /// How many cases on threads of their own run at once in this process.
    public static let concurrentCases = 8

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        guard testCase != nil else { return try await function() }
        await OwnThreadsTurns.shared.wait()
        defer { Task { await OwnThreadsTurns.shared.done() } }
        try await OwnThreadsExecutor.run(name: test.name) { try await function() }
    }
}

extension Trait where Self == OwnThreadsTrait {
    /// Each test case runs on two threads of its own instead of Swift's shared cooperative pool:
    /// blocking calls in it stall nobody else, and others' blocking calls do not delay it.
    public static var ownThreads: Self { Self() }
}

/// Turns for the cases of `.ownThreads` suites, first come first served.
actor OwnThreadsTurns {
    static let shared = OwnThreadsTurns(OwnThreadsTrait.concurrentCases)

    private var free: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(_ count: Int) { free = count }

    func wait() async {
        if free > 0 {
            free -= 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func done() {
        if waiting.isEmpty {
            free += 1
        } else {
            waiting.removeFirst().resume()
        }
    }
}
