import ArgumentParser
import Foundation
import KetenpoortAudit
import KetenpoortCore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log", abstract: "The tamper-evident audit log.", subcommands: [LogVerify.self, LogAppendLoad.self])
}

struct LogVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Re-derive every entry's hash and the hash chain; name the first bad entry (exit 1).")
    @Option(help: "The gateway's database.") var db: String

    func run() throws {
        let report = try AuditVerifier.verify(path: db)
        let head = report.treeHead.map { String(format: "%02x", $0) }.joined()
        if report.isValid {
            print("\(report.entries) entries verified; tree head \(head)")
        } else {
            print("log verify failed at entry \(report.firstBadEntry ?? 0): \(report.problem ?? "")")
            throw ExitCode(1)
        }
    }
}

/// A load tool for tests and operators' drills: appends synthetic entries (no personal data) and
/// prints `ack N` for every entry once it is durable, until killed or `--count` is reached.
struct LogAppendLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "append-load",
        abstract: "Append synthetic entries under load, printing `ack N` once each is durable (crash drills).")
    @Option(help: "The database.") var db: String
    @Option(help: "Concurrent writers.") var writers: Int = 16
    @Option(help: "Stop after this many entries (default: until killed).") var count: Int?

    func run() async throws {
        let log = try AuditLog(path: db)
        let limit = count ?? Int.max
        let out = FileHandle.standardOutput
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    var i = w
                    while i < limit {
                        let sequence = try await log.append(
                            AuditRecord(kind: "drill", members: [("writer", .number(Double(w))), ("n", .number(Double(i)))]))
                        out.write(Data("ack \(sequence)\n".utf8))
                        i += writers
                    }
                }
            }
            try await group.waitForAll()
        }
        log.close()
    }
}
