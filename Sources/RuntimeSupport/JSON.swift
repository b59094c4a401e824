// JSON — the project's one JSON reader/writer: etcd payloads, flannel's documents, the state file,
// and the inspection verbs' and logs' output.
//
// Why not JSONDecoder (FoundationEssentials has one without ICU): everything read here is untrusted
// (lease values written by any node, responses from any endpoint), flannel's Go decoder matches keys
// case-insensitively, which Codable cannot express, and flannel's documents must be written
// byte-for-byte in its field order. A value tree with raw number text lets the callers check
// integer-ness and range exactly and report which field had the wrong type, with no Foundation
// module at all in the daemon's link. Limits: nesting depth 64; callers cap the input size before
// parsing a whole document, and `JSONReader` reads a document that arrives in pieces (etcd's
// listings) token by token with its own cap per token and per value.

/// A parsed JSON value. Numbers keep their source text so integers of any size are checked exactly.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([JSONValue])
    /// Members in document order; duplicates are kept (lookups take the last, as Go does).
    case object([JSONMember])

    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    public var objectMembers: [JSONMember]? { if case .object(let m) = self { m } else { nil } }
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { a } else { nil } }
    public var isNull: Bool { self == .null }

    /// An integer number (no fraction, no exponent) that fits Int64.
    public var int64Value: Int64? {
        guard case .number(let text) = self else { return nil }
        return Int64(text)
    }

    /// Exact-name member lookup (etcd's responses), last duplicate wins.
    public subscript(key: String) -> JSONValue? {
        objectMembers?.last(where: { $0.key == key })?.value
    }

    /// Go's encoding/json rule: an exact name match wins, else a case-insensitive one; with several
    /// matches the last in the document wins.
    public func member(caseInsensitive key: String) -> JSONValue? {
        guard let members = objectMembers else { return nil }
        if let exact = members.last(where: { $0.key == key }) { return exact.value }
        let folded = key.lowercased()
        return members.last(where: { $0.key.lowercased() == folded })?.value
    }
}

public struct JSONMember: Equatable, Sendable {
    public var key: String
    public var value: JSONValue
    public init(_ key: String, _ value: JSONValue) {
        self.key = key
        self.value = value
    }
}

public struct JSONParseError: Error, Equatable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

extension JSONValue {
    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue {
        try parse(bytes: Array(text.utf8))
    }

    /// One complete document: `JSONReader` over the whole text.
    public static func parse(bytes: some Collection<UInt8>) throws(JSONParseError) -> JSONValue {
        var reader = JSONReader(Array(bytes), complete: true)
        guard let value = try reader.nextValue() else { throw reader.fail("unexpected end of input") }
        guard try reader.next() == nil else { throw reader.fail("trailing data after the value") }
        return value
    }
}

// MARK: - Reading

/// A pull reader over JSON text read front to back: tokens one at a time (`next`), or a whole value
/// (`nextValue`). The text may arrive in pieces (`append`, then `finish` after the last): where a
/// token is cut off, `next` and `nextValue` answer nil until more text comes, and what was read is
/// dropped as the reader moves on. So the memory a reader holds is the largest single token or value
/// read whole, never the document: etcd's listing of every lease goes through it lease by lease.
/// `maxValueBytes` bounds that (a longer string, number or whole value is an error). Every byte is
/// checked as the whole-document parser always did: structure, escapes, numbers, nesting depth 64.
public struct JSONReader {
    public enum Token: Equatable, Sendable {
        case objectStart, objectEnd, arrayStart, arrayEnd
        /// A member's name; its value is the next token.
        case name(String)
        /// A string, number, boolean or null.
        case scalar(JSONValue)
    }

    static let maxDepth = 64

    private enum Container { case object, array }
    /// What the grammar allows next.
    private enum Expect { case value, valueOrArrayEnd, nameOrObjectEnd, name, colon, commaOrEnd, done }

    private var bytes: [UInt8]
    private var pos = 0
    /// Bytes already dropped from the front of `bytes` (error offsets count from the document's start).
    private var dropped = 0
    private var complete: Bool
    private var open: [Container] = []
    private var expect = Expect.value
    private var lookahead: Token?
    /// The containers of a value `nextValue` is building across calls, innermost last.
    private var building: [Frame] = []
    private var valueStart = 0
    public let maxValueBytes: Int

    private struct Frame {
        var isObject: Bool
        var members: [JSONMember] = []
        var items: [JSONValue] = []
        var name = ""
    }

    /// `complete`: `text` is the whole document (no `append` follows).
    public init(_ text: [UInt8] = [], complete: Bool = false, maxValueBytes: Int = .max) {
        bytes = text
        self.complete = complete
        self.maxValueBytes = maxValueBytes
    }

    /// More of the text.
    public mutating func append(_ more: some Collection<UInt8>) {
        precondition(!complete, "JSONReader.append after finish")
        if pos > 0 && pos * 2 >= bytes.count {
            bytes.removeSubrange(0..<pos)
            dropped += pos
            pos = 0
        }
        bytes.append(contentsOf: more)
    }

    /// The text has ended: a cut-off token is an error from now on.
    public mutating func finish() { complete = true }

    /// The document's one value has been read (only white space may follow).
    public var isAtEnd: Bool { lookahead == nil && expect == .done }

    /// The byte offset the reader has reached, from the start of the document.
    public var offset: Int { dropped + pos }

    public func fail(_ reason: String) -> JSONParseError { JSONParseError(offset: offset, reason: reason) }

    /// The next token without consuming it; nil as for `next`.
    public mutating func peek() throws(JSONParseError) -> Token? {
        if lookahead == nil { lookahead = try scan() }
        return lookahead
    }

    /// The next token; nil when the text read so far ends inside one (append more) or, once
    /// finished, after the document's value.
    public mutating func next() throws(JSONParseError) -> Token? {
        if let token = lookahead {
            lookahead = nil
            return token
        }
        return try scan()
    }

    /// The next whole value (a scalar, or a container with everything inside it); nil when the text
    /// read so far ends inside it: call again after `append`, it goes on where it stopped. The next
    /// token must start a value (not end a container).
    public mutating func nextValue() throws(JSONParseError) -> JSONValue? {
        if building.isEmpty { valueStart = offset }
        while let token = try next() {
            var finished: JSONValue?
            switch token {
            case .objectStart: building.append(Frame(isObject: true))
            case .arrayStart: building.append(Frame(isObject: false))
            case .name(let name):
                guard !building.isEmpty else { throw fail("expected a value") }
                building[building.count - 1].name = name
            case .scalar(let value): finished = attach(value)
            case .objectEnd, .arrayEnd:
                guard let done = building.popLast() else { throw fail("expected a value") }
                finished = attach(done.isObject ? .object(done.members) : .array(done.items))
            }
            if let finished { return finished }
            guard offset - valueStart <= maxValueBytes else { throw fail("value longer than \(maxValueBytes) bytes") }
        }
        guard offset - valueStart <= maxValueBytes else { throw fail("value longer than \(maxValueBytes) bytes") }
        return nil
    }

    /// Adds `value` to the container being built; returns it when it is the whole value.
    private mutating func attach(_ value: JSONValue) -> JSONValue? {
        guard !building.isEmpty else { return value }
        let last = building.count - 1
        if building[last].isObject {
            building[last].members.append(JSONMember(building[last].name, value))
        } else {
            building[last].items.append(value)
        }
        return nil
    }

    // MARK: tokens

    private mutating func skipSpace() {
        while pos < bytes.count, bytes[pos] == 0x20 || bytes[pos] == 0x0a || bytes[pos] == 0x0d || bytes[pos] == 0x09 {
            pos += 1
        }
    }

    private var afterValue: Expect { open.isEmpty ? .done : .commaOrEnd }

    private mutating func scan() throws(JSONParseError) -> Token? {
        while true {
            skipSpace()
            guard pos < bytes.count else {
                guard complete else { return nil }
                switch expect {
                case .done: return nil
                case .value where open.isEmpty: throw fail("unexpected end of input")
                default: throw fail(open.last == .object ? "unterminated object" : "unterminated array")
                }
            }
            let c = bytes[pos]
            switch expect {
            case .done:
                throw fail("trailing data after the value")
            case .colon:
                guard c == UInt8(ascii: ":") else { throw fail("expected ':'") }
                pos += 1
                expect = .value
            case .commaOrEnd:
                let isObject = open.last == .object
                if c == UInt8(ascii: ",") {
                    pos += 1
                    expect = isObject ? .name : .value
                } else if c == UInt8(ascii: isObject ? "}" : "]") {
                    pos += 1
                    open.removeLast()
                    expect = afterValue
                    return isObject ? .objectEnd : .arrayEnd
                } else {
                    throw fail(isObject ? "expected ',' or '}'" : "expected ',' or ']'")
                }
            case .nameOrObjectEnd, .name:
                if expect == .nameOrObjectEnd, c == UInt8(ascii: "}") {
                    pos += 1
                    open.removeLast()
                    expect = afterValue
                    return .objectEnd
                }
                guard c == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                guard let name = try string() else { return nil }
                expect = .colon
                return .name(name)
            case .valueOrArrayEnd where c == UInt8(ascii: "]"):
                pos += 1
                open.removeLast()
                expect = afterValue
                return .arrayEnd
            case .value, .valueOrArrayEnd:
                return try valueStart(c)
            }
        }
    }

    private mutating func valueStart(_ c: UInt8) throws(JSONParseError) -> Token? {
        guard open.count < JSONReader.maxDepth else { throw fail("nesting deeper than \(JSONReader.maxDepth)") }
        switch c {
        case UInt8(ascii: "{"):
            pos += 1
            open.append(.object)
            expect = .nameOrObjectEnd
            return .objectStart
        case UInt8(ascii: "["):
            pos += 1
            open.append(.array)
            expect = .valueOrArrayEnd
            return .arrayStart
        case UInt8(ascii: "\""):
            guard let s = try string() else { return nil }
            expect = afterValue
            return .scalar(.string(s))
        case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            guard let value = try literal(c) else { return nil }
            expect = afterValue
            return .scalar(value)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            guard let value = try number() else { return nil }
            expect = afterValue
            return .scalar(value)
        default:
            throw fail("unexpected character")
        }
    }

    /// A token that runs to the end of the text read so far: nil (wait for more) unless the text
    /// is complete, or the token is already too long.
    private func cutOff(from start: Int) throws(JSONParseError) -> Bool {
        guard bytes.count - start <= maxValueBytes else {
            throw JSONParseError(offset: dropped + start, reason: "token longer than \(maxValueBytes) bytes")
        }
        return !complete
    }

    private mutating func literal(_ first: UInt8) throws(JSONParseError) -> JSONValue? {
        let (text, value): (StaticString, JSONValue) = switch first {
        case UInt8(ascii: "t"): ("true", .bool(true))
        case UInt8(ascii: "f"): ("false", .bool(false))
        default: ("null", .null)
        }
        let n = text.utf8CodeUnitCount
        let literal = UnsafeBufferPointer(start: text.utf8Start, count: n)
        let available = min(n, bytes.count - pos)
        for i in 0..<available where bytes[pos + i] != literal[i] { throw fail("unknown literal") }
        guard available == n else {
            if complete { throw fail("truncated literal") }
            return nil
        }
        pos += n
        return value
    }

    private mutating func number() throws(JSONParseError) -> JSONValue? {
        let start = pos
        var p = pos
        func digits(_ p: inout Int, _ b: [UInt8]) -> Int {
            let s = p
            while p < b.count, b[p] >= UInt8(ascii: "0"), b[p] <= UInt8(ascii: "9") { p += 1 }
            return p - s
        }
        // Where the text read so far ends, the number may go on: wait unless it is complete.
        func end(_ p: Int) throws(JSONParseError) -> Bool { p == bytes.count ? !(try cutOff(from: start)) : true }
        if bytes[p] == UInt8(ascii: "-") { p += 1 }
        guard p < bytes.count else {
            if try cutOff(from: start) { return nil }
            pos = p
            throw fail("truncated number")
        }
        if bytes[p] == UInt8(ascii: "0") {
            p += 1
        } else if digits(&p, bytes) == 0 {
            pos = p
            throw fail("expected digits")
        }
        guard try end(p) else { return nil }
        if p < bytes.count, bytes[p] == UInt8(ascii: ".") {
            p += 1
            let n = digits(&p, bytes)
            guard try end(p) else { return nil }
            guard n > 0 else { pos = p; throw fail("expected fraction digits") }
        }
        if p < bytes.count, bytes[p] == UInt8(ascii: "e") || bytes[p] == UInt8(ascii: "E") {
            p += 1
            guard try end(p) else { return nil }
            if p < bytes.count, bytes[p] == UInt8(ascii: "+") || bytes[p] == UInt8(ascii: "-") { p += 1 }
            let n = digits(&p, bytes)
            guard try end(p) else { return nil }
            guard n > 0 else { pos = p; throw fail("expected exponent digits") }
        }
        guard p - start <= maxValueBytes else { throw fail("token longer than \(maxValueBytes) bytes") }
        pos = p
        return .number(String(decoding: bytes[start..<p], as: UTF8.self))
    }

    /// The string starting at `pos` (its opening quote), once its closing quote has arrived.
    private mutating func string() throws(JSONParseError) -> String? {
        // Find the end first, so a string cut off by the end of a piece is decoded once, when whole.
        var p = pos + 1
        while p < bytes.count, bytes[p] != UInt8(ascii: "\"") {
            p += bytes[p] == UInt8(ascii: "\\") ? 2 : 1
        }
        if p >= bytes.count, try cutOff(from: pos) { return nil }
        guard p - pos <= maxValueBytes else { throw fail("token longer than \(maxValueBytes) bytes") }
        pos += 1
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail("unterminated string") }
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") { pos += 1; break }
            if c < 0x20 { throw fail("control character in string") }
            if c != UInt8(ascii: "\\") { out.append(c); pos += 1; continue }
            pos += 1
            guard pos < bytes.count else { throw fail("truncated escape") }
            let e = bytes[pos]
            pos += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5c)
            case UInt8(ascii: "/"): out.append(0x2f)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0c)
            case UInt8(ascii: "n"): out.append(0x0a)
            case UInt8(ascii: "r"): out.append(0x0d)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar), pos + 6 <= bytes.count,
                   bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u") {
                    pos += 2
                    let low = try hex4()
                    if (0xDC00...0xDFFF).contains(low) {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        scalar = 0xFFFD
                    }
                }
                let u = Unicode.Scalar(scalar) ?? "\u{FFFD}"
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("unknown escape")
            }
        }
        // Invalid UTF-8 is repaired (U+FFFD), as Go does.
        return String(decoding: out, as: UTF8.self)
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard pos + 4 <= bytes.count else { throw fail("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("bad \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }
}

/// `JSONReader` over text that arrives in pieces from an asynchronous source (an HTTP body): each
/// call waits for as many pieces as the token or value it returns needs. Used by one task at a time.
public final class JSONStreamReader {
    private var reader: JSONReader
    private let nextPiece: () async throws -> [UInt8]?

    /// `nextPiece` returns the next piece of the text, nil after the last.
    public init(maxValueBytes: Int, nextPiece: @escaping () async throws -> [UInt8]?) {
        reader = JSONReader(maxValueBytes: maxValueBytes)
        self.nextPiece = nextPiece
    }

    public func fail(_ reason: String) -> JSONParseError { reader.fail(reason) }

    /// Feeds the next piece; false when there is none (the text is complete now).
    private func more() async throws -> Bool {
        guard let piece = try await nextPiece() else {
            reader.finish()
            return false
        }
        reader.append(piece)
        return true
    }

    public func peek() async throws -> JSONReader.Token {
        while true {
            if let token = try reader.peek() { return token }
            if reader.isAtEnd { throw reader.fail("the document ended") }
            _ = try await more()
        }
    }

    public func next() async throws -> JSONReader.Token {
        let token = try await peek()
        _ = try reader.next()
        return token
    }

    /// The next whole value.
    public func value() async throws -> JSONValue {
        while true {
            if let value = try reader.nextValue() { return value }
            if reader.isAtEnd { throw reader.fail("the document ended") }
            _ = try await more()
        }
    }

    /// Reads past the next value without keeping it (only its largest token is ever held).
    public func skipValue() async throws {
        var depth = 0
        repeat {
            switch try await next() {
            case .objectStart, .arrayStart: depth += 1
            case .objectEnd, .arrayEnd: depth -= 1
            case .name, .scalar: break
            }
        } while depth > 0
    }

    /// Expects an object; then `nextName` walks its members.
    public func enterObject() async throws {
        guard try await next() == .objectStart else { throw reader.fail("expected an object") }
    }

    /// The next member's name (read its value next), or nil at the end of the object.
    public func nextName() async throws -> String? {
        switch try await next() {
        case .name(let name): return name
        case .objectEnd: return nil
        default: throw reader.fail("expected a member name")
        }
    }

    /// Expects an array; then `hasElement` walks its elements.
    public func enterArray() async throws {
        guard try await next() == .arrayStart else { throw reader.fail("expected an array") }
    }

    /// Whether another element follows (read it next); false at the end of the array (consumed).
    public func hasElement() async throws -> Bool {
        guard try await peek() == .arrayEnd else { return true }
        _ = try await next()
        return false
    }

    /// Expects the end of the text (white space at most) after the document's value.
    public func end() async throws {
        guard reader.isAtEnd else { throw reader.fail("expected the end of the document") }
        repeat { _ = try reader.next() } while try await more()
    }
}

// MARK: - Writing

extension JSONValue {
    /// Compact JSON in member order, escaped as Go's encoding/json escapes (flannel's documents).
    public var serialized: String {
        var out = ""
        write(into: &out, goEscaping: true)
        return out
    }

    /// Compact JSON in member order with only the escapes JSON requires (our own output).
    public var text: String {
        var out = ""
        write(into: &out, goEscaping: false)
        return out
    }

    /// An object from key–value pairs, in their order.
    public static func members(_ pairs: [(String, JSONValue)]) -> JSONValue {
        .object(pairs.map { JSONMember($0.0, $0.1) })
    }

    public func write(into out: inout String, goEscaping: Bool = true) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n
        case .string(let s): JSONValue.writeString(s, into: &out, goEscaping: goEscaping)
        case .array(let items):
            out += "["
            for (i, v) in items.enumerated() {
                if i > 0 { out += "," }
                v.write(into: &out, goEscaping: goEscaping)
            }
            out += "]"
        case .object(let members):
            out += "{"
            for (i, m) in members.enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(m.key, into: &out, goEscaping: goEscaping)
                out += ":"
                m.value.write(into: &out, goEscaping: goEscaping)
            }
            out += "}"
        }
    }

    /// Escapes quotes, backslash and control characters; with `goEscaping` also <, >, &, U+2028 and
    /// U+2029 as \uXXXX, as Go's encoder does.
    public static func writeString(_ s: String, into out: inout String, goEscaping: Bool = true) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<", ">", "&", "\u{2028}", "\u{2029}" where goEscaping:
                out += "\\u" + hex4(u.value)
            default:
                if u.value < 0x20 { out += "\\u" + hex4(u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        out += "\""
    }

    private static func hex4(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    public static func int(_ v: some BinaryInteger) -> JSONValue { .number(String(v)) }
}
