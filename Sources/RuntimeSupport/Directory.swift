// Directory listing, once. readdir(3)'s records are only as long as their names (d_reclen), so the
// name is read through the record's pointer up to its NUL. Copying the fixed 256-byte `d_name` field
// into Swift (`withUnsafeBytes(of: entry.pointee.d_name)`) reads past the end of a short last record,
// and crashes when that record ends at a page boundary (seen on /dev/shm in the test suite).

import Glibc

public enum Directory {
    /// The names in the directory at `path`, without "." and "..", in readdir's order; nil when it
    /// cannot be opened (errno says why).
    public static func entryNames(at path: String) -> [String]? {
        guard let handle = opendir(path) else { return nil }
        defer { closedir(handle) }
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = String(cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
