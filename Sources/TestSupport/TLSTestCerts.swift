// Test PKI made with openssl at test time: a CA, a server certificate for 127.0.0.1/localhost, a
// client certificate, and an unrelated second CA (for "wrong CA" tests). EC P-256 keys: fast to make.

import Glibc

public struct TLSTestCerts: Sendable {
    public let dir: String
    public var caCert: String { dir + "/ca.crt" }
    public var serverCert: String { dir + "/server.crt" }
    public var serverKey: String { dir + "/server.key" }
    public var clientCert: String { dir + "/client.crt" }
    public var clientKey: String { dir + "/client.key" }
    /// A CA that signed nothing here.
    public var otherCACert: String { dir + "/other-ca.crt" }

    /// Generates everything in a new temp directory. `remove()` deletes it. `serverIPs`: the
    /// addresses the server certificate is valid for (besides the name localhost).
    public static func generate(tag: String = "fx", serverIPs: [String] = ["127.0.0.1"]) async throws -> TLSTestCerts {
        var template = Array("/tmp/fxtls-\(tag)-\(getpid())-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw EtcdServerError("mkdtemp failed: errno \(errno)")
        }
        let certs = TLSTestCerts(dir: stringFromCChars(template))
        let d = certs.dir
        func openssl(_ args: [String]) async throws {
            let r = try await runCommandAsync(["/usr/bin/openssl"] + args)
            guard r.status == 0 else { throw EtcdServerError("openssl \(args.first ?? "") failed: \(r.stderr)") }
        }
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for ca in ["ca", "other-ca"] {
            try await openssl(["req", "-x509"] + ec + ["-keyout", "\(d)/\(ca).key", "-out", "\(d)/\(ca).crt", "-days", "2",
                                                  "-subj", "/CN=flanneld-xdp test \(ca)",
                                                  "-addext", "basicConstraints=critical,CA:TRUE",
                                                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        }
        let names = serverIPs.map { "IP:\($0)" } + ["DNS:localhost"]
        try writeFile("\(d)/server.ext", "subjectAltName=\(names.joined(separator: ","))\nextendedKeyUsage=serverAuth,clientAuth\n")
        try writeFile("\(d)/client.ext", "extendedKeyUsage=clientAuth\n")
        for leaf in ["server", "client"] {
            try await openssl(["req"] + ec + ["-keyout", "\(d)/\(leaf).key", "-out", "\(d)/\(leaf).csr", "-subj", "/CN=\(leaf == "server" ? "127.0.0.1" : "flannel-client")"])
            try await openssl(["x509", "-req", "-in", "\(d)/\(leaf).csr", "-CA", "\(d)/ca.crt", "-CAkey", "\(d)/ca.key",
                         "-CAcreateserial", "-out", "\(d)/\(leaf).crt", "-days", "2", "-extfile", "\(d)/\(leaf).ext"])
        }
        return certs
    }

    public func remove() {
        _ = try? runCommand(["/bin/rm", "-rf", dir])
    }
}
