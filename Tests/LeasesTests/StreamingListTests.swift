// Listings read as they arrive: the JSON reader in pieces gives what the whole-document parser
// gives (for any way of cutting the text, for broken and hostile text too), and the v3 listing in
// pages is one consistent view at one revision, even when keys change or history is compacted
// between its pages.

import Glibc
@testable import Leases
import NetTypes
import RuntimeSupport
import TestSupport
import Testing

@Suite("LeasesTests: JSON read in pieces")
struct JSONReaderTests {
    static let documents = [
        #"{"header":{"cluster_id":"14841639068965178418","revision":"42"},"kvs":[{"key":"L2ZvbwID","create_revision":"5","mod_revision":"7","version":"2","value":"eyJQdWJsaWNJUCI6IjEwLjAuMC4xIn0=","lease":"7587869447958016514"}],"more":true,"count":"3"}"#,
        #"{"action":"get","node":{"key":"/coreos.com/network/subnets","dir":true,"nodes":[{"key":"/coreos.com/network/subnets/10.5.1.0-24","value":"{\"PublicIP\":\"192.168.1.1\",\"BackendType\":\"vxlan\"}","expiration":"2026-12-04T10:00:00Z","ttl":86321,"modifiedIndex":12,"createdIndex":12},{"key":"/coreos.com/network/subnets/x","dir":true,"nodes":[{"key":"/coreos.com/network/subnets/x/y","value":"z"}]}],"modifiedIndex":4,"createdIndex":4}}"#,
        #"{"a":"\u00e9\ud83d\ude00\n\"\\\/","b":[1,-2.5e3,0,-0,0.5,1E+2,1e-2,true,false,null,[],{},[[]],{"":{}}],"c":"","d":12345678901234567890123}"#,
        #"  [ 1 , "two" , { "three" : [ 3.0 ] } ]  "#,
        #""just a string""#,
        "-12.5e7",
        "true",
        "null",
    ]

    /// The document read in pieces cut at random (1 to `maxPiece` bytes) with `nextValue`.
    static func readInPieces(_ text: [UInt8], maxPiece: Int, _ rng: inout SplitMix64, maxValueBytes: Int = .max) throws -> JSONValue {
        var reader = JSONReader(maxValueBytes: maxValueBytes)
        var offset = 0
        while true {
            if let value = try reader.nextValue() {
                // Only white space may follow.
                while true {
                    guard try reader.next() == nil else { throw reader.fail("trailing data after the value") }
                    guard offset < text.count else { reader.finish(); _ = try reader.next(); return value }
                    let n = Int.random(in: 1...maxPiece, using: &rng)
                    reader.append(text[offset..<min(offset + n, text.count)])
                    offset = min(offset + n, text.count)
                }
            }
            guard offset < text.count else {
                reader.finish()
                guard let value = try reader.nextValue() else { throw reader.fail("unexpected end of input") }
                guard try reader.next() == nil else { throw reader.fail("trailing data after the value") }
                return value
            }
            let n = Int.random(in: 1...maxPiece, using: &rng)
            reader.append(text[offset..<min(offset + n, text.count)])
            offset = min(offset + n, text.count)
        }
    }

    @Test func anyCutGivesTheWholeDocumentsValue() throws {
        var rng = SplitMix64(state: FuzzBudget.seed())
        for doc in Self.documents {
            let whole = try JSONValue.parse(doc)
            for maxPiece in [1, 2, 3, 7, 64, 4096] {
                #expect(try Self.readInPieces(Array(doc.utf8), maxPiece: maxPiece, &rng) == whole, "\(doc.prefix(40)) in pieces of ≤ \(maxPiece)")
            }
        }
    }

    /// Random and mutated documents: cut into pieces, the reader accepts exactly what the whole
    /// parser accepts, with the same value.
    @Test func piecesAgreeWithTheWholeParserOnMutatedInput() throws {
        let seed = FuzzBudget.seed()
        var rng = SplitMix64(state: seed)
        for n in 0..<FuzzBudget.iterations(short: 3000, long: 100_000) {
            let input = n % 7 == 0 ? Mutate.randomBytes(Int.random(in: 0...64, using: &rng), &rng)
                : Mutate.text(Self.documents.randomElement(using: &rng)!, &rng)
            let whole = try? JSONValue.parse(bytes: input)
            let pieces = try? Self.readInPieces(input, maxPiece: Int.random(in: 1...16, using: &rng), &rng)
            #expect(whole == pieces, "seed \(seed), input \(n): \(String(decoding: input.prefix(120), as: UTF8.self))")
            if whole != pieces { return }
        }
    }

    @Test func cutOffTextIsAnErrorOnlyOnceFinished() throws {
        var reader = JSONReader()
        reader.append(Array(#"{"key":"abc"#.utf8))
        #expect(try reader.next() == .objectStart)
        #expect(try reader.next() == .name("key"))
        #expect(try reader.next() == nil, "the string is not complete yet")
        reader.append(Array(#"def","n":12"#.utf8))
        #expect(try reader.next() == .scalar(.string("abcdef")))
        #expect(try reader.next() == .name("n"))
        #expect(try reader.next() == nil, "12 may go on")
        reader.finish()
        #expect(try reader.next() == .scalar(.number("12")), "now it cannot")
        #expect(throws: JSONParseError.self) { try reader.next() }
    }

    @Test func longTokensAndValuesAreRefused() throws {
        var rng = SplitMix64(state: 1)
        let long = #"{"v":""# + String(repeating: "x", count: 5000) + #""}"#
        #expect(throws: JSONParseError.self) { try Self.readInPieces(Array(long.utf8), maxPiece: 100, &rng, maxValueBytes: 1000) }
        // A value above the cap is refused while it is still arriving, not once it is whole.
        var reader = JSONReader(maxValueBytes: 1000)
        reader.append(Array(#"{"v":""#.utf8) + Array(repeating: UInt8(ascii: "x"), count: 2000))
        #expect(throws: JSONParseError.self) { try reader.nextValue() }
        #expect(try Self.readInPieces(Array(long.utf8), maxPiece: 100, &rng, maxValueBytes: 6000) == JSONValue.parse(long))
    }

    @Test func streamReaderWalksAnObjectAsItArrives() async throws {
        var pieces = Array(Self.documents[0].utf8).chunked(5)
        let json = JSONStreamReader(maxValueBytes: 1 << 20) { pieces.isEmpty ? nil : pieces.removeFirst() }
        var revision: String?
        var keys: [String] = []
        try await json.enterObject()
        while let name = try await json.nextName() {
            switch name {
            case "header": revision = try await json.value()["revision"]?.stringValue
            case "kvs":
                try await json.enterArray()
                while try await json.hasElement() { keys.append(try await json.value()["key"]?.stringValue ?? "") }
            default: try await json.skipValue()
            }
        }
        try await json.end()
        #expect(revision == "42" && keys == ["L2ZvbwID"])
    }
}

extension Array {
    func chunked(_ size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}

@Suite("LeasesTests: listings in pages and as they arrive")
struct StreamingListTests {
    static func names(_ n: Int) -> [String] { (0..<n).map { "10.5.\($0).0-24" } }

    static func write(_ registry: any SubnetRegistry, _ names: [String]) async throws {
        for (i, name) in names.enumerated() {
            _ = try await registry.createLease(name: name, value: vxlanAttributes("192.0.2.\(i % 250 + 1)").json, ttl: .seconds(600))
        }
    }

    /// A dedicated etcd (v3) holding `names(10)` under a fresh prefix, and a registry that lists
    /// them in pages of three: what the tests of what happens between two pages start from.
    static func withTenLeasesInPagesOfThree(
        _ name: String, _ body: (EtcdServer, String, any SubnetRegistry) async throws -> Void
    ) async throws {
        try await withEtcd { server in
            let prefix = uniquePrefix(name)
            let registry = try makeRegistry(server, .v3, prefix: prefix) { $0.listPageSize = 3 }
            try await write(registry, names(10))
            try await body(server, prefix, registry)
        }
    }

    @Test(arguments: bothAPIs)
    func pagedAndStreamedListingsHoldEveryKeyOnce(_ api: EtcdAPIVersion) async throws {
        try await withEtcd { server in
            let prefix = uniquePrefix("pages")
            let paged = try makeRegistry(server, api, prefix: prefix) { $0.listPageSize = 4 }
            try await Self.write(paged, Self.names(23))
            let listing = try await paged.listLeases()
            #expect(listing.records.map(\.name).sorted() == Self.names(23).sorted())
            // One page holds them all: the same keys, values and revisions (v2's remaining TTLs
            // move between the two listings).
            let whole = try await makeRegistry(server, api, prefix: prefix).listLeases()
            func content(_ l: LeaseListing) -> [String] {
                l.records.map { "\($0.name) \($0.valueText) \($0.revision) \($0.createRevision) \($0.isReservation)" }.sorted()
            }
            #expect(content(whole) == content(listing))
            #expect(whole.revision == listing.revision)
            // A watch from after the listing's revision sees the next change, not an old one.
            _ = try await paged.createLease(name: "10.5.200.0-24", value: vxlanAttributes("192.0.2.200").json, ttl: .seconds(600))
            var events = paged.watchLeases(fromRevision: listing.revision + 1).makeAsyncIterator()
            let first = try await events.next()?.first { if case .put = $0 { true } else { false } }
            #expect(first.map { if case .put(let r) = $0 { r.name } else { "" } } == "10.5.200.0-24")
        }
    }

    /// Pages after the first read the first page's revision: a key written between two pages is not
    /// in the listing, and the watch from the listing's revision delivers it.
    @Test func pagesShareTheFirstPagesRevision() async throws {
        try await Self.withTenLeasesInPagesOfThree("pagerev") { server, prefix, registry in
            var written = false
            var seen: [String] = []
            let revision = try await registry.listLeases { record in
                seen.append(record.name)
                if !written {
                    written = true
                    // Blocking on purpose: the next page is not asked for before the write is done.
                    let r = try runCommand(["/usr/bin/env", "ETCDCTL_API=3", "/usr/bin/etcdctl", "--endpoints=\(server.clientURL)",
                                            "put", prefix + "/subnets/10.5.99.0-24", vxlanAttributes("192.0.2.99").json])
                    #expect(r.status == 0, "\(r.stderr)")
                }
            }
            #expect(seen.sorted() == Self.names(10).sorted(), "the key written between pages is not in the listing")
            let after = try await registry.listLeases()
            #expect(after.records.count == 11 && after.revision > revision)
        }
    }

    /// History compacted between two pages: that listing fails as history unavailable, and
    /// reduceLeases starts over and returns a whole, newer listing.
    @Test func compactionBetweenPagesStartsTheListingOver() async throws {
        try await Self.withTenLeasesInPagesOfThree("pagecompact") { server, prefix, registry in
            var compacted = false
            var attempts = 0
            let (names, revision) = try await registry.reduceLeases(into: [String]()) { names, record in
                if names.isEmpty { attempts += 1 }
                names.append(record.name)
                if !compacted {
                    compacted = true
                    let etcdctl = ["/usr/bin/env", "ETCDCTL_API=3", "/usr/bin/etcdctl", "--endpoints=\(server.clientURL)"]
                    let put = try runCommand(etcdctl + ["put", prefix + "/subnets/10.5.98.0-24", vxlanAttributes("192.0.2.98").json, "-w", "json"])
                    let rev = try JSONValue.parse(put.stdout)["header"]?["revision"]?.int64Value ?? 0
                    let compact = try runCommand(etcdctl + ["compact", String(rev)])
                    #expect(compact.status == 0, "\(compact.stderr)")
                }
            }
            #expect(attempts == 2, "the listing started over once")
            #expect(names.sorted() == (Self.names(10) + ["10.5.98.0-24"]).sorted())
            #expect(revision > 0)
        }
    }
}

@Suite("LeasesTests: the last known state written peer by peer")
struct LastKnownEncodingTests {
    /// The file written peer by peer is byte for byte the document a value tree of it gives.
    @Test func peerByPeerEqualsTheValueTree() throws {
        var state = try LastKnownLeasesTests.sample()
        for i in 0..<40 {
            state.peers.append(Lease(subnet: IPv4Subnet(cidr: "10.5.\(100 + i).0/24")!,
                                     attributes: .vxlan(publicIP: IPv4Address(192, 168, 2, UInt8(i + 1)), vni: 1,
                                                        vtepMAC: MACAddress("02:00:00:00:09:\(String(format: "%02x", i))")!)))
        }
        for (peers, expiry) in [(state.peers, Optional<Int64>(1_800_086_400)), ([], nil)] {
            var s = state
            s.peers = peers
            s.ownExpiresAt = expiry
            s.own.isReservation = expiry == nil  // a lease without expiry is a reservation
            var lease = [JSONMember("key", .string(s.own.key)), JSONMember("value", .string(s.own.attributes.json)),
                         JSONMember("reservation", .bool(s.own.isReservation))]
            if let expiry { lease.append(JSONMember("expiresAt", .int(expiry))) }
            let tree = JSONValue.object([
                JSONMember("format", .int(LastKnownLeases.format)), JSONMember("savedAt", .int(s.savedAt)),
                JSONMember("etcdAPI", .string(s.etcdAPI.rawValue)), JSONMember("config", .string(s.config.rawJSON)),
                JSONMember("lease", .object(lease)),
                JSONMember("peers", .array(peers.map {
                    .object([JSONMember("key", .string($0.key)), JSONMember("value", .string($0.attributes.json))])
                })),
            ]).serialized + "\n"
            #expect(s.json == tree)
            #expect(try LastKnownLeases.parse(s.json, path: "/x").state == s)
        }
    }
}
