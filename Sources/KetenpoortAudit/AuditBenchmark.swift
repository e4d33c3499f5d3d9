import Foundation
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortStore

#if canImport(Glibc)
import Glibc
#endif

/// `ketenpoort bench log`: durable appends with group commit against appends without fsync,
/// the same writers and disk; the verifier's rate; the disk's fsync latency.
public enum AuditBenchmark {
    public struct Result: Sendable {
        public let durableAppendsPerSecond: Double
        public let unsyncedAppendsPerSecond: Double
        public let verifyEntriesPerSecond: Double
        public let fsyncMedianMicroseconds: Double
        public let filesystem: String
    }

    static func record(_ i: Int, subject: String = "ps1.k1.AxFGaT_q4y_IypHDhZximyN49HuimvZIBV4PnlWwnAk") -> AuditRecord {
        AuditRecord(kind: "exchange-permitted", members: [
            ("exchangeId", .string("ex-\(i)")), ("caseTable", "mda-zhz"), ("sender", "wijkteam-dordrecht"), ("recipient", "veilig-thuis-zhz"),
            ("purpose", "safety-assessment"), ("basis", ["type": "consent", "consentIds": ["c-1"]]), ("decision", "permit"),
            ("rules", ["local-team-asks-vt-assessment"]), ("policyVersion", "sha256:2cd392013b2cdaac"),
            ("released", ["identity.bsn", "identity.name", "concern_signal.summary"]), ("withheld", ["health.diagnosis"]),
            ("categoriesReleased", ["concern_signal", "identity"]), ("review", "none"), ("informSubjectBy", "2026-05-29"),
        ], subjects: [subject], retainUntil: "2046-05-01")
    }

    public struct ReportResult: Sendable {
        public let entries: Int
        public let personEntries: Int
        public let medianMilliseconds: Double
        public let p95Milliseconds: Double
        public let loadSeconds: Double
    }

    /// A subject report (with every inclusion proof built and verified) over a log of `entries`
    /// entries, `personEntries` of them about the person; median and p95 of `runs` reports.
    public static func subjectReport(directory: String, entries: Int, personEntries: Int, keys: LogKeys, runs: Int = 30) throws -> ReportResult {
        let path = directory + "/bench-report-\(entries).db"
        let person = try keys.subjectPseudonyms(try BSN("999990019"))[0]  // a test-range BSN
        let clock = ContinuousClock()
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        var loadSeconds = 0.0
        if !FileManager.default.fileExists(atPath: path) {
            let pseudonymiser = Pseudonymiser(keys: keys.keys)
            let every = max(1, entries / max(1, personEntries))
            let start = clock.now
            let store = try SQLiteAuditStore(path: path, synchronous: .off)
            var chunk: [AuditRecord] = []
            chunk.reserveCapacity(100_000)
            for i in 0..<entries {
                // Everyone else: pseudonyms of synthetic values (no BSN, nobody real).
                let subject = i % every == every / 2 ? person : try pseudonymiser.pseudonym(of: "bench-\(i % 200_000)", domain: Pseudonymiser.logDomain)
                chunk.append(record(i, subject: subject))
                if chunk.count == 100_000 || i == entries - 1 {
                    try AuditLog.bulkLoad(chunk, into: store, signer: i == entries - 1 ? try keys.signer : nil)
                    chunk.removeAll(keepingCapacity: true)
                }
            }
            loadSeconds = seconds(clock.now - start)
        }
        let verifiers = try keys.verifierKeys
        var times: [Double] = []
        var found = 0
        for _ in 0..<runs {
            let start = clock.now
            let store = try SQLiteAuditStore(readingFrom: path)
            let report = try SubjectReport.build(store: store, pseudonyms: try keys.subjectPseudonyms(try BSN("999990019")))
            if let note = report.checkpoint {
                let checkpoint = try Checkpoint.verify(note: note, keys: verifiers)
                for item in report.items { try item.proof?.verifyInclusion(in: checkpoint) }
            }
            times.append(seconds(clock.now - start) * 1000)
            found = report.items.count
        }
        times.sort()
        return ReportResult(
            entries: entries, personEntries: found, medianMilliseconds: times[times.count / 2],
            p95Milliseconds: times[min(times.count - 1, times.count * 95 / 100)], loadSeconds: loadSeconds)
    }

    /// Appends `entries` records from `writers` concurrent tasks; returns appends per second.
    public static func appendRate(path: String, synchronous: SQLiteDatabase.Synchronous, entries: Int, writers: Int) async throws -> Double {
        let log = try AuditLog(path: path, synchronous: synchronous)
        let clock = ContinuousClock()
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<writers {
                group.addTask {
                    var i = w
                    while i < entries {
                        _ = try await log.append(record(i))
                        i += writers
                    }
                }
            }
            try await group.waitForAll()
        }
        let elapsed = clock.now - start
        log.close()
        return Double(entries) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    public static func run(directory: String, entries: Int, writers: Int) async throws -> Result {
        let durablePath = directory + "/bench-durable.db"
        let unsyncedPath = directory + "/bench-unsynced.db"
        // Three alternating rounds on fresh files; the median of each (the machine is noisy).
        var unsyncedRates: [Double] = []
        var durableRates: [Double] = []
        for _ in 0..<3 {
            for p in [durablePath, unsyncedPath] { for suffix in ["", "-wal", "-shm"] { unlink(p + suffix) } }
            unsyncedRates.append(try await appendRate(path: unsyncedPath, synchronous: .off, entries: entries, writers: writers))
            durableRates.append(try await appendRate(path: durablePath, synchronous: .full, entries: entries, writers: writers))
        }
        let unsynced = unsyncedRates.sorted()[1]
        let durable = durableRates.sorted()[1]
        let clock = ContinuousClock()
        let start = clock.now
        let report = try AuditVerifier.verify(path: durablePath)
        let elapsed = clock.now - start
        guard report.isValid else { throw KetenpoortError(.storageCorrupt, "the benchmark log does not verify: \(report.problem ?? "")") }
        let verifyRate = Double(report.entries) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        return Result(
            durableAppendsPerSecond: durable, unsyncedAppendsPerSecond: unsynced, verifyEntriesPerSecond: verifyRate,
            fsyncMedianMicroseconds: fsyncLatency(directory: directory), filesystem: filesystem(of: directory))
    }

    /// Median time of write(4 KiB) + fsync on a file in `directory`.
    static func fsyncLatency(directory: String, samples: Int = 100) -> Double {
        let path = directory + "/fsync-probe"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { return -1 }
        defer { close(fd); unlink(path) }
        let block = [UInt8](repeating: 0x42, count: 4096)
        var times: [Double] = []
        let clock = ContinuousClock()
        for _ in 0..<samples {
            let start = clock.now
            _ = write(fd, block, block.count)
            _ = fsync(fd)
            let d = clock.now - start
            times.append(Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12)
        }
        times.sort()
        return times[times.count / 2]
    }

    /// The filesystem type, as `df -T` reports it.
    static func filesystem(of directory: String) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/df")
        process.arguments = ["-T", directory]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "unknown" }
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let lines = text.split(separator: "\n")
        guard lines.count > 1 else { return "unknown" }
        let fields = lines[1].split(separator: " ")
        return fields.count > 1 ? String(fields[1]) : "unknown"
    }
}
