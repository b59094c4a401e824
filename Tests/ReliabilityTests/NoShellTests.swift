// "Nothing from a lease ever reaches a shell or a command line", checked two ways:
// 1. statically: no production module (everything the flanneld-xdp binary links) contains a way to
//    start a program — no Foundation (Process), no posix_spawn/fork/exec*/system/popen, no shell
//    path — so lease values can only ever reach the kernel through netlink messages and BPF maps.
//    One reviewed exception: Operations/HostCommand.swift starts exactly two programs, by absolute
//    path with posix_spawn, no shell: `nft` (--ip-masq hands it its ruleset through `nft -f -`,
//    Operations/Masquerade.swift) and `iptables` (flannel's FORWARD accepts, Operations/ForwardRules.swift).
//    Every argument is a fixed word or the text of a typed IPv4Subnet (the config's network, our
//    own lease). The test pins the exception to that file, its program list to those two, and the
//    callers' argument shapes, so a third program or a second way to start one still fails it;
// 2. at run time: lease values carrying shell metacharacters or command text are refused by the
//    decoder with a typed reason, before any of them reaches the reconciler.

import Glibc
import Leases
import NetTypes
import TestSupport
import TestTraits
import Testing

@Suite("NoShellTests: lease data never reaches a shell or a command line", .ownThreads)
struct NoShellTests {
    /// The modules the daemon binary is built from (Package.swift: flanneld-xdp → FlannelDaemon → …).
    static let productionModules = [
        "flanneld-xdp", "FlannelDaemon", "Leases", "Overlay", "Netlink", "BPFDataplane", "BPFLoader",
        "UserspaceDataplane", "NetTypes", "CBPF",
    ]
    static let forbidden = [
        "import Foundation", "Process(", "posix_spawn", "fork(", "vfork(", "execv", "execl", "execve", "system(",
        "popen(", "/bin/sh", "/bin/bash", "NSTask",
    ]

    /// The one file allowed to call posix_spawn (see the note at the top).
    static let reviewedSpawnSite = "Sources/FlannelDaemon/Operations/HostCommand.swift"

    static var repositoryRoot: String {
        // …/Tests/ReliabilityTests/NoShellTests.swift → …
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/")
    }

    @Test func productionCodeCannotStartPrograms() throws {
        var scanned = 0
        var hits: [String] = []
        for module in NoShellTests.productionModules {
            let dir = NoShellTests.repositoryRoot + "/Sources/" + module
            let files = try TestCommand.run(["/usr/bin/find", dir, "-type", "f", "(", "-name", "*.swift", "-o", "-name", "*.c",
                                               "-o", "-name", "*.h", ")"]).stdout
            for path in files.split(separator: "\n").map(String.init) {
                scanned += 1
                let text = try TestCommand.run(["/bin/cat", path]).stdout
                let reviewed = path.hasSuffix(NoShellTests.reviewedSpawnSite)
                if reviewed {
                    // The one spawn site knows two programs and finds them by absolute path only.
                    #expect(text.contains("case nft, iptables, ip6tables\n"), "\(path): the programs must stay nft, iptables and ip6tables")
                    #expect(text.contains(#"["/usr/sbin/", "/sbin/", "/usr/bin/"].map { $0 + rawValue }"#), "\(path): absolute paths only")
                }
                if path.hasSuffix("Sources/FlannelDaemon/Operations/Masquerade.swift") {
                    // nft gets its ruleset on stdin, never on the command line.
                    #expect(text.contains(#"NFT.run(["-f", "-"]"#), "\(path): the nft call must stay `nft -f -`")
                }
                if path.hasSuffix("Sources/FlannelDaemon/Operations/ForwardRules.swift") {
                    // iptables arguments: fixed words and "\(network)" of an IPv4Subnet or IPv6Subnet.
                    #expect(text.contains("static func accepts<S: IPSubnetType>(network: S) -> [[String]]"), "\(path)")
                    #expect(!text.contains("String(describing"), "\(path)")
                }
                for (lineNumber, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                    let code = line.trimmingPrefix(while: { $0 == " " })
                    if code.hasPrefix("//") || code.hasPrefix("*") || code.hasPrefix("/*") { continue }
                    for word in NoShellTests.forbidden where line.contains(word) && !(reviewed && word == "posix_spawn") {
                        hits.append("\(path):\(lineNumber + 1): \(word): \(line)")
                    }
                }
            }
        }
        #expect(scanned > 40, "scanned only \(scanned) files under \(NoShellTests.repositoryRoot)/Sources")
        #expect(hits.isEmpty, "production code that could start a program:\n\(hits.joined(separator: "\n"))")
    }

    @Test func theDaemonBinaryImportsNoProcessStarter() throws {
        let binary = TestBinaries.flanneldXDP()
        // binutils' nm, or LLVM's (the Makefile's DEB_PACKAGES installs llvm).
        let candidates: [String] = ["/usr/bin/nm", "/usr/bin/llvm-nm", "/opt/swift/usr/bin/llvm-nm"]
        let nm: String = candidates.first(where: { (path: String) -> Bool in access(path, X_OK) == 0 }) ?? "/usr/bin/nm"
        let symbols = try TestCommand.run([nm, "-D", "--undefined-only", binary])
        #expect(symbols.status == 0, "nm: \(symbols.stderr)")
        let names = Set(symbols.stdout.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) })
        // posix_spawn is the reviewed nft/iptables spawn site (HostCommand.swift); nothing else may start a program.
        let starters = ["system", "popen", "posix_spawnp", "execve", "execv", "execvp", "execl", "execlp", "fork", "vfork"]
        let found = starters.filter { name in names.contains { $0 == name || $0.hasPrefix(name + "@") } }
        #expect(found.isEmpty, "\(binary) imports \(found)")
    }

    @Test("hostile lease values are refused with a typed reason", arguments: [
        (#"{"PublicIP":"10.0.0.1; rm -rf /","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#, LeaseRejection.badPublicIP),
        (#"{"PublicIP":"$(reboot)","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#, .badPublicIP),
        (#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01`id`"}}"#, .badVtepMAC),
        (#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:0\n"}}"#, .badVtepMAC),
        (#"{"PublicIP":"10.0.0.1","BackendType":"vxlan && reboot","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#, .unknownBackendType),
        (#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":"1; reboot","VtepMAC":"02:00:00:00:00:01"}}"#, .badBackendData),
        (#"{"PublicIP":"127.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#, .badPublicIP),
        (#"{"PublicIP":"224.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#, .badPublicIP),
        (#"{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#, .badVtepMAC),
    ])
    func hostileValues(_ value: String, _ reason: LeaseRejection) throws {
        let config = try NetworkConfig.parse(#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
        let result = LeaseDecoder.decode(key: "10.5.9.0-24", value: Array(value.utf8), isReservation: false, ttl: nil,
                                         revision: 1, config: config)
        guard case .failure(let e) = result else {
            Issue.record("accepted \(value)")
            return
        }
        #expect(e.reason == reason, "\(e)")
    }

    @Test("hostile lease keys are refused", arguments: [
        "10.5.9.0-24;reboot", "$(id)-24", "10.5.9.0-24\n", "../../etc/passwd", "10.5.9.0-024x", "10.5.9.1-24", "10.5.9.0-33",
    ])
    func hostileKeys(_ key: String) {
        #expect(LeaseDecoder.subnet(fromKey: key) == nil, "\(key.debugDescription) accepted")
    }
}
