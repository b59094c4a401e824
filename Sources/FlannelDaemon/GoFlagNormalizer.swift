// Go's `flag` package (what flanneld uses) accepts `-name=value`, `-name value`, `--name=value` and
// `--name value`, takes booleans as `-name` or `-name=false` (never `-name false`), and flanneld
// fills every unset flag from `FLANNELD_<NAME>`. argument-parser knows only `--name value` and
// `--name=value` and has no environment source, so this rewrites the argument list once, before
// parsing: values are glued as `--name=value` (a value that starts with '-' stays a value, as in
// Go), booleans are resolved to present/absent (or to `=true`/`=false` for those whose default is
// true), Go's integer spellings (0x1f, 0o17, 1_000) become decimal, and env values are appended for
// flags the command line did not give. Flags it does not know are passed through so that
// argument-parser reports them.
//
// A FLANNELD_<NAME> value that Go's flag package cannot even parse (not a number for an integer
// flag, not a boolean for a boolean one, klog syntax for its flags) is logged and ignored by
// flanneld, which then runs with the flag's default: so here. Such a value comes back as a note for
// the daemon to log. Any other bad value (a range, an address) stops the daemon with an error that
// names the variable, as flanneld's own later checks stop it.

import ArgumentParser

/// How a flag takes its value: Go's type for it, which decides what its parser accepts.
public enum GoFlagKind: Sendable, Equatable {
    /// A Go string: any text parses (meaning is checked later, by the option's own validation).
    case value
    /// A Go int (strconv.ParseInt with base 0): passed on in decimal.
    case integer
    /// klog's -v: a decimal 32-bit integer.
    case klogLevel
    /// klog's -vmodule: pattern=N,...
    case klogModules
    /// klog's -log_backtrace_at: file.go:N.
    case klogTraceLocation
    /// A Go bool whose default is false: given as `--name` (true) or left out.
    case boolean
    /// A Go bool whose default is true: always passed on as `--name=true` or `--name=false`.
    case booleanDefaultTrue

    var takesValue: Bool { self != .boolean && self != .booleanDefaultTrue }

    /// The text to hand to argument-parser, or why Go's flag package would refuse it.
    func parse(_ text: String) -> Result<String, GoValueError> {
        switch self {
        case .value:
            return .success(text)
        case .integer:
            guard let n = GoFlagNormalizer.parseGoInt(text) else { return .failure(GoValueError("not an integer")) }
            return .success(String(n))
        case .klogLevel:
            return KlogSyntax.levelProblem(text).map { .failure(GoValueError($0)) } ?? .success(text)
        case .klogModules:
            return KlogSyntax.moduleProblem(text).map { .failure(GoValueError($0)) } ?? .success(text)
        case .klogTraceLocation:
            return KlogSyntax.traceLocationProblem(text).map { .failure(GoValueError($0)) } ?? .success(text)
        case .boolean, .booleanDefaultTrue:
            guard let b = GoFlagNormalizer.parseGoBool(text) else { return .failure(GoValueError("not a boolean (true or false)")) }
            return .success(b ? "true" : "false")
        }
    }
}

public struct GoValueError: Error, Sendable, Equatable {
    public var reason: String
    init(_ reason: String) { self.reason = reason }
}

/// What the normaliser made of the arguments and the environment.
public struct NormalizedArguments: Sendable, Equatable {
    /// For argument-parser.
    public var arguments: [String]
    /// FLANNELD_* values that were ignored, each with why; the daemon logs them once logging is up.
    public var ignoredEnvironment: [String]
}

/// A flag the normaliser knows by its long name (without dashes).
public struct GoFlagSpec: Sendable, Equatable {
    public var name: String
    public var kind: GoFlagKind
    /// Read from `FLANNELD_<NAME>` when absent from the command line (not for --help/--version).
    public var fromEnvironment: Bool

    public init(_ name: String, _ kind: GoFlagKind = .value, fromEnvironment: Bool = true) {
        self.name = name
        self.kind = kind
        self.fromEnvironment = fromEnvironment
    }

    /// `FLANNELD_` + upper-cased name with dashes as underscores: iface-regex → FLANNELD_IFACE_REGEX.
    public var environmentName: String {
        "FLANNELD_" + name.uppercased().replacingDashes()
    }
}

public struct GoFlagNormalizer: Sendable {
    /// Flags of the command run when no subcommand is named.
    public var rootFlags: [GoFlagSpec]
    /// Subcommand name → its flags.
    public var subcommandFlags: [String: [GoFlagSpec]]

    public init(rootFlags: [GoFlagSpec], subcommandFlags: [String: [GoFlagSpec]]) {
        self.rootFlags = rootFlags
        self.subcommandFlags = subcommandFlags
    }

    /// Rewrites `arguments` (without the program name) for argument-parser, merging `environment`.
    /// Throws `ValidationError` naming the flag and value for a missing value or a bad boolean.
    public func normalize(_ arguments: [String], environment: [String: String]) throws -> [String] {
        try normalizeWithNotes(arguments, environment: environment).arguments
    }

    /// `normalize`, plus the FLANNELD_* values that were ignored because Go could not parse them.
    public func normalizeWithNotes(_ arguments: [String], environment: [String: String]) throws -> NormalizedArguments {
        // Find the subcommand: the first positional token that is not a flag's value.
        var subcommand: String?
        var subcommandIndex: Int?
        var index = 0
        while index < arguments.count {
            let token = arguments[index]
            if token == "--" { break }
            if let (name, inlineValue) = Self.splitFlag(token) {
                if inlineValue == nil, let spec = spec(named: name, in: rootFlags), spec.kind.takesValue {
                    index += 1 // the next token is this flag's value, not a subcommand
                }
            } else {
                if subcommandFlags[token] != nil {
                    subcommand = token
                    subcommandIndex = index
                }
                break
            }
            index += 1
        }

        let specs = subcommand.flatMap { subcommandFlags[$0] } ?? rootFlags
        var remaining = arguments
        if let i = subcommandIndex { remaining.remove(at: i) }

        var output: [String] = []
        var booleans: [String: Bool] = [:]
        var booleanOrder: [String] = []
        var given: Set<String> = []
        index = 0
        while index < remaining.count {
            let token = remaining[index]
            if token == "--" {
                output.append(contentsOf: remaining[index...])
                break
            }
            guard let (name, inlineValue) = Self.splitFlag(token) else {
                output.append(token)
                index += 1
                continue
            }
            guard let spec = spec(named: name, in: specs) else {
                // Unknown to us: hand it on in double-dash form so argument-parser names it in its error.
                output.append(token.hasPrefix("--") || token.count == 2 ? token : "-" + token)
                index += 1
                continue
            }
            given.insert(spec.name)
            if !spec.kind.takesValue {
                let value: Bool
                if let text = inlineValue {
                    guard let parsed = Self.parseGoBool(text) else {
                        throw ValidationError("invalid boolean value \"\(text)\" for --\(spec.name): use true or false (e.g. --\(spec.name)=true)")
                    }
                    value = parsed
                } else {
                    value = true
                }
                if booleans[spec.name] == nil { booleanOrder.append(spec.name) }
                booleans[spec.name] = value
                index += 1
                continue
            }
            let text: String
            if let inlineValue {
                text = inlineValue
                index += 1
            } else {
                guard index + 1 < remaining.count else {
                    throw ValidationError("flag needs an argument: --\(spec.name) (e.g. --\(spec.name)=VALUE)")
                }
                text = remaining[index + 1]
                index += 2
            }
            // A value Go cannot parse goes on as it is: argument-parser or the option's validation
            // names the flag and the value in its error.
            let parsed = (try? spec.kind.parse(text).get()) ?? text
            output.append("--\(spec.name)=\(parsed)")
        }

        // The environment fills only what the command line left unset: a flag beats its variable.
        var ignored: [String] = []
        for spec in specs where spec.fromEnvironment && !given.contains(spec.name) {
            guard let text = environment[spec.environmentName], !text.isEmpty else { continue }
            let parsed: String
            switch spec.kind.parse(text) {
            case .success(let value):
                parsed = value
            case .failure(let error):
                ignored.append("\(spec.environmentName)=\"\(text)\" is ignored (\(error.reason) for --\(spec.name)); "
                    + "--\(spec.name) keeps its default, as flanneld does with a value it cannot parse")
                continue
            }
            if spec.kind.takesValue {
                output.append("--\(spec.name)=\(parsed)")
            } else {
                if booleans[spec.name] == nil { booleanOrder.append(spec.name) }
                booleans[spec.name] = parsed == "true"
            }
        }
        for name in booleanOrder {
            guard let value = booleans[name], let spec = spec(named: name, in: specs) else { continue }
            if spec.kind == .booleanDefaultTrue {
                output.append("--\(name)=\(value)")
            } else if value {
                output.append("--\(name)")
            }
        }
        if let subcommand { output.insert(subcommand, at: 0) }
        return NormalizedArguments(arguments: output, ignoredEnvironment: ignored)
    }

    private func spec(named name: String, in specs: [GoFlagSpec]) -> GoFlagSpec? {
        specs.first { $0.name == name }
    }

    /// "-iface=eth0" / "--iface" → ("iface", "eth0") / ("iface", nil); nil for a non-flag token.
    /// A lone "-" is a positional argument, as in Go.
    static func splitFlag(_ token: String) -> (String, String?)? {
        guard token.hasPrefix("-"), token != "-", token != "--" else { return nil }
        var body = Substring(token).dropFirst()
        if body.hasPrefix("-") { body = body.dropFirst() }
        guard !body.isEmpty, !body.hasPrefix("-"), !body.hasPrefix("=") else { return nil }
        if let eq = body.firstIndex(of: "=") {
            return (String(body[..<eq]), String(body[body.index(after: eq)...]))
        }
        return (String(body), nil)
    }

    /// Go's strconv.ParseInt(text, 0, 64), which flag.IntVar uses: an optional sign, then decimal,
    /// 0x/0X hex, 0o/0O or a leading 0 octal, 0b/0B binary; '_' only between digits.
    public static func parseGoInt(_ text: String) -> Int? {
        var body = Substring(text)
        var negative = false
        if let first = body.first, first == "+" || first == "-" {
            negative = first == "-"
            body = body.dropFirst()
        }
        var radix = 10
        let lower = body.lowercased()
        if lower.hasPrefix("0x") { radix = 16; body = body.dropFirst(2) }
        else if lower.hasPrefix("0o") { radix = 8; body = body.dropFirst(2) }
        else if lower.hasPrefix("0b") { radix = 2; body = body.dropFirst(2) }
        else if body.count > 1 && body.hasPrefix("0") { radix = 8; body = body.dropFirst() }
        guard !body.isEmpty, body.first != "_", body.last != "_", !body.contains("__") else { return nil }
        let digits = body.filter { $0 != "_" }
        guard !digits.isEmpty, let magnitude = UInt64(digits, radix: radix) else { return nil }
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { return nil }
            return magnitude == UInt64(Int64.max) + 1 ? Int.min : -Int(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else { return nil }
        return Int(magnitude)
    }

    /// Go's strconv.ParseBool.
    public static func parseGoBool(_ text: String) -> Bool? {
        switch text {
        case "1", "t", "T", "TRUE", "true", "True": true
        case "0", "f", "F", "FALSE", "false", "False": false
        default: nil
        }
    }
}

extension String {
    func replacingDashes() -> String {
        String(map { $0 == "-" ? "_" : $0 })
    }
}
