// Random frames through all three programs: valid frames with random bytes flipped, cut or
// inserted. Whatever comes in, each run must end in a verdict the program documents, bump exactly
// one counter by one packet, and leave the frame unchanged unless it was accepted (XDP strip or
// encap). A seeded generator makes failures reproducible (the seed is in the message).
// `make fuzz` sets FXDP_FUZZ_LONG=1 for a long run.

import BPFDataplane
import Glibc
import NetTypes
import TestSupport
import Testing

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite(.enabled(if: Privileges.isRoot, Privileges.skipReason))
struct FuzzTests {
    static var iterations: Int { getenv("FXDP_FUZZ_LONG") != nil ? 100_000 : 1_500 }

    static func mutate(_ frame: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var f = frame
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<6: // flip a byte in the headers (where the decisions are)
                let i = Int.random(in: 0..<min(f.count, 90), using: &rng)
                f[i] = UInt8.random(in: 0...255, using: &rng)
            case 6, 7: // cut
                f = Array(f[0..<Int.random(in: 15...f.count, using: &rng)])
            case 8: // insert bytes into the headers
                let i = Int.random(in: 12..<min(f.count, 70), using: &rng)
                f.insert(contentsOf: (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, at: i)
            default: // set one bit
                let i = Int.random(in: 0..<min(f.count, 90), using: &rng)
                f[i] |= 1 << UInt8.random(in: 0...7, using: &rng)
            }
        }
        return f.count >= 15 ? f : frame
    }

    @Test func randomFramesNeverMisbehave() throws {
        let lab = try PacketLab()
        defer { lab.close() }
        let seed = UInt64.random(in: 0...UInt64.max)
        var rng = SplitMix64(state: seed)
        let decapSeeds = [lab.vxlanFromPeer(), lab.vxlanFromPeer(udpChecksum: true), lab.vxlanFromPeer(options: [1, 1, 1, 1])]
        let encapSeeds = [PacketLab.overlayFrame(PacketLab.podPacket()), PacketLab.overlayFrame(PacketLab.podPacket(dst: IPv4Address(10, 5, 3, 1)))]
        for n in 0..<FuzzTests.iterations {
            let decapIn = FuzzTests.mutate(decapSeeds[n % decapSeeds.count], &rng)
            // The test run refuses IPv4 skbs with fewer than 20 header bytes: not a program path.
            let tcRunnable = !(decapIn.count < 34 && decapIn[12] == 0x08 && decapIn[13] == 0x00)

            let x = try lab.run(.decapXDP, decapIn)
            guard x.moved.count == 1, let (code, count) = x.moved.first, count.packets == 1,
                  count.bytes == UInt64(decapIn.count) else {
                Issue.record("seed \(seed) #\(n) xdp: counters \(x.moved) for \(decapIn.hex)")
                return
            }
            let expectedVerdict = code == .decapOK ? "XDP_PASS" : code.isDrop ? "XDP_DROP" : "XDP_PASS"
            #expect(x.verdict == expectedVerdict, "seed \(seed) #\(n) xdp \(code): \(decapIn.hex)")
            #expect(code == .decapOK ? x.output == lab.stripped(decapIn) : x.output == decapIn, "seed \(seed) #\(n) xdp output")

            if tcRunnable {
                let t = try lab.run(.decapCheck, decapIn)
                let tcCode: FXDPCounter = code == .decapOK ? .decapCheckOK : code
                #expect(t.moved == [tcCode: FXDPCount(packets: 1, bytes: UInt64(decapIn.count))],
                        "seed \(seed) #\(n): the TC check classifies like XDP (\(code)): \(t.moved)")
                #expect(t.output == decapIn && t.verdict == (code.isDrop ? "TC_ACT_SHOT" : "TC_ACT_OK"), "seed \(seed) #\(n) tc")
            }

            let encapIn = FuzzTests.mutate(encapSeeds[n % encapSeeds.count], &rng)
            guard !(encapIn.count < 34 && encapIn[12] == 0x08 && encapIn[13] == 0x00) else { continue }
            let e = try lab.run(.encap, encapIn)
            guard e.moved.count == 1, let (ecode, ecount) = e.moved.first, ecount.packets == 1 else {
                Issue.record("seed \(seed) #\(n) encap: counters \(e.moved) for \(encapIn.hex)")
                return
            }
            switch ecode {
            case .encapOK, .encapOKNeigh:
                #expect(e.verdict == "TC_ACT_REDIRECT" && e.output.count == encapIn.count + 50, "seed \(seed) #\(n)")
                #expect(Array(e.output[64...]) == Array(encapIn[14...]), "seed \(seed) #\(n): inner packet carried unchanged")
                #expect(ParsedFrame(e.output)?.ipv4?.headerChecksumValid == true, "seed \(seed) #\(n)")
            case .encapDropMalformed, .encapDropAdjust:
                #expect(e.verdict == "TC_ACT_SHOT" && e.output == encapIn, "seed \(seed) #\(n)")
            default:
                #expect(e.verdict == "TC_ACT_OK" && e.output == encapIn, "seed \(seed) #\(n) \(ecode)")
            }
        }
    }
}
