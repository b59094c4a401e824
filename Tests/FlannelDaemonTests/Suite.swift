import Testing

/// Every suite of this target runs inside this one, one test at a time. Several tests block a
/// thread on purpose (etcdctl, ip, waitpid); with 2 cores the cooperative pool has 2 threads,
/// and running them beside the timing-sensitive reconciler loop test starved it. Serial costs a
/// few seconds and makes the results independent of scheduling.
@Suite(.serialized) struct DaemonSuite {}
