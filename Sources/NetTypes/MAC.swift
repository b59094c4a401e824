/// A 48-bit Ethernet address. Prints lowercase and colon-separated, as flannel writes VtepMAC.
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == 6, "MACAddress needs 6 bytes")
        self.bytes = Array(bytes)
    }

    /// Parses "c6:d2:32:6f:8f:44" (either case; also '-' separators). nil otherwise.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == ":" || $0 == "-" })
        guard parts.count == 6 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard p.count == 2, let b = UInt8(p, radix: 16) else { return nil }
            out.append(b)
        }
        bytes = out
    }

    public init(tuple t: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)) {
        bytes = [t.0, t.1, t.2, t.3, t.4, t.5]
    }

    /// The 6 bytes as a C `__u8[6]` tuple, the form the shared header uses.
    public var tuple: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) {
        (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5])
    }

    public static let zero = MACAddress(bytes: [0, 0, 0, 0, 0, 0])

    /// A random locally administered unicast address (as the kernel gives a new vxlan device).
    public static func randomLocal() -> MACAddress {
        var b = (0..<6).map { _ in UInt8.random(in: 0...255) }
        b[0] = (b[0] & 0xfe) | 0x02
        return MACAddress(bytes: b)
    }

    public var isMulticast: Bool { bytes[0] & 1 == 1 }
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    public var description: String {
        bytes.map { b in
            let s = String(b, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined(separator: ":")
    }
}
