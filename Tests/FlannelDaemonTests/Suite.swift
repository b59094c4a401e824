import Testing
import TestTraits

/// The suites declared inside this one (`extension DaemonSuite`) run one test at a time, on threads
/// of their own (`.ownThreads`); the target's other suites that block carry `.ownThreads`
/// themselves. Several tests block a thread on purpose (etcdctl, ip, curl, waitpid, a blocking
/// recv for READY=1): on Swift's shared pool (2 threads with 2 cores) that starved the timing-
/// sensitive tests of every other target in the same `swift test` process, and running them beside
/// the reconciler loop test starved that one. Serial costs a few seconds and makes the results
/// independent of scheduling.
@Suite(.serialized, .ownThreads) struct DaemonSuite {}
