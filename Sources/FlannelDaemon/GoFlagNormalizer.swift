// Go's `flag` package (what flanneld uses) accepts `-name=value`, `-name value`, `--name=value` and
// `--name value`, takes booleans as `-name` or `-name=false` (never `-name false`), and flanneld
// fills every unset flag from `FLANNELD_<NAME>`. argument-parser knows only `--name value` and
// `--name=value` and has no environment source, so this rewrites the argument list once, before
// parsing: values are glued as `--name=value` (a value that starts with '-' stays a value, as in
// Go), booleans are resolved to present/absent, and env values are appended for flags the command
// line did not give. Flags it does not know are passed through so that argument-parser reports them.

import ArgumentParser

/// How a flag takes its value.
public enum GoFlagKind: Sendable, Equatable {
    case value
    case boolean
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
        // Find the subcommand: the first positional token that is not a flag's value.
        var subcommand: String?
        var subcommandIndex: Int?
        var index = 0
        while index < arguments.count {
            let token = arguments[index]
            if token == "--" { break }
            if let (name, inlineValue) = Self.splitFlag(token) {
                if inlineValue == nil, let spec = spec(named: name, in: rootFlags), spec.kind == .value {
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
            switch spec.kind {
            case .boolean:
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
            case .value:
                if let text = inlineValue {
                    output.append("--\(spec.name)=\(text)")
                    index += 1
                } else {
                    guard index + 1 < remaining.count else {
                        throw ValidationError("flag needs an argument: --\(spec.name) (e.g. --\(spec.name)=VALUE)")
                    }
                    output.append("--\(spec.name)=\(remaining[index + 1])")
                    index += 2
                }
            }
        }

        // The environment fills only what the command line left unset: a flag beats its variable.
        for spec in specs where spec.fromEnvironment && !given.contains(spec.name) {
            guard let text = environment[spec.environmentName], !text.isEmpty else { continue }
            switch spec.kind {
            case .value:
                output.append("--\(spec.name)=\(text)")
            case .boolean:
                guard let parsed = Self.parseGoBool(text) else {
                    throw ValidationError("invalid boolean value \"\(text)\" in \(spec.environmentName) (for --\(spec.name)): use true or false")
                }
                booleanOrder.append(spec.name)
                booleans[spec.name] = parsed
            }
        }
        for name in booleanOrder where booleans[name] == true {
            output.append("--\(name)")
        }
        if let subcommand { output.insert(subcommand, at: 0) }
        return output
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
