// Frames sent as they are, out of one interface of a lab namespace (an AF_PACKET socket there): for
// the tests that must put exact bytes on a wire — spoofed sources, hand-made extension headers, a
// frame a BPF program built in a test run.

import CBPF
import Glibc

public enum FrameSender {
    /// Sends each of `frames` out of `ifname` in `namespace`, unchanged.
    public static func send(namespace: String, ifname: String, frames: [[UInt8]]) throws {
        try NetnsThread.run(namespace: namespace) { () throws in
            let index = if_nametoindex(ifname)
            guard index > 0 else { throw LabError(command: [], message: "no interface \(ifname) in \(namespace)") }
            let s = socket(AF_PACKET, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard s >= 0 else { throw LabError(command: [], message: "socket(AF_PACKET) in \(namespace): errno \(errno)") }
            defer { close(s) }
            var address = sockaddr_ll()
            address.sll_family = UInt16(AF_PACKET)
            address.sll_ifindex = Int32(index)
            address.sll_halen = 6
            try sendDatagrams(s, frames, to: address, what: "sendto(AF_PACKET, \(ifname)) in \(namespace)")
        }
    }
}
