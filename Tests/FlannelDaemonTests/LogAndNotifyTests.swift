// Log lines (text, JSON, journald's priority prefix) and the daemon's side of systemd's notify
// protocol (watchdog settings, STATUS= texts, what a beat sends), without a daemon; the daemon
// binary's own output is checked in LogOutputBinaryTests and SystemdProtocolTests.

@testable import FlannelDaemon
import Glibc
import Logging
import Synchronization
import TestSupport
import Testing

extension DaemonSuite {
@Suite("Log lines and systemd notifications")
struct LogAndNotifyTests {
    static let time = timespec(tv_sec: 1_790_000_000, tv_nsec: 123_456_789)

    @Test("text lines: time, level, label, metadata, source, message; newlines kept inside one line")
    func textLine() {
        let line = LogLine.render(style: LogOutputStyle(format: .text, journaldPrefix: false), time: Self.time, level: .warning,
                                  label: "flanneld-xdp", message: "first\nsecond", metadata: ["peers": "3", "a": "b"], source: "FlannelDaemon")
        // swift-log's StreamLogHandler shape: metadata, then [source], then the message.
        #expect(line == #"2026-09-21T14:13:20.123Z warning flanneld-xdp: a=b peers=3 [FlannelDaemon] first\nsecond"#)
    }

    @Test("journald prefix: syslog priority per level")
    func journaldPrefix() {
        let style = LogOutputStyle(format: .text, journaldPrefix: true)
        let expected: [(Logger.Level, String)] = [(.trace, "<7>"), (.debug, "<7>"), (.info, "<6>"), (.notice, "<5>"),
                                                  (.warning, "<4>"), (.error, "<3>"), (.critical, "<2>")]
        for (level, prefix) in expected {
            let line = LogLine.render(style: style, time: Self.time, level: level, label: "x", message: "m", metadata: [:])
            #expect(line.hasPrefix(prefix + "2026-09-21T"), "\(level): \(line)")
        }
    }

    @Test("JSON lines: one object, reserved keys kept apart from metadata, escapes; the prefix before it under journald")
    func jsonLine() throws {
        let line = LogLine.render(style: LogOutputStyle(format: .json, journaldPrefix: false), time: Self.time, level: .error,
                                  label: "flanneld-xdp", message: "quote \" and\nnewline", metadata: ["msg": "shadow", "table": "bpf-maps"])
        #expect(line == #"{"time":"2026-09-21T14:13:20.123Z","level":"error","logger":"flanneld-xdp","msg":"quote \" and\nnewline","meta_msg":"shadow","table":"bpf-maps"}"#)
        let fields = try FlatJSON.parse(line)
        #expect(fields["msg"] == .string("quote \" and\nnewline"))
        let prefixed = LogLine.render(style: LogOutputStyle(format: .json, journaldPrefix: true), time: Self.time, level: .error,
                                      label: "x", message: "m", metadata: [:])
        #expect(prefixed.hasPrefix("<3>{\"time\":"))
    }

    @Test("JOURNAL_STREAM counts only when it names our standard error's device and inode")
    func journalStreamDetection() throws {
        let path = "/tmp/\(uniqueTag("js")).log"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        var info = stat()
        fstat(fd, &info)
        #expect(LogOutputStyle.standardErrorIsJournal("\(info.st_dev):\(info.st_ino)", fd: fd))
        #expect(!LogOutputStyle.standardErrorIsJournal("\(info.st_dev):\(info.st_ino + 1)", fd: fd))
        #expect(!LogOutputStyle.standardErrorIsJournal(nil, fd: fd))
        #expect(!LogOutputStyle.standardErrorIsJournal("garbage", fd: fd))
    }

    @Test("the handler writes one line per event through its sink, at its level")
    func handler() {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "t") { label in
            DaemonLogHandler(label: label, level: .notice, style: LogOutputStyle(format: .json, journaldPrefix: true),
                             sink: { line in lines.withLock { $0.append(line) } })
        }
        logger[metadataKey: "node"] = "n1"
        logger.info("dropped: below notice")
        logger.notice("kept", metadata: ["peers": "2"])
        let written = lines.withLock { $0 }
        #expect(written.count == 1)
        #expect(written.first?.hasPrefix("<5>{") == true && written.first?.hasSuffix("\"node\":\"n1\",\"peers\":\"2\"}\n") == true, "\(written)")
    }

    @Test("WATCHDOG_USEC is used only when positive and (with WATCHDOG_PID) meant for this process")
    func watchdogSettings() {
        #expect(SystemdNotifier.watchdogTimeout(usec: "30000000", pid: nil, ownPID: 7) == .seconds(30))
        #expect(SystemdNotifier.watchdogTimeout(usec: "30000000", pid: "7", ownPID: 7) == .seconds(30))
        #expect(SystemdNotifier.watchdogTimeout(usec: "30000000", pid: "8", ownPID: 7) == nil)
        #expect(SystemdNotifier.watchdogTimeout(usec: "0", pid: nil, ownPID: 7) == nil)
        #expect(SystemdNotifier.watchdogTimeout(usec: "x", pid: nil, ownPID: 7) == nil)
        #expect(SystemdNotifier.watchdogTimeout(usec: nil, pid: nil, ownPID: 7) == nil)
        // No socket, no watchdog: nothing to ping.
        #expect(SystemdNotifier(socketPath: nil, watchdogTimeout: .seconds(30)).watchdogTimeout == nil)
    }

    @Test("STATUS texts: ready, degraded with the reasons; beats send WATCHDOG=1 when due and STATUS only when it changed")
    func statusAndBeats() throws {
        let listener = try NotifyListener(name: "@\(uniqueTag("sm"))")
        let readiness = Readiness()
        for condition in Readiness.Condition.allCases { readiness.set(condition, ok: true) }
        let link = ServiceManagerLink(notifier: SystemdNotifier(socketPath: listener.name, watchdogTimeout: .seconds(30)),
                                      readiness: readiness, identity: "subnet 10.5.1.0/24, data path bpf-tc",
                                      logger: Logger(label: "t"))
        #expect(link.beatInterval == .seconds(5))
        try link.ready(peers: 2)
        #expect(listener.receive() == "READY=1\nSTATUS=ready: subnet 10.5.1.0/24, data path bpf-tc, 2 peer(s)")
        link.beat(peers: 2, watchdog: true)
        #expect(listener.receive() == "WATCHDOG=1")
        link.beat(peers: 3, watchdog: false)
        #expect(listener.receive() == "STATUS=ready: subnet 10.5.1.0/24, data path bpf-tc, 3 peer(s)")
        readiness.set(.leaseConfirmed, ok: false, detail: "degraded: started from the last known state")
        link.beat(peers: 3, watchdog: true)
        #expect(listener.receive() == "WATCHDOG=1\nSTATUS=degraded: lease confirmed by etcd: degraded: started from the last known state; subnet 10.5.1.0/24, data path bpf-tc, 3 peer(s)")
        // Nothing due, nothing changed: nothing sent (the next message is the one after).
        link.beat(peers: 3, watchdog: false)
        link.beat(peers: 3, watchdog: true)
        #expect(listener.receive() == "WATCHDOG=1")
        // A short watchdog: beats at half of it.
        let fast = ServiceManagerLink(notifier: SystemdNotifier(socketPath: listener.name, watchdogTimeout: .seconds(2)),
                                      readiness: readiness, identity: "x", logger: Logger(label: "t"))
        #expect(fast.beatInterval == .seconds(1))
    }
}
}
