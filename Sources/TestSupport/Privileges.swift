import Glibc

/// Privileged tests (netns, BPF) run as root in CI and must not skip there. Run without root they are
/// disabled with this reason, which Swift Testing prints.
public enum Privileges {
    public static var isRoot: Bool { geteuid() == 0 }
    public static let skipReason: Comment =
        "needs root (network namespaces, BPF): run `sudo make test`; in CI these tests run and must not skip"
}

import Testing
