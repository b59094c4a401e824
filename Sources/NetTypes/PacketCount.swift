/// Packets and bytes, as a counter holds them (one of the BPF programs' counters, summed over CPUs).
public struct PacketCount: Sendable, Equatable, CustomStringConvertible {
    public var packets: UInt64
    public var bytes: UInt64

    public init(packets: UInt64 = 0, bytes: UInt64 = 0) {
        self.packets = packets
        self.bytes = bytes
    }

    public var description: String { "\(packets) packets, \(bytes) bytes" }
}
