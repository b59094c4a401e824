// The IPv6 halves of the leases through the same reconciler design as IPv4: the policy that picks
// them, and a reconciler over an IPv6 table (in memory: the real tables are tested in their modules).

import Dataplane
import FlannelDaemon
import Leases
import Logging
import NetTypes
import Synchronization
import Testing

final class MemoryIPv6PeerTable: IPv6PeerTable, Sendable {
    let tableName = "memory6"
    private let entries = Mutex<[IPv6Subnet: IPv6Peer]>([:])
    private let log = Mutex<[String]>([])

    func currentPeers() throws -> Set<IPv6Peer> { Set(entries.withLock { $0.values }) }
    func upsert(_ peer: IPv6Peer) throws {
        entries.withLock { $0[peer.subnet] = peer }
        log.withLock { $0.append("upsert \(peer.subnet)") }
    }
    func remove(_ peer: IPv6Peer) throws {
        entries.withLock { $0[peer.subnet] = nil }
        log.withLock { $0.append("remove \(peer.subnet)") }
    }
    func tamper(_ body: (inout [IPv6Subnet: IPv6Peer]) -> Void) { entries.withLock { body(&$0) } }
    var writes: [String] { log.withLock { $0 } }
}

@Suite("IPv6 peers: the leases' IPv6 halves, reconciled like the IPv4 ones")
struct IPv6ReconcilerTests {
    let own = IPv6Subnet(cidr: "fd00:5:0:1::/64")!
    let mac = MACAddress(bytes: [0x0a, 0, 0, 0, 0, 2]), mac6 = MACAddress(bytes: [0x0a, 0, 0, 0, 0, 0x62])

    func lease(_ n: Int, v6: Bool = true, type: String = "vxlan", mac6: MACAddress? = nil) -> Lease {
        let attributes = LeaseAttributes.vxlan(publicIP: IPv4Address(192, 168, 77, UInt8(n)), vni: 1, vtepMAC: mac,
                                               publicIPv6: v6 ? IPv6Address("fd77::\(n)")! : nil, ipv6VtepMAC: v6 ? (mac6 ?? self.mac6) : nil)
        var l = Lease(subnet: IPv4Subnet(cidr: "10.5.\(n).0/24")!, ipv6Subnet: v6 ? IPv6Subnet(cidr: "fd00:5:0:\(n)::/64")! : nil,
                      attributes: attributes)
        if type != "vxlan" { l.attributes.backendType = type }
        return l
    }

    @Test("the policy: own IPv6 subnet dropped, IPv4-only leases are no IPv6 peer, BackendV6Data's MAC carried, DirectRouting by the IPv6 underlay")
    func policy() {
        let policy = DesiredIPv6PeerPolicy(ownSubnet: own, backend: .vxlan(directRouting: false), underlaySubnet: nil)
        #expect(policy.verdict(for: RemoteLease(lease(1))) == .own)
        #expect(policy.verdict(for: RemoteLease(lease(2, v6: false))) == .noIPv6Half)
        #expect(policy.verdict(for: RemoteLease(lease(3))) == .peer(IPv6Peer(subnet: IPv6Subnet(cidr: "fd00:5:0:3::/64")!,
                                                                              publicIP: IPv6Address("fd77::3")!, vtepMAC: mac6)))
        if case .skipped = policy.verdict(for: RemoteLease(lease(4, type: "host-gw"))) {} else { Issue.record("a host-gw lease in a vxlan network") }
        let direct = DesiredIPv6PeerPolicy(ownSubnet: own, backend: .vxlan(directRouting: true), underlaySubnet: IPv6Subnet(cidr: "fd77::/64"))
        guard case .peer(let peer) = direct.verdict(for: RemoteLease(lease(3))) else { Issue.record("no peer"); return }
        #expect(peer.direct)
        let hostGW = DesiredIPv6PeerPolicy(ownSubnet: own, backend: .hostGW, underlaySubnet: nil)
        guard case .peer(let gw) = hostGW.verdict(for: RemoteLease(lease(5, type: "host-gw"))) else { Issue.record("no host-gw peer"); return }
        #expect(gw.vtepMAC == nil && gw.publicIP == IPv6Address("fd77::5"))
        #expect(DesiredIPv6PeerPolicy(ownSubnet: own, backend: .udp, underlaySubnet: nil).verdict(for: RemoteLease(lease(6, type: "udp")))
            == .skipped(reason: "the udp backend carries IPv4 only"))
    }

    @Test("the IPv6 reconciler fills, follows lease events by IPv6 subnet, and repairs drift on a full pass")
    func reconciler() async throws {
        let table = MemoryIPv6PeerTable()
        var logger = Logger(label: "test6")
        logger.logLevel = .critical
        let reconciler = IPv6Reconciler(tables: [IPv6TableBinding(table)], logger: logger, threadName: "test-reconcile6")
        let follower = IPv6PeerFollower(policy: DesiredIPv6PeerPolicy(ownSubnet: own, backend: .vxlan(directRouting: false), underlaySubnet: nil),
                                        reconciler: reconciler, logger: logger)
        #expect(await follower.replace([lease(1), lease(2), lease(3, v6: false), lease(4)]) == 2)
        let first = await reconciler.reconcile()
        #expect(first.succeeded && first.desiredCount == 2)
        #expect(Set(try table.currentPeers().map(\.subnet)) == [IPv6Subnet(cidr: "fd00:5:0:2::/64")!, IPv6Subnet(cidr: "fd00:5:0:4::/64")!])

        // A changed BackendV6Data.VtepMAC, a removed lease: only those two subnets are written.
        let changed = MACAddress(bytes: [0x0a, 0, 0, 0, 0, 0x63])
        await follower.update(lease(2, mac6: changed))
        await follower.remove(lease(4))
        let pass = await reconciler.reconcile(.changes)
        #expect(pass.succeeded && !pass.readBack)
        #expect(Array(table.writes.suffix(2)) == ["remove fd00:5:0:4::/64", "upsert fd00:5:0:2::/64"])
        #expect(try table.currentPeers().map(\.vtepMAC) == [changed])

        // Drift behind the reconciler's back is repaired by a full pass.
        table.tamper { $0 = [:] }
        #expect(await reconciler.reconcile(.full).outcomes[0].upserted.map(\.subnet) == [IPv6Subnet(cidr: "fd00:5:0:2::/64")!])
    }
}
