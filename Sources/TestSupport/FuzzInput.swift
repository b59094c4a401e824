// FuzzInput — seeded randomness and mutators shared by the fuzz tests (packets, etcd data, flags).
//
// Design: a SplitMix64 generator seeded per run, the seed printed in every failure message, so any
// failing input can be regenerated; mutators that keep inputs close to valid ones (where the
// interesting decisions are) next to plain random bytes. `FuzzBudget` reads FXDP_FUZZ_LONG, which
// `make fuzz` sets, to pick the short (`make test`) or the long iteration count.

import Glibc

public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

public enum FuzzBudget {
    /// True under `make fuzz`.
    public static var isLong: Bool { getenv("FXDP_FUZZ_LONG") != nil }
    /// `short` in `make test`, `long` under `make fuzz`.
    public static func iterations(short: Int, long: Int) -> Int { isLong ? long : short }
    /// A seed from FXDP_FUZZ_SEED (to replay a failure) or a random one.
    public static func seed() -> UInt64 {
        if let text = getenv("FXDP_FUZZ_SEED").map({ String(cString: $0) }), let value = UInt64(text) { return value }
        return UInt64.random(in: 0...UInt64.max)
    }
}

public enum Mutate {
    public static func randomBytes(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// 1–4 edits of `input`: byte flips and bit sets (mostly within `hot` bytes, where the headers
    /// are), cuts, inserted and deleted runs, duplicated slices. Never shorter than `minimum`.
    public static func bytes(_ input: [UInt8], hot: Int = 90, minimum: Int = 0, _ rng: inout SplitMix64) -> [UInt8] {
        var f = input
        for _ in 0..<Int.random(in: 1...4, using: &rng) {
            if f.isEmpty { f = randomBytes(Int.random(in: 1...8, using: &rng), &rng); continue }
            let window = max(1, min(f.count, hot))
            switch Int.random(in: 0..<12, using: &rng) {
            case 0..<5:
                f[Int.random(in: 0..<window, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            case 5:
                f[Int.random(in: 0..<window, using: &rng)] ^= 1 << UInt8.random(in: 0...7, using: &rng)
            case 6, 7:
                f = Array(f[0..<Int.random(in: 0...f.count, using: &rng)])
            case 8:
                let at = Int.random(in: 0...window, using: &rng)
                f.insert(contentsOf: randomBytes(Int.random(in: 1...8, using: &rng), &rng), at: min(at, f.count))
            case 9:
                let at = Int.random(in: 0..<f.count, using: &rng)
                f.removeSubrange(at..<min(f.count, at + Int.random(in: 1...8, using: &rng)))
            case 10:
                let at = Int.random(in: 0..<f.count, using: &rng)
                let slice = f[at..<min(f.count, at + Int.random(in: 1...16, using: &rng))]
                f.insert(contentsOf: slice, at: Int.random(in: 0...f.count, using: &rng))
            default:
                // Interesting values where parsers compare: 0, 0xff, 0x7f, 0x80.
                f[Int.random(in: 0..<window, using: &rng)] = [0, 0xff, 0x7f, 0x80].randomElement(using: &rng)!
            }
        }
        if f.count < minimum { f += randomBytes(minimum - f.count, &rng) }
        return f
    }

    /// Text mutations for JSON, keys and env files: the byte mutators plus token-level edits
    /// (numbers replaced by huge/negative/float ones, quotes and brackets dropped or doubled,
    /// strings swapped for other types). May produce invalid UTF-8 on purpose.
    public static func text(_ input: String, _ rng: inout SplitMix64) -> [UInt8] {
        var b = Array(input.utf8)
        let tokens: [String] = [
            "\"", "{", "}", "[", "]", ",", ":", "null", "true", "false", "-1", "0", "1e400", "99999999999999999999",
            "4294967296", "256", "-0", "0x10", "\"\"", "\"10.0.0.0/8\"", "\"300.1.2.3\"", "\"10.5.0.0/33\"", "\\u0000",
            "\\", "\n", "=", "/", "-", ".", "\u{00e9}", "\u{10FFFF}", "{}", "[]", "\"a\":", "\"Network\":",
        ]
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            if Int.random(in: 0..<3, using: &rng) == 0 || b.isEmpty {
                let token = Array(tokens.randomElement(using: &rng)!.utf8)
                let at = Int.random(in: 0...b.count, using: &rng)
                if Bool.random(using: &rng), at < b.count {
                    b.replaceSubrange(at..<min(b.count, at + Int.random(in: 1...6, using: &rng)), with: token)
                } else {
                    b.insert(contentsOf: token, at: at)
                }
            } else {
                b = bytes(b, hot: b.count, &rng)
            }
        }
        return b
    }
}
