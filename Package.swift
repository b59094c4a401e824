// swift-tools-version:6.1
//
// Module seams (see docs/DESIGN.md, "Modules"):
//   NetTypes            value types shared by every layer (IPv4/IPv6 address and subnet, MAC, Peer,
//                       packet counts, base64)
//   RuntimeSupport      the few tools every layer uses: JSON, rate-limited logging, EINTR-safe system
//                       calls, the one error shape (ExplainedError), dedicated threads for blocking work
//   Leases              etcd v2/v3 clients, network config, subnet leases, subnet.env, the last known
//                       leases (knows nothing of the kernel)
//   CBPF                C bridge for BPF: libbpf, fxdp_shared.h (the kernel/user shared header), cbpf_
//                       shims (libbpf's log, tcx and netfilter links Debian's headers lack)
//   CMnl                C bridge for rtnetlink: libmnl and the kernel's netlink headers
//   CSystemShims        C bridge for system calls Swift cannot make: setns, TUN, UDP mmsg, SIOCSIFMTU,
//                       statfs, glibc's heap (shim_)
//   BPFLoader           general safe Swift over libbpf: objects, maps, ring buffers, links, TC,
//                       tcx, XDP, bpffs (knows nothing of flannel)
//   Netlink             small safe Swift over libmnl: links, addresses, routes, neighbours, fdb, tc
//   Overlay             the kernel's side of flannel: flannel.<VNI> as flanneld makes it, the kernel
//                       peer tables (neighbour/fdb/route, DirectRouting, host-gw), cleanup
//   BPFDataplane        flannel's BPF data path: embedded objects (BPFObjectEmbedder plugin), typed
//                       maps and pins, attach policy, the fast path's sync, drop events for monitor
//   UserspaceDataplane  TUN + UDP fallback speaking the same VXLAN (and legacy udp) framing
//   Dataplane           the one layer between the daemon and the kernel: the PeerTable protocol and the
//                       reconciler (leases → desired peers → each table, maps before kernel state, on a
//                       thread of its own), the composition (choose, prepare, attach, fall back → a typed
//                       ActiveDataPath), the upkeep services, the read-only view of the pins, monitor's
//                       drop samples, doctor's probes, cleanup, heap trimming
//   FlannelDaemon       the daemon as a library: flags, interface choice, start-up, lease services,
//                       healthz, sd_notify, Operations/ (status, peers, stats, doctor, metrics, host rules);
//                       imports Leases and Dataplane, no kernel module
//   flanneld-xdp        the executable (thin main)
//   fxdp-demo           the demo (`make demo`), over TestSupport's lab
//   BenchKit, fxdp-bench the bench (`make bench`): a library the tests import, and its executable
//   TestSupport         test and lab helpers without Testing: netns lab, cluster, etcd launcher,
//                       packets, reference data path model, privilege checks
//   TestTraits          Swift Testing traits (`.needsRoot`, `.ownThreads`) for the test targets
import PackageDescription

let package = Package(
    name: "flanneld-xdp",
    products: [
        .executable(name: "flanneld-xdp", targets: ["flanneld-xdp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // The C bridges, one per concern: libbpf and the kernel/user shared header; libmnl; system calls.
        .target(name: "CBPF", linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]),
        .target(name: "CMnl", linkerSettings: [.linkedLibrary("mnl")]),
        .target(name: "CSystemShims"),
        .target(name: "NetTypes"),
        .target(name: "RuntimeSupport", dependencies: [.product(name: "Logging", package: "swift-log")]),
        .target(
            name: "BPFLoader",
            dependencies: ["CBPF", "CSystemShims", "RuntimeSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "Netlink",
            dependencies: ["CMnl", "CSystemShims", "NetTypes", "RuntimeSupport", .product(name: "Logging", package: "swift-log")]
        ),
        // Swift Testing traits: `.ownThreads`, `.needsRoot` (they import Testing, so kept out of TestSupport,
        // which the demo and the bench link).
        .target(name: "TestTraits", dependencies: ["TestSupport"]),
        .target(
            name: "Overlay",
            dependencies: ["Netlink", "NetTypes", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "Leases",
            dependencies: [
                "NetTypes", "RuntimeSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .plugin(name: "BPFObjectEmbedder", capability: .buildTool()),
        .target(
            name: "BPFDataplane",
            dependencies: [
                "CBPF", "BPFLoader", "NetTypes", "Netlink", "RuntimeSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["BPFObjectEmbedder"]
        ),
        .target(
            name: "UserspaceDataplane",
            dependencies: [
                "CSystemShims", "NetTypes", "RuntimeSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ]
        ),
        // The one layer between the daemon and the kernel: the reconciler, the data paths' composition, the
        // kernel-touching services and read-only views. The daemon imports it and no kernel module.
        .target(
            name: "Dataplane",
            dependencies: [
                "NetTypes", "RuntimeSupport", "CBPF", "CSystemShims", "BPFLoader", "Netlink", "Overlay", "BPFDataplane", "UserspaceDataplane",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "FlannelDaemon",
            dependencies: [
                "NetTypes", "RuntimeSupport", "Leases", "Dataplane",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(name: "flanneld-xdp", dependencies: ["FlannelDaemon"]),
        // The bench as a library (the tests check its statistics and charts) and its thin executable.
        .target(
            name: "BenchKit",
            dependencies: [
                "TestSupport", "NetTypes", "RuntimeSupport", "Leases", "BPFLoader", "BPFDataplane", "UserspaceDataplane", "Overlay",
                "Netlink", "CBPF", "Dataplane", "FlannelDaemon",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "fxdp-bench", dependencies: ["BenchKit", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "fxdp-demo",
            dependencies: [
                "TestSupport", "NetTypes", "BPFLoader", "BPFDataplane", "CBPF",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Helpers for the tests, the demo and the bench (no Testing): real etcd launcher, netns lab, packet builder,
        // privilege checks.
        .target(
            name: "TestSupport",
            dependencies: ["CBPF", "CSystemShims", "BPFLoader", "NetTypes", "RuntimeSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "NetTypesTests", dependencies: ["NetTypes"]),
        .testTarget(
            name: "BPFLoaderTests",
            dependencies: ["BPFLoader", "CBPF", "TestSupport", "TestTraits", .product(name: "Logging", package: "swift-log")],
            exclude: ["Fixtures"]  // test-only BPF C, compiled by the tests themselves
        ),
        .testTarget(name: "BPFDataplaneTests", dependencies: ["BPFDataplane", "BPFLoader", "CBPF", "NetTypes", "Netlink", "TestSupport", "TestTraits"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "NetTypes", "RuntimeSupport", "CBPF", "TestSupport", "TestTraits"]),
        .testTarget(
            name: "OverlayTests",
            dependencies: ["Overlay", "Netlink", "NetTypes", "RuntimeSupport", "TestSupport", "TestTraits", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "LeasesTests", dependencies: ["Leases", "NetTypes", "RuntimeSupport", "TestSupport", "TestTraits"]),
        .testTarget(name: "UserspaceDataplaneTests", dependencies: ["UserspaceDataplane", "NetTypes", "CBPF", "CSystemShims", "TestSupport", "TestTraits", "BPFDataplane", "BPFLoader"]),
        .testTarget(name: "ReliabilityTests", dependencies: ["Leases", "NetTypes", "TestSupport", "TestTraits", "BPFLoader", "BPFDataplane", "CBPF"]),
        .testTarget(name: "TestTraitsTests", dependencies: ["TestTraits", "TestSupport"]),
        .testTarget(name: "FlannelDaemonTests", dependencies: ["FlannelDaemon", "Dataplane", "Leases", "NetTypes", "RuntimeSupport", "TestSupport", "TestTraits", "BPFLoader", "BPFDataplane", "CBPF", "BenchKit"]),
    ]
)
