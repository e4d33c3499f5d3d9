import ArgumentParser
import Foundation
import KetenpoortAudit
import KetenpoortCore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log", abstract: "The tamper-evident audit log.", subcommands: [LogVerify.self])
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
