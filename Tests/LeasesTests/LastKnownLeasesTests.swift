import Foundation
import Glibc
@testable import Leases
import NetTypes
import TestSupport
import Testing

@Suite("LeasesTests: the last known state file")
struct LastKnownLeasesTests {
    static let configJSON = #"{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#

    static func sample() throws -> LastKnownLeases {
        let config = try NetworkConfig.parse(configJSON)
        let own = Lease(subnet: IPv4Subnet(cidr: "10.5.3.0/24")!,
                        attributes: .vxlan(publicIP: IPv4Address(192, 168, 1, 3), vni: 1, vtepMAC: MACAddress("02:00:00:00:03:01")!))
        let peer = Lease(subnet: IPv4Subnet(cidr: "10.5.7.0/24")!,
                         attributes: .vxlan(publicIP: IPv4Address(192, 168, 1, 7), vni: 1, vtepMAC: MACAddress("02:00:00:00:07:01")!))
        return LastKnownLeases(savedAt: 1_800_000_000, etcdAPI: .v3, config: config, own: own, ownExpiresAt: 1_800_086_400, peers: [peer])
    }

    @Test("written and read back: the same config, own lease, expiry and peers; atomically, mode 0644")
    func roundTrip() throws {
        let state = try Self.sample()
        let dir = "/tmp/fxdp-lkl-\(getpid())"
        let path = dir + "/sub/last-known.json"
        defer {
            unlink(path)
            rmdir(dir + "/sub")
            rmdir(dir)
        }
        try state.write(to: path)
        let read = try #require(try LastKnownLeases.read(from: path))
        #expect(read.skipped.isEmpty)
        #expect(read.state.own == state.own && read.state.peers == state.peers && read.state.ownExpiresAt == state.ownExpiresAt)
        #expect(sameContent(read.state.config, state.config) && read.state.etcdAPI == .v3 && read.state.savedAt == state.savedAt)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o644)
        #expect(try LastKnownLeases.read(from: dir + "/missing.json") == nil)
    }

    func sameContent(_ a: NetworkConfig, _ b: NetworkConfig) -> Bool {
        a.network == b.network && a.subnetLen == b.subnetLen && a.backend == b.backend
    }

    @Test("liveness: a lease is live until its expiry; a reservation always")
    func liveness() throws {
        var state = try Self.sample()
        #expect(state.ownLeaseIsLive(now: 1_800_086_399))
        #expect(!state.ownLeaseIsLive(now: 1_800_086_400))
        state.own.isReservation = true
        state.ownExpiresAt = nil
        #expect(state.ownLeaseIsLive(now: .max))
    }

    @Test("peer leases are validated as if read from etcd: hostile ones are left out with a reason")
    func hostilePeersSkipped() throws {
        let text = try Self.sample().json
        let hostile = text.replacingOccurrences(
            of: #""peers":["#,
            with: #""peers":[{"key":"10.6.0.0-24","value":"{\"PublicIP\":\"192.168.1.9\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VtepMAC\":\"02:00:00:00:09:01\"}}"},{"key":"10.5.9.0-24","value":"{\"PublicIP\":\"127.0.0.1\",\"BackendType\":\"vxlan\"}"},{"key":"10.5.3.0-24","value":"{\"PublicIP\":\"192.168.1.66\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VtepMAC\":\"02:00:00:00:09:01\"}}"},7,"#)
        #expect(hostile != text)
        let (state, skipped) = try LastKnownLeases.parse(hostile, path: "t")
        #expect(state.peers.map(\.subnet) == [IPv4Subnet(cidr: "10.5.7.0/24")!])
        #expect(skipped.count == 4, "\(skipped)")
        #expect(skipped.contains { $0.reason == .subnetOutsideNetwork })
        #expect(skipped.contains { $0.reason == .badPublicIP })
    }

    @Test("a damaged file is refused with the field and what happens next", arguments: [
        ("", "file"),
        ("[]", "file"),
        (#"{"format":2}"#, "format"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v4"}"#, "etcdAPI"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v3","config":"{}"}"#, "config"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v3","config":"{\"Network\":\"10.5.0.0/16\"}","lease":{"key":"10.9.0.0-24"}}"#, "lease.key"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v3","config":"{\"Network\":\"10.5.0.0/16\"}","lease":{"key":"10.5.1.0-24","value":"{}"}}"#, "lease.value"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v3","config":"{\"Network\":\"10.5.0.0/16\"}","lease":{"key":"10.5.1.0-24","value":"{\"PublicIP\":\"192.168.1.1\"}"}}"#, "lease.expiresAt"),
        (#"{"format":1,"savedAt":1,"etcdAPI":"v3","config":"{\"Network\":\"10.5.0.0/16\"}","lease":{"key":"10.5.1.0-24","value":"{\"PublicIP\":\"192.168.1.1\"}","expiresAt":5}}"#, "peers"),
    ])
    func damaged(text: String, field: String) {
        #expect {
            _ = try LastKnownLeases.parse(text, path: "/var/lib/x.json")
        } throws: { error in
            guard let e = error as? LastKnownLeasesError, case .damaged(let path, let f, _) = e else { return false }
            return path == "/var/lib/x.json" && f == field && e.description.contains("rewritten once etcd answers")
        }
    }

    @Test("random mutations of a valid file never crash and either parse or name a field")
    func mutations() throws {
        let base = Array(try Self.sample().json.utf8)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes.remove(at: i)
                default: bytes = Array(bytes.prefix(i))
                }
                if bytes.isEmpty { break }
            }
            do {
                _ = try LastKnownLeases.parse(String(decoding: bytes, as: UTF8.self), path: "m")
            } catch {
                guard case .damaged(_, let field, _) = error else { Issue.record("\(error)"); continue }
                #expect(!field.isEmpty)
            }
        }
    }
}
