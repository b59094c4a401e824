// Many changes per send: the per-peer kernel state of thousands of peers (neighbour, fdb, route
// each) costs one netlink round trip per entry when made one call at a time. `apply` writes a batch
// of changes back to back into one send buffer, sends it with one sendto (the kernel applies the
// messages in order, each with its own ACK), and then collects every ACK, so a batch costs one
// round trip. The ACKs of one send must fit the socket's receive buffer, which counts each ACK at
// its buffer's true size (over 1 KiB for a few dozen bytes): an ACK the kernel cannot queue is lost,
// and the socket says ENOBUFS once. So a send carries at most `batchMessages` requests, and an
// overrun anyway fails the requests not yet answered (the reconciler retries them) and drains the
// socket, never waiting for an ACK that will not come.

import NetTypes

/// One change for `NetlinkSocket.apply`: what `ip neigh`/`bridge fdb`/`ip route` would do.
public struct NetlinkChange: Sendable, CustomStringConvertible {
    let type: UInt16
    let flags: UInt16
    let fill: @Sendable (NetlinkRequest) -> Void
    let object: @Sendable () -> String
    /// The device the change is on, to name it in an error.
    let index: Int32?

    public var description: String { "\(RT.name(type)) \(object())" }

    /// `ip neigh replace`.
    public static func replaceNeighbour<A: IPAddressType>(_ n: IPNeighbour<A>) -> NetlinkChange {
        NetlinkChange(type: RT.newNeigh, flags: RT.fCreate | RT.fReplace, fill: { NetlinkSocket.fillNeighbour($0, n) },
                      object: { n.description }, index: n.index)
    }

    /// `ip neigh del <address> dev <index>`.
    public static func deleteNeighbour<A: IPAddressType>(address: A, index: Int32) -> NetlinkChange {
        let n = IPNeighbour(index: index, address: address, mac: nil, state: [], flags: [])
        return NetlinkChange(type: RT.delNeigh, flags: 0, fill: { NetlinkSocket.fillNeighbour($0, n) },
                             object: { n.description }, index: index)
    }

    /// `bridge fdb replace`.
    public static func replaceFDB<A: IPAddressType>(_ e: BridgeFDBEntry<A>) -> NetlinkChange {
        NetlinkChange(type: RT.newNeigh, flags: RT.fCreate | RT.fReplace, fill: { NetlinkSocket.fillFDB($0, e) },
                      object: { "fdb " + e.description }, index: e.index)
    }

    /// `bridge fdb del` (without a destination: the whole entry for the MAC).
    public static func deleteFDB<A: IPAddressType>(_ e: BridgeFDBEntry<A>) -> NetlinkChange {
        NetlinkChange(type: RT.delNeigh, flags: 0, fill: { NetlinkSocket.fillFDB($0, e) },
                      object: { "fdb " + e.description }, index: e.index)
    }

    /// `ip route replace`.
    public static func replaceRoute<S: IPSubnetType>(_ r: IPRoute<S>) -> NetlinkChange {
        NetlinkChange(type: RT.newRoute, flags: RT.fCreate | RT.fReplace, fill: { NetlinkSocket.fillRoute($0, r) },
                      object: { r.description }, index: r.outputIndex)
    }

    /// `ip route del`.
    public static func deleteRoute<S: IPSubnetType>(_ r: IPRoute<S>) -> NetlinkChange {
        NetlinkChange(type: RT.delRoute, flags: 0, fill: { NetlinkSocket.fillRoute($0, r) },
                      object: { r.description }, index: r.outputIndex)
    }
}

extension NetlinkSocket {
    /// Bytes of requests per send (a change is under 128 bytes).
    static let batchBytes = 32 * 1024
    /// Requests per send: their ACKs (~1.3 KiB each as the receive buffer counts them) stay well
    /// under the default receive buffer (~208 KiB).
    static let batchMessages = 96
    /// Room for one change in the send buffer.
    static let changeRoom = 512

    /// Applies `changes` in order, many per send (the file's note). Returns one result per change:
    /// nil when the kernel applied it, else its error. A failed change does not stop the others.
    public mutating func apply(_ changes: [NetlinkChange]) -> [NetlinkError?] {
        var results = [NetlinkError?](repeating: nil, count: changes.count)
        guard !changes.isEmpty else { return results }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.batchBytes, alignment: 8)
        defer { buffer.deallocate() }
        var start = 0
        while start < changes.count {
            // Each request is built right after the previous one (back to back, as sent), in a
            // slot of `changeRoom` that it cannot outgrow.
            var length = 0
            var end = start
            while end < changes.count, end - start < Self.batchMessages, length + Self.changeRoom <= Self.batchBytes {
                let change = changes[end]
                let slot = UnsafeMutableRawBufferPointer(rebasing: buffer[length..<(length + Self.changeRoom)])
                let request = NetlinkRequest(type: change.type, flags: change.flags, in: slot, owned: false)
                change.fill(request)
                length += (Int(request.header.pointee.nlmsg_len) + 3) & ~3
                end += 1
            }
            let errors = sendBatch(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]), count: end - start) { i in
                changes[start + i].object()
            }
            for (i, error) in errors { results[start + i] = error }
            start = end
        }
        return results
    }
}
