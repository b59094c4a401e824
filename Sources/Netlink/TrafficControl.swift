// Traffic control, read only: the qdiscs of the namespace and the filters on a hook (RTM_GETQDISC,
// RTM_GETTFILTER, struct tcmsg). The fast path asks who else acts on a pod's veth before it takes
// that pod's packets past it: a shaping qdisc or another agent's filter must keep seeing them.

import Glibc

/// A qdisc as `tc qdisc show` lists it.
public struct QdiscInfo: Hashable, Sendable, CustomStringConvertible {
    public var index: Int32
    public var kind: String
    public var handle: UInt32
    public var parent: UInt32

    public var description: String { "\(kind) handle \(String(handle >> 16, radix: 16)): dev #\(index)" }
}

/// A filter as `tc filter show` lists it.
public struct TCFilterInfo: Hashable, Sendable, CustomStringConvertible {
    public var kind: String
    public var handle: UInt32
    /// The filter's priority (preference): lower runs first.
    public var priority: UInt16

    public var description: String { "\(kind) pref \(priority) handle 0x\(String(handle, radix: 16))" }
}

/// The two hooks of a clsact qdisc.
public enum ClsactHook: Sendable {
    case ingress, egress

    /// TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS).
    var parent: UInt32 { self == .ingress ? 0xFFFF_FFF2 : 0xFFFF_FFF3 }
}

extension NetlinkSocket {
    static func tcmsg(index: Int32, parent: UInt32 = 0) -> [UInt8] {
        var b: [UInt8] = [RT.afUnspec, 0, 0, 0]
        b.appendI32(index)
        b.appendU32(0) // tcm_handle
        b.appendU32(parent)
        b.appendU32(0) // tcm_info
        return b
    }

    /// Every qdisc of the namespace (`index` nil) or of one interface.
    public mutating func qdiscs(index: Int32? = nil) throws(NetlinkError) -> [QdiscInfo] {
        let req = NetlinkRequest(type: RT.getQdisc)
        req.putFixedHeader(Self.tcmsg(index: index ?? 0))
        let all = try dump(req, describe: { "qdisc dump" }).compactMap { m -> QdiscInfo? in
            guard m.type == RT.newQdisc, m.bytes.count >= 36 else { return nil }
            let a = m.attributes(afterFixedHeader: 20)
            return QdiscInfo(index: m.i32(at: 20), kind: a.string(RT.tcaKind) ?? "", handle: m.u32(at: 24), parent: m.u32(at: 28))
        }
        return index.map { i in all.filter { $0.index == i } } ?? all
    }

    /// The filters on `hook` of interface `index`'s clsact qdisc (none when it has no clsact).
    public mutating func filters(index: Int32, hook: ClsactHook) throws(NetlinkError) -> [TCFilterInfo] {
        let req = NetlinkRequest(type: RT.getTfilter)
        req.putFixedHeader(Self.tcmsg(index: index, parent: hook.parent))
        do {
            return try dump(req, describe: { "filters of dev #\(index) \(hook)" }).compactMap { m -> TCFilterInfo? in
                guard m.type == RT.newTfilter, m.bytes.count >= 36, m.i32(at: 20) == index else { return nil }
                // tcm_info: priority in the upper 16 bits, protocol in the lower.
                return TCFilterInfo(kind: m.attributes(afterFixedHeader: 20).string(RT.tcaKind) ?? "", handle: m.u32(at: 24),
                                    priority: UInt16(m.u32(at: 32) >> 16))
            }
        } catch where error.errno == EINVAL || error.errno == ENOENT {
            return [] // no clsact qdisc: no hook, no filters
        }
    }
}
