// Pins are how a map outlives the process and how tools find it, but they are only names in a
// bpffs: `rm` removes one without touching the map (the programs and our fds keep it alive), and
// the next start would create an empty map in its place. `repairPins` puts every pin of this object
// back: a missing pin is re-created from our fd; a pin that names another map is replaced by ours
// (the folder is the object's own, see `pinRoot`), and a removed folder is made again.

import CBPF
import Glibc

/// One pin put back by `BPFObject.repairPins`.
public struct PinRepair: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// Nothing was pinned at the path.
        case missing
        /// Another map was pinned at the path.
        case replaced
    }

    public var mapName: String
    public var path: String
    public var kind: Kind

    public var description: String {
        kind == .missing ? "\(mapName) (pin \(path) was removed)" : "\(mapName) (pin \(path) named another map)"
    }
}

extension BPFObject {
    /// Checks that every map of this loaded object that has a pin path is pinned there, as itself;
    /// re-pins what is not. Returns what it repaired (empty when all was in place).
    public func repairPins() throws(BPFError) -> [PinRepair] {
        var repairs: [PinRepair] = []
        for mapName in mapNames {
            guard let path = try pinPath(ofMap: mapName) else { continue }
            let ours = try loadedMapFD(mapName)
            let ourID = try BPFMapInfo(fd: ours, operation: "bpf_obj_get_info_by_fd(\(name).\(mapName))").id
            let pinned = bpf_obj_get(path)
            if pinned >= 0 {
                let owned = OwnedFD(pinned)
                let theirs = try BPFMapInfo(fd: owned.raw, operation: "bpf_obj_get_info_by_fd(\(path))")
                if theirs.id == ourID { continue }
                guard unlink(path) == 0 else {
                    throw BPFError(operation: "unlink(\(path))", errno: errno, detail: "a foreign map is pinned at our path",
                                   hint: "remove it by hand; the folder belongs to this program")
                }
                try pin(ours, mapName, at: path)
                repairs.append(PinRepair(mapName: mapName, path: path, kind: .replaced))
            } else {
                let e = errno
                guard e == ENOENT else {
                    throw BPFError(operation: "bpf_obj_get(\(path))", errno: e, detail: "cannot check the pin",
                                   hint: "is the bpffs still mounted?")
                }
                try pin(ours, mapName, at: path)
                repairs.append(PinRepair(mapName: mapName, path: path, kind: .missing))
            }
        }
        return repairs
    }

    private func pin(_ fd: Int32, _ mapName: String, at path: String) throws(BPFError) {
        // `rm -r` of the whole folder removes it too.
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            try BPFFS.makeDirectories(String(path[..<slash]))
        }
        try pinObject(fd: fd, name: "\(name).\(mapName)", at: path, hint: "is the bpffs still mounted and the folder still there?")
    }
}
