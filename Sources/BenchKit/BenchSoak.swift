// BenchSoak — `make soak`: the daemon binary under lease churn for a long while, looking for what
// grows with time instead of with peers.
//
// A one-node FlannelCluster (real etcd on the lab's wire, v3) with `basePeers` leases; the daemon
// runs with flanneld's flags plus `--subnet-lease-ttl 60` (its own lease renewed every 30 s: 60
// renewal cycles in 30 minutes where flannel's defaults make one a day) and `--reconcile-interval
// 30` (a full pass every 30 s). Then `rate` lease operations a second, in a cycle of five: an add,
// an add under a 20 s etcd lease that is not kept alive (its key expires on its own), a change of
// a VtepMAC, a removal, another change; so the live leases stay near `basePeers` while keys come,
// change, go and expire. Every `sampleEvery` seconds: the daemon's VmRSS/VmHWM, its open file
// descriptors, the entries of its pinned peer map. At the end, once the churn has stopped: the
// pinned map and the kernel's routes on flannel.1 must name exactly the subnets etcd holds.
//
// Verdicts: RSS flat (the last quarter's largest sample at most 1 MiB above the second quarter's),
// file descriptors flat (the second half within ±2), the tables equal to etcd at the end.

import BPFLoader
import CBPF
import Foundation
import Glibc
import Leases
import NetTypes
import RuntimeSupport
import TestSupport

struct SoakSample: Codable, Sendable {
    var seconds: Double
    var rssKiB: Int
    var hwmKiB: Int
    var fds: Int
    var mapEntries: Int
}

struct SoakReport: Codable, Sendable {
    var minutes: Double
    var rate: Double
    var basePeers: Int
    var leaseTTLSeconds: Int
    var operations: [String: Int]
    var samples: [SoakSample]
    /// Subnets in etcd at the end (minus the node's own), in the pinned map, in the kernel's routes.
    var etcdSubnets: Int
    var mapSubnets: Int
    var routeSubnets: Int
    var verdicts: [String]
    var failures: [String]
    var passed: Bool { failures.isEmpty }
}

enum SoakBench {
    static let basePeers = 1000
    static let ownLeaseTTL = 60

    static func run(daemonPath: String, minutes: Double, rate: Double, cleanup: BenchCleanup, log: (String) -> Void) -> SoakReport {
        var report = SoakReport(minutes: minutes, rate: rate, basePeers: basePeers, leaseTTLSeconds: ownLeaseTTL, operations: [:],
                                samples: [], etcdSubnets: 0, mapSubnets: 0, routeSubnets: 0, verdicts: [], failures: [])
        do {
            try soak(daemonPath: daemonPath, minutes: minutes, rate: rate, cleanup: cleanup, log: log, into: &report)
        } catch {
            report.failures.append("\(error)".prefix(600).description)
        }
        for line in report.verdicts + report.failures.map({ "FAILED: " + $0 }) { log("soak: \(line)") }
        return report
    }

    static func soak(daemonPath: String, minutes: Double, rate: Double, cleanup: BenchCleanup, log: (String) -> Void,
                     into report: inout SoakReport) throws {
        let cluster = try FlannelCluster(tag: "soak", api: .v3, daemonPath: daemonPath, nodes: 1, network: ControlPlaneBench.network)
        cleanup.add(folder: cluster.workDir)
        cleanup.add(lab: cluster.lab)
        cleanup.add(bpffs: cluster.bpffsRoot)
        defer { cluster.cleanup() }
        let node = cluster.nodes[0]
        let etcd = GatewayConnection(namespace: cluster.lab.wireNamespace, host: cluster.etcdIP, port: 2379)
        let longLease = try etcd.grant(ttl: 86400)
        try etcd.putSyntheticLeases(0..<basePeers, of: cluster, lease: longLease)
        let process = try cluster.startDaemon(node, extra: ["--subnet-lease-ttl", "\(ownLeaseTTL)", "--reconcile-interval", "30"],
                                              timeout: 60)
        let pin = cluster.pinFolder(node) + "/" + FXDP_MAP_PEERS

        // Churn: live keys by index; adds take fresh indices above the base.
        var live = Set(0..<basePeers)
        var nextIndex = basePeers
        var operations: [String: Int] = [:]
        var shortLease = try etcd.grant(ttl: 20)
        var shortLeaseAt = ControlPlaneBench.now()
        let start = ControlPlaneBench.now()
        let end = start + minutes * 60
        let sampleEvery = minutes <= 5 ? 5.0 : 15.0
        var nextSample = start
        var op = 0
        while ControlPlaneBench.now() < end {
            try cleanup.checkInterrupted()
            guard process.isRunning else { throw LabError(command: process.command, message: "the daemon exited; log:\n\(cluster.daemonLog(node).suffix(1500))") }
            let now = ControlPlaneBench.now()
            if now >= nextSample {
                report.samples.append(sample(process: process, pin: pin, at: now - start))
                nextSample += sampleEvery
            }
            // A new short lease every 15 s: the keys of the previous one expire 20 s after its grant.
            if now - shortLeaseAt >= 15 {
                shortLease = try etcd.grant(ttl: 20)
                shortLeaseAt = now
            }
            switch op % 5 {
            case 0, 1:
                let i = nextIndex
                nextIndex += 1
                if nextIndex >= 60000 { nextIndex = basePeers }
                let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
                let expiring = op % 5 == 1
                try etcd.putAll([(cluster.leaseKey(subnet), attributes.json)], lease: expiring ? shortLease : longLease)
                if !expiring { live.insert(i) }
                operations[expiring ? "add (expires in 20 s)" : "add", default: 0] += 1
            case 2, 4:
                if let i = live.randomElement() {
                    let (subnet, attributes) = ControlPlaneBench.syntheticLease(i)
                    var changed = attributes
                    changed.vtepMAC = MACAddress(bytes: [0x0e, 0xfa, UInt8(op & 0xff), UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])
                    try etcd.putAll([(cluster.leaseKey(subnet), changed.json)], lease: longLease)
                    operations["change", default: 0] += 1
                }
            default:
                if let i = live.randomElement() {
                    let (subnet, _) = ControlPlaneBench.syntheticLease(i)
                    _ = try etcd.post("/v3/kv/deleterange", #"{"key":"\#(GatewayConnection.b64(cluster.leaseKey(subnet)))"}"#)
                    live.remove(i)
                    operations["remove", default: 0] += 1
                }
            }
            op += 1
            let due = start + Double(op) / rate
            let wait = due - ControlPlaneBench.now()
            if wait > 0 { usleep(useconds_t(wait * 1e6)) }
        }
        report.operations = operations
        log("soak: churn done: \(operations.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))")

        // The short-lived keys expire within 20 s; then the tables must equal etcd.
        let settleDeadline = ControlPlaneBench.now() + 60
        var etcdSet: Set<IPv4Subnet> = [], mapSet: Set<IPv4Subnet> = [], routeSet: Set<IPv4Subnet> = []
        repeat {
            usleep(500_000)
            let own = try SubnetEnv.read(from: cluster.subnetFile(node))?.subnet
            etcdSet = try etcdSubnets(etcd, prefix: cluster.prefix).subtracting(own.map { [$0] } ?? [])
            mapSet = Set(try cluster.pinnedPeerSubnets(node))
            routeSet = try routeSubnets(cluster, node)
        } while (etcdSet != mapSet || etcdSet != routeSet) && ControlPlaneBench.now() < settleDeadline
        report.samples.append(sample(process: process, pin: pin, at: ControlPlaneBench.now() - start))
        report.etcdSubnets = etcdSet.count
        report.mapSubnets = mapSet.count
        report.routeSubnets = routeSet.count
        report.verdicts.append("tables at the end: etcd \(etcdSet.count) peer subnets, pinned map \(mapSet.count), kernel routes \(routeSet.count)")
        if etcdSet != mapSet {
            report.failures.append("pinned map differs from etcd: \(etcdSet.subtracting(mapSet).count) missing, \(mapSet.subtracting(etcdSet).count) extra")
        }
        if etcdSet != routeSet {
            report.failures.append("kernel routes differ from etcd: \(etcdSet.subtracting(routeSet).count) missing, \(routeSet.subtracting(etcdSet).count) extra")
        }
        judge(&report)
    }

    static func sample(process: LabProcess, pin: String, at seconds: Double) -> SoakSample {
        let memory = ProcessMemory.parse(status: readFile("/proc/\(process.pid)/status"))
        let entries = (try? BPFMapCount.entries(pin)) ?? -1
        return SoakSample(seconds: seconds, rssKiB: memory?.rssKiB ?? 0, hwmKiB: memory?.hwmKiB ?? 0,
                          fds: ProcessFDs.count(pid: process.pid) ?? -1, mapEntries: entries)
    }

    /// The flatness verdicts over the samples.
    static func judge(_ report: inout SoakReport) {
        let s = report.samples
        guard s.count >= 4 else {
            report.failures.append("only \(s.count) samples: too short to judge flatness")
            return
        }
        let q = s.count / 4
        let second = s[q..<(2 * q)].map(\.rssKiB).max() ?? 0
        let last = s[(3 * q)...].map(\.rssKiB).max() ?? 0
        let growth = last - second
        report.verdicts.append("RSS: \(BenchFormat.number(Double(s.first!.rssKiB) / 1024, 1)) MiB at the start, "
            + "\(BenchFormat.number(Double(second) / 1024, 1)) MiB at most in the second quarter, "
            + "\(BenchFormat.number(Double(last) / 1024, 1)) in the last (growth \(growth) KiB; flat if ≤ 1024)")
        if growth > 1024 { report.failures.append("RSS grew by \(growth) KiB between the second and the last quarter") }
        let fds = s[(s.count / 2)...].map(\.fds)
        report.verdicts.append("open fds over the second half: \(fds.min() ?? 0)–\(fds.max() ?? 0)")
        if (fds.max() ?? 0) - (fds.min() ?? 0) > 2 { report.failures.append("open fds moved by more than 2 over the second half") }
        let entries = s.map(\.mapEntries)
        report.verdicts.append("pinned map entries over the run: \(entries.min() ?? 0)–\(entries.max() ?? 0)")
    }

    /// The subnets of every lease key in etcd now.
    static func etcdSubnets(_ etcd: GatewayConnection, prefix: String) throws -> Set<IPv4Subnet> {
        let key = prefix + "/subnets/"
        var end = Array(key.utf8)
        end[end.count - 1] += 1
        let body = #"{"key":"\#(GatewayConnection.b64(key))","range_end":"\#(Data(end).base64EncodedString())","keys_only":true}"#
        let doc = try JSONValue.parse(try etcd.post("/v3/kv/range", body))
        var out: Set<IPv4Subnet> = []
        for kv in doc["kvs"]?.arrayValue ?? [] {
            guard let b64 = kv["key"]?.stringValue, let raw = Data(base64Encoded: b64) else { continue }
            let name = String(decoding: raw, as: UTF8.self).dropFirst(key.count)
            if let subnet = IPv4Subnet(leaseKey: name) { out.insert(subnet) }
        }
        return out
    }

    /// The subnets routed to flannel.1 in the node's namespace.
    static func routeSubnets(_ cluster: FlannelCluster, _ node: LabNode) throws -> Set<IPv4Subnet> {
        let r = try cluster.lab.run(node.name, [LabTools.ip, "-4", "route", "show", "dev", "flannel.1"])
        var out: Set<IPv4Subnet> = []
        for line in r.stdout.split(separator: "\n") {
            if let first = line.split(separator: " ").first, let subnet = IPv4Subnet(cidr: String(first)),
               ControlPlaneBench.network.contains(subnet.address), subnet.prefixLength == 24 {
                out.insert(subnet)
            }
        }
        return out
    }
}

/// Entries of a pinned BPF map, counted by walking its keys.
enum BPFMapCount {
    static func entries(_ path: String) throws -> Int {
        try BPFMap.openPinned(path: path, key: fxdp_peer_key.self, value: fxdp_peer_value.self).keys().count
    }
}
