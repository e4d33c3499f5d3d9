import ArgumentParser
import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore

struct LogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log", abstract: "The tamper-evident audit log.",
        subcommands: [
            LogVerify.self, LogQuery.self, LogExport.self, LogSubjectReport.self, LogCheckpoint.self, LogProve.self, LogVerifyProof.self,
            LogPublicKey.self, LogRetention.self, LogAppendLoad.self,
        ])
}

/// The log's key options: the master key file (or KETENPOORT_KEYS) and the log's name.
struct LogKeyOptions: ParsableArguments {
    @Option(help: "The master key file (default: $KETENPOORT_KEYS).") var keys: String?
    @Option(help: "The log's name in checkpoints (the gateway's `audit.origin`; default: the name in the log's own checkpoints).")
    var origin: String?

    /// The keys; the log's name from `--origin`, else from the newest checkpoint in `db`.
    func load(db: String? = nil) throws -> LogKeys {
        var name = origin
        if name == nil, let db, PostgresSettings.isPostgresURL(db) || FileManager.default.fileExists(atPath: db),
            let note = try? AuditStores.reading(databaseLocation(db)).checkpoints().last?.note
        {
            name = note.split(separator: "\n").first.map(String.init)
        }
        return try LogKeys(keys: try KeyRing.load(path: try MasterKeySource.resolve(path: keys)), origin: name ?? LogKeys.defaultOrigin)
    }

    /// Keys when given (flag or environment); `nil` otherwise.
    func loadIfGiven(db: String? = nil) throws -> LogKeys? {
        guard keys != nil || ProcessInfo.processInfo.environment["KETENPOORT_KEYS"] != nil else { return nil }
        return try load(db: db)
    }
}

/// Commands that write to a log refuse to create one where none was.
func requireDatabase(_ path: String) throws {
    if PostgresSettings.isPostgresURL(path) {
        _ = try AuditStores.reading(databaseLocation(path))
        return
    }
    guard FileManager.default.fileExists(atPath: path) else { throw KetenpoortError(.fileUnreadable, "database `\(path)` does not exist") }
}

/// `--db`: a SQLite file or a `postgresql://` URL; a PostgreSQL password comes from the file
/// named by KETENPOORT_DATABASE_PASSWORD_FILE (never from the command line).
func databaseLocation(_ db: String) -> DatabaseLocation {
    DatabaseLocation(db, passwordFile: ProcessInfo.processInfo.environment["KETENPOORT_DATABASE_PASSWORD_FILE"])
}

/// Reads one BSN from standard input, the only line there; never echoes it.
func readSubjectBSN() throws -> BSN {
    var lines: [String] = []
    while let raw = readLine(strippingNewline: true) {
        let line = raw.trimmingCharacters(in: .whitespaces)
        if !line.isEmpty { lines.append(line) }
    }
    guard let line = lines.first else {
        throw KetenpoortError(.invalidInput, "expected a BSN on standard input (one line); a BSN never goes on the command line")
    }
    // One report is about one person: a second BSN would be ignored without a word.
    guard lines.count == 1 else {
        throw KetenpoortError(.invalidInput, "standard input holds \(lines.count) lines: give one BSN (one person per report or query)")
    }
    do {
        return try BSN(line)
    } catch {
        throw KetenpoortError(.invalidBSN, "standard input does not hold a valid BSN (9 digits passing the 11-check)")
    }
}

struct LogVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check the hash chain, the signed checkpoints, and consistency with a checkpoint kept elsewhere; name the first bad entry (exit 1).")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @Option(help: "A checkpoint note kept elsewhere (for example by a partner): the log must still extend it.") var checkpoint: String?
    @Option(name: .customLong("public-key"), help: "The log's verifier key file (`log public-key`); or give --keys.") var publicKey: String?
    @OptionGroup var keyOptions: LogKeyOptions

    func run() throws {
        var verifiers: [LogVerifierKey]?
        if let publicKey {
            verifiers = try LogVerifierKey.load(path: publicKey)
        } else if let keys = try keyOptions.loadIfGiven(db: db) {
            verifiers = try keys.verifierKeys
        }
        var note: String?
        if let checkpoint {
            guard let data = FileManager.default.contents(atPath: checkpoint), let text = String(data: data, encoding: .utf8) else {
                throw KetenpoortError(.fileUnreadable, "cannot read checkpoint file `\(checkpoint)`")
            }
            note = text
        }
        let report = try AuditVerifier.verify(location: databaseLocation(db), keys: verifiers, external: note)
        let head = Hex.encode(report.treeHead)
        if report.isValid {
            var line = "\(report.entries) entries verified; tree head \(head); \(report.checkpointsVerified) checkpoint(s) matched"
            if report.erasedEntries > 0 { line += "; \(report.erasedEntries) erased at retention (hashes kept)" }
            print(line)
            if !report.signaturesChecked {
                print("note: checkpoint signatures not checked; give --public-key FILE or --keys FILE")
            }
        } else {
            print("log verify failed at entry \(report.firstBadEntry ?? 0): \(report.problem ?? "")")
            throw ExitCode(1)
        }
    }
}

/// Filters shared by `log query` and `log export`.
struct LogFilterOptions: ParsableArguments {
    @Option(help: "Entries at or after this time (RFC 3339 or YYYY-MM-DD).") var from: String?
    @Option(help: "Entries before this time.") var until: String?
    @Option(help: "Entry kind (exchange-permitted, exchange-denied, consent-registered, consent-withdrawn, review, re-identification, policy-reloaded, key-rotated, retention).")
    var kind: String?
    @Option(name: .customLong("case-table")) var caseTable: String?
    @Option var sender: String?
    @Option var recipient: String?
    @Option var purpose: String?
    @Option(help: "permit or deny.") var decision: String?
    @Option(name: .customLong("basis-type"), help: "consent, safety-exception or statutory.") var basisType: String?
    @Flag(name: .customLong("subject-stdin"), help: "Only entries about the person whose BSN is on standard input (needs --keys).")
    var subjectStdin = false
    @Option(help: "At most this many entries.") var limit: Int?

    func validate() throws {
        if let kind, AuditKind(rawValue: kind) == nil {
            throw ValidationError("--kind must be one of \(AuditKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let decision, !["permit", "deny"].contains(decision) { throw ValidationError("--decision must be permit or deny") }
        if let basisType, !["consent", "safety-exception", "statutory"].contains(basisType) {
            throw ValidationError("--basis-type must be consent, safety-exception or statutory")
        }
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        for (name, value) in [("--from", from), ("--until", until)] {
            if let value, !AuditClock.isQueryBound(value) { throw ValidationError("\(name) must be a day (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)") }
        }
    }

    func query(keys: LogKeyOptions) throws -> AuditQuery {
        var q = AuditQuery()
        q.from = from
        q.until = until
        q.kind = kind
        q.caseTable = caseTable
        q.sender = sender
        q.recipient = recipient
        q.purpose = purpose
        q.decision = decision
        q.basisType = basisType
        q.limit = limit
        if subjectStdin {
            let bsn = try readSubjectBSN()
            // Turned into log pseudonyms in memory; the BSN is never stored or printed.
            q.subjects = try keys.load().subjectPseudonyms(bsn)  // pseudonyms do not depend on the log's name
        }
        return q
    }
}

struct LogQuery: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query", abstract: "Entries matching the filters, as a table or JSON lines.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @OptionGroup var filters: LogFilterOptions
    @OptionGroup var keyOptions: LogKeyOptions
    @Flag(help: "JSON lines instead of a table.") var json = false

    func run() throws {
        let query = try filters.query(keys: keyOptions)
        let store = try AuditStores.reading(databaseLocation(db))
        var count = 0
        if !json { print("SEQ\tTIME\tKIND\tCASE TABLE\tSENDER\tRECIPIENT\tPURPOSE\tDECISION\tBASIS") }
        try store.entries(matching: query) { entry in
            count += 1
            if json {
                print(AuditExport.line(entry))
                return true
            }
            let body = entry.body.flatMap { try? JSONParser.parse($0) }
            func field(_ name: String) -> String { body?[name]?.stringValue ?? "-" }
            let basis = body?["basis"]?["type"]?.stringValue ?? "-"
            let kind = entry.body == nil ? "\(entry.kind) (erased)" : entry.kind
            print("\(entry.sequence)\t\(entry.time)\t\(kind)\t\(field("caseTable"))\t\(field("sender"))\t\(field("recipient"))\t\(field("purpose"))\t\(field("decision"))\t\(basis)")
            return true
        }
        if !json { print("\(count) entr\(count == 1 ? "y" : "ies")") }
    }
}

struct LogExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Every entry (or those matching the filters) as JSON lines, in sequence order.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @OptionGroup var filters: LogFilterOptions
    @OptionGroup var keyOptions: LogKeyOptions

    func run() throws {
        let query = try filters.query(keys: keyOptions)
        let store = try AuditStores.reading(databaseLocation(db))
        var out = ""
        try store.entries(matching: query) { entry in
            out += AuditExport.line(entry)
            out += "\n"
            if out.utf8.count > 1 << 16 {
                FileHandle.standardOutput.write(Data(out.utf8))
                out = ""
            }
            return true
        }
        FileHandle.standardOutput.write(Data(out.utf8))
    }
}

struct LogSubjectReport: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subject-report",
        abstract: "GDPR art. 15 for the BSN read from standard input: every recipient, date, purpose and basis, with inclusion proofs.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @OptionGroup var keyOptions: LogKeyOptions
    @Flag(help: "JSON instead of text.") var json = false

    func run() async throws {
        let bsn = try readSubjectBSN()
        let keys = try keyOptions.load(db: db)
        try requireDatabase(db)
        // Sign a tree head over everything so far, so that every entry gets a proof.
        let log = try AuditLog(store: try AuditStores.writable(databaseLocation(db)), signer: try keys.signer)
        _ = try await log.checkpoint()
        log.close()
        let store = try AuditStores.reading(databaseLocation(db))
        let report = try SubjectReport.build(store: store, pseudonyms: try keys.subjectPseudonyms(bsn))
        // Every proof is checked before the report is printed: the signature once, each path.
        if let note = report.checkpoint {
            let checkpoint = try Checkpoint.verify(note: note, keys: try keys.verifierKeys)
            for item in report.items { try item.proof?.verifyInclusion(in: checkpoint) }
        }
        print(json ? report.json.serialized(sortedKeys: true) : report.text)
    }
}

struct LogCheckpoint: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint", abstract: "Sign a tree head now (if anything was appended since the last) and print the newest checkpoint note.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @OptionGroup var keyOptions: LogKeyOptions
    @Option(help: "Also write the note to this file (for a partner to keep).") var out: String?

    func run() async throws {
        let keys = try keyOptions.load(db: db)
        try requireDatabase(db)
        let log = try AuditLog(store: try AuditStores.writable(databaseLocation(db)), signer: try keys.signer)
        let checkpoint = try await log.checkpoint()
        log.close()
        guard let checkpoint else { throw KetenpoortError(.invalidInput, "the log is empty: there is no tree head to sign") }
        if let out { try checkpoint.note.write(toFile: out, atomically: true, encoding: .utf8) }
        print(checkpoint.note, terminator: "")
    }
}

struct LogProve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prove", abstract: "The inclusion proof of one entry against the newest signed checkpoint, as JSON.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @Option(help: "The entry's sequence number.") var entry: Int64

    func run() throws {
        let store = try AuditStores.reading(databaseLocation(db))
        print(try AuditProver.prove(sequence: entry, store: store).json.serialized(sortedKeys: true))
    }
}

struct LogVerifyProof: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify-proof",
        abstract: "Check an inclusion proof with only the proof file (it carries its checkpoint) and the log's public key; exit 1 if it fails.")
    @Option(help: "The proof (`log prove` output).") var proof: String
    @Option(name: .customLong("public-key"), help: "The log's verifier key file (`log public-key`).") var publicKey: String

    func run() throws {
        guard let data = FileManager.default.contents(atPath: proof) else { throw KetenpoortError(.fileUnreadable, "cannot read proof file `\(proof)`") }
        let bundle = try ProofBundle(json: try JSONParser.parse(bytes: Array(data)))
        let keys = try LogVerifierKey.load(path: publicKey)
        do {
            let checkpoint = try bundle.verify(keys: keys)
            print("entry \(bundle.sequence) is included in \(checkpoint.origin) at tree size \(checkpoint.treeSize) (signature valid)")
        } catch let error as KetenpoortError {
            print("proof does not verify: \(error.message)")
            throw ExitCode(1)
        }
    }
}

struct LogPublicKey: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "public-key", abstract: "Print the log's checkpoint verifier keys (one per master key id), for partners to keep.")
    @OptionGroup var keyOptions: LogKeyOptions
    @Option(help: "Take the log's name from this database's checkpoints (instead of --origin).") var db: String?

    func run() throws {
        for key in try keyOptions.load(db: db).verifierKeys { print(key.text) }
    }
}

struct LogRetention: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retention",
        abstract: "Erase the details of entries whose retention ended; their hashes stay, so the chain and proofs still verify.")
    @Option(help: "The gateway's database: a SQLite file or a postgresql:// URL (password from $KETENPOORT_DATABASE_PASSWORD_FILE).") var db: String
    @Option(help: "Erase what expired before this day (YYYY-MM-DD; default today in the Netherlands).") var today: String?
    @Flag(name: .customLong("dry-run"), help: "Only say how many entries would be erased.") var dryRun = false
    @OptionGroup var keyOptions: LogKeyOptions

    func run() async throws {
        let day = today ?? CalendarDate.dutchDay()
        guard CalendarDate.isValid(day) else {
            throw KetenpoortError(.invalidInput, "--today must be a real day as YYYY-MM-DD")
        }
        try requireDatabase(db)
        let keys = try keyOptions.loadIfGiven(db: db)
        let log = try AuditLog(store: try AuditStores.writable(databaseLocation(db)), signer: try keys?.signer)
        defer { log.close() }
        let store = try AuditStores.reading(databaseLocation(db))
        // A gateway database also holds payloads waiting for delivery: those past their retention go too.
        let inbox = store.hasTable("inbox") ? [SideWrite("UPDATE inbox SET sealed_payload = NULL WHERE retain_until IS NOT NULL AND retain_until < ? AND sealed_payload IS NOT NULL", [.text(day)])] : []
        // A long backlog is erased a batch at a time; say how far it got (on stderr).
        let result = try await AuditRetention.run(log: log, store: store, today: day, dryRun: dryRun, alsoErase: inbox) { done, total in
            if total > AuditRetention.defaultBatchSize {
                FileHandle.standardError.write(Data("retention: erased \(done) of \(total)\n".utf8))
            }
        }
        if dryRun {
            print("\(result.expired) entr\(result.expired == 1 ? "y has" : "ies have") expired before \(day); nothing erased (dry run)")
        } else if let sequence = result.logSequence {
            print("erased the details of \(result.expired) entr\(result.expired == 1 ? "y" : "ies"); recorded as entry \(sequence)")
        } else {
            print("nothing has expired before \(day)")
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

    func validate() throws {
        guard (1...1_024).contains(writers) else { throw ValidationError("--writers must be from 1 to 1024") }
        if let count, count < 0 { throw ValidationError("--count must not be negative") }
    }

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
