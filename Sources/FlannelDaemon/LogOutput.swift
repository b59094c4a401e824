// How log lines leave the process: one line per event on standard error, in one of two formats,
// with journald's priority prefix when standard error is the journal.
//
// - text (default): "2026-12-03T10:00:00.123Z info flanneld-xdp: key=value [FlannelDaemon] message",
//   the shape swift-log's StreamLogHandler prints (with a UTC timestamp), so existing greps keep working.
// - json (--log-format=json): one object per line, {"time","level","logger","msg", metadata…},
//   for log shippers. Written without Foundation (RuntimeSupport's JSON).
//
// journald: systemd sets JOURNAL_STREAM="<device>:<inode>" for a unit whose output goes to the
// journal. When that names our standard error (checked with fstat, as sd_journal_stream_fd(3)
// advises: a child that inherited the variable but not the stream must not prefix), every line
// starts with "<N>", the syslog priority journald strips and stores, so `journalctl -p warning`
// shows warnings and errors. The prefix is added to JSON lines too: journald removes it, and the
// MESSAGE field it stores is the JSON object alone.

import Glibc
import Logging
import Synchronization

/// --log-format.
public enum LogFormat: String, CaseIterable, Sendable {
    case text, json
}

/// What every line needs to know besides the event.
public struct LogOutputStyle: Sendable, Equatable {
    public var format: LogFormat
    /// Prefix each line with "<N>" (syslog priority) for journald.
    public var journaldPrefix: Bool

    /// The style for this process: `format` as asked, the prefix when standard error is the journal.
    public static func forStandardError(format: LogFormat) -> LogOutputStyle {
        LogOutputStyle(format: format, journaldPrefix: standardErrorIsJournal(getenv("JOURNAL_STREAM").map { String(cString: $0) }))
    }

    /// True when `journalStream` ("<device>:<inode>", decimal) names the file descriptor `fd`.
    public static func standardErrorIsJournal(_ journalStream: String?, fd: Int32 = 2) -> Bool {
        guard let journalStream else { return false }
        let parts = journalStream.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }
}

/// A log event turned into one line of text (no trailing newline).
public enum LogLine {
    /// syslog(3) priorities, as journald reads them from the "<N>" prefix.
    public static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    public static func render(style: LogOutputStyle, time: timespec, level: Logger.Level, label: String,
                              message: String, metadata: Logger.Metadata, source: String = "") -> String {
        let prefix = style.journaldPrefix ? "<\(syslogPriority(level))>" : ""
        let sortedMetadata = metadata.sorted { $0.key < $1.key }
        switch style.format {
        case .text:
            let fields = sortedMetadata.map { " \($0.key)=\($0.value)" }.joined()
            let origin = source.isEmpty ? "" : " [\(source)]"
            // Multi-line messages (an error with its hint) stay one journal entry: newlines become "\n".
            return prefix + "\(timestamp(time)) \(level) \(label):" + oneLine(fields) + origin + " " + oneLine(message)
        case .json:
            var members: [(String, FlatJSON.Value)] = [
                ("time", .string(timestamp(time))), ("level", .string(level.rawValue)),
                ("logger", .string(label)), ("msg", .string(message)),
            ]
            let reserved: Set<String> = ["time", "level", "logger", "msg"]
            for (key, value) in sortedMetadata {
                members.append((reserved.contains(key) ? "meta_" + key : key, .string("\(value)")))
            }
            return prefix + FlatJSON.write(members, indent: false)
        }
    }

    /// RFC 3339 in UTC with milliseconds: "2026-12-03T10:00:00.123Z".
    static func timestamp(_ time: timespec) -> String {
        var seconds = time.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let n = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let base = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let millis = time.tv_nsec / 1_000_000
        return base + "." + (millis < 10 ? "00" : millis < 100 ? "0" : "") + "\(millis)Z"
    }

    static func oneLine(_ text: String) -> String {
        guard text.contains("\n") else { return text }
        return text.split(separator: "\n", omittingEmptySubsequences: false).joined(separator: "\\n")
    }
}

/// swift-log's handler for the daemon: LogLine to a sink (standard error unless a test gives one).
public struct DaemonLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    let label: String
    let style: LogOutputStyle
    let sink: @Sendable (String) -> Void

    public init(label: String, level: Logger.Level, style: LogOutputStyle,
                sink: @escaping @Sendable (String) -> Void = DaemonLogHandler.writeToStandardError) {
        self.label = label
        self.logLevel = level
        self.style = style
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var merged = event.metadata.map { metadata.merging($0) { _, new in new } } ?? metadata
        if let error = event.error { merged["error"] = "\(error)" }
        sink(LogLine.render(style: style, time: now, level: event.level, label: label, message: "\(event.message)", metadata: merged,
                            source: event.source) + "\n")
    }

    /// One write(2) per line, so lines of concurrent tasks never interleave.
    private static let writeLock = Mutex(())

    public static let writeToStandardError: @Sendable (String) -> Void = { line in
        writeLock.withLock { _ in
            var standardError = StandardError()
            standardError.write(line)
        }
    }
}
