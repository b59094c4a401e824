// Socket addresses for the labs' hand-made sockets. The C calls (bind, connect, sendto) take a
// `sockaddr *` and a length, Swift holds the concrete sockaddr_in / sockaddr_in6 / sockaddr_ll:
// these helpers do the pointer rebinding once, with the length always of the type passed.

import Glibc
import NetTypes

/// An IPv4 socket address, port and address in network order.
public func socketAddress(_ address: IPv4Address, port: UInt16 = 0) -> sockaddr_in {
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_port = port.bigEndian
    sa.sin_addr.s_addr = address.value.bigEndian
    return sa
}

/// An IPv6 socket address, port in network order.
public func socketAddress(_ address: IPv6Address, port: UInt16 = 0) -> sockaddr_in6 {
    var sa = sockaddr_in6()
    sa.sin6_family = sa_family_t(AF_INET6)
    sa.sin6_port = port.bigEndian
    withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address.bytes) }
    return sa
}

/// Calls `body` with `address` as the `sockaddr *` and length the socket calls take.
public func withSockaddr<Address, Result>(
    _ address: Address, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result
) rethrows -> Result {
    try withUnsafePointer(to: address) {
        try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<Address>.size)) }
    }
}

/// Calls `body` with `address`:`port` as the `sockaddr *` and length of its family.
public func withSockaddr<Address: IPAddressType, Result>(
    of address: Address, port: UInt16 = 0, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result
) rethrows -> Result {
    switch Address.family {
    case .ipv4: try withSockaddr(socketAddress(IPv4Address(networkBytes: address.bytes)!, port: port), body)
    case .ipv6: try withSockaddr(socketAddress(IPv6Address(networkBytes: address.bytes)!, port: port), body)
    }
}

/// Sends each of `payloads` to `address` with one sendto each. A datagram that does not go out
/// whole throws, `what` naming the send ("sendto 10.5.1.2:8472 from ns-a") before the errno.
public func sendDatagrams<Address>(_ fd: Int32, _ payloads: [[UInt8]], to address: Address, what: String) throws {
    try withSockaddr(address) { try sendEach(fd, payloads, to: $0, length: $1, what: what) }
}

/// Sends each payload as one UDP datagram from `source` (an address of `namespace`, of either
/// family) to `destination`:`port`, from a socket inside `namespace`.
public func sendDatagrams<Address: IPAddressType>(namespace: String, source: Address, destination: Address, port: UInt16,
                                                 payloads: [[UInt8]]) throws {
    try NetnsThread.run(namespace: namespace) { () throws in
        let fd = socket(Int32(Address.family.addressFamily), Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw LabError(command: [], message: "socket: errno \(errno)") }
        defer { close(fd) }
        let bound = withSockaddr(of: source) { bind(fd, $0, $1) }
        guard bound == 0 else { throw LabError(command: [], message: "bind \(source): errno \(errno)") }
        try withSockaddr(of: destination, port: port) { try sendEach(fd, payloads, to: $0, length: $1, what: "sendto") }
    }
}

private func sendEach(_ fd: Int32, _ payloads: [[UInt8]], to address: UnsafePointer<sockaddr>, length: socklen_t, what: String) throws {
    for payload in payloads {
        let sent = payload.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
        guard sent == payload.count else { throw LabError(command: [], message: "\(what): errno \(errno)") }
    }
}
