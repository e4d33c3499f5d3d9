import ArgumentParser
import Foundation
import KetenpoortBench
import KetenpoortAudit
import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy
import NIOHTTP1

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks: an HTTPS load generator over mutual TLS (default), and component benchmarks.",
        subcommands: [BenchHTTP.self, BenchPolicy.self, BenchPseudonym.self, BenchLog.self], defaultSubcommand: BenchHTTP.self)
}

struct BenchHTTP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http",
        abstract: "Load an HTTPS server over mutual TLS (Ketenpoort or any other, such as nginx).",
        discussion: """
            Keep-alive connections in a closed loop by default; --rate holds a fixed arrival rate (latency is \
            measured from each request's intended start); --new-connection-per-request measures handshakes.
            """)

    @Option(help: "https://HOST:PORT/PATH") var url: String
    @Option(help: "Client certificate (PEM, then intermediates).") var cert: String?
    @Option(help: "Client private key (PEM).") var key: String?
    @Option(help: "CA bundle to verify the server.") var ca: String
    @Option(help: "Number of connections.") var connections: Int = 16
    @Option(help: "Seconds to run (default 10 unless --requests is given).") var duration: Double?
    @Option(help: "Total requests to send.") var requests: Int?
    @Option(help: "Fixed arrival rate, requests per second over all connections.") var rate: Double?
    @Option(help: "HTTP method.") var method: String = "GET"
    @Option(help: "File whose contents are sent as the request body.") var body: String?
    @Option(help: "Extra header `Name: value` (repeatable).") var header: [String] = []
    @Flag(help: "Open a new connection (full TLS handshake) for every request.") var newConnectionPerRequest = false
    @Flag(help: "With --new-connection-per-request: resume TLS sessions.") var resumeSessions = false
    @Option(help: "Event loop threads of the load generator.") var threads: Int = 1
    @Option(help: "PID of the server, to report its CPU time per request (Linux).") var serverPid: Int32?
    @Option(help: "Accepted status codes, e.g. 200-299 or 201.") var expectStatus: String = "200-299"
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        guard connections >= 1 && connections <= 10_000 else { throw ValidationError("--connections must be from 1 to 10000") }
        if let duration, duration <= 0 { throw ValidationError("--duration must be above 0") }
        if let requests, requests < 1 { throw ValidationError("--requests must be at least 1") }
        if let rate, rate <= 0 { throw ValidationError("--rate must be above 0") }
        if (cert == nil) != (key == nil) { throw ValidationError("--cert and --key go together") }
    }

    func run() async throws {
        var options = try LoadOptions(url: url, certificatePath: cert, keyPath: key, caPath: ca)
        options.connections = connections
        options.duration = duration.map { .milliseconds(Int64($0 * 1000)) }
        options.requests = requests
        options.rate = rate
        options.method = HTTPMethod(rawValue: method.uppercased())
        options.newConnectionPerRequest = newConnectionPerRequest
        options.resumeSessions = resumeSessions
        options.threads = threads
        if let body {
            guard let data = FileManager.default.contents(atPath: body) else {
                throw KetenpoortError(.fileUnreadable, "body file `\(body)` does not exist or cannot be read")
            }
            options.body = Array(data)
        }
        for line in header {
            guard let colon = line.firstIndex(of: ":") else { throw ValidationError("--header must be `Name: value`") }
            options.headers.append(
                (String(line[..<colon]).trimmingCharacters(in: .whitespaces), String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)))
        }
        let parts = expectStatus.split(separator: "-").compactMap { UInt($0) }
        guard parts.count == 1 || parts.count == 2 else { throw ValidationError("--expect-status must be like 200-299 or 201") }
        options.expectedStatus = parts[0]...(parts.count == 2 ? parts[1] : parts[0])
        let report = try await LoadGenerator.run(options, serverPID: serverPid)
        print(json ? report.json.serialized() : report.text)
    }
}

struct BenchPolicy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Decisions per second and median decision time with 1, 100 and 1,000 case tables.")

    @Option(help: "The policy directory.") var policies: String = "Policies"
    @Option(help: "Case-table counts to measure.") var tables: [Int] = [1, 100, 1_000]
    @Option(help: "Decisions per measurement.") var decisions: Int = 200_000
    @Flag(help: "Print JSON lines.") var json = false

    func run() throws {
        let loaded = PolicyLoader.load(directory: policies)
        guard let set = loaded.policySet else {
            throw KetenpoortError(.invalidInput, "policies in `\(policies)` do not load: run `ketenpoort policy check \(policies)`")
        }
        if !json { print("case tables   decisions/s   median ns/decision   permits") }
        for count in tables {
            let r = PolicyBenchmark.run(base: set, caseTables: count, decisions: decisions)
            if json {
                print(JSONValue.object([
                    ("case_tables", .number(Double(r.caseTables))), ("decisions", .number(Double(r.decisions))),
                    ("decisions_per_second", .number(r.decisionsPerSecond.rounded())), ("median_ns", .number(r.medianNanoseconds.rounded())),
                    ("permits", .number(Double(r.permits))),
                ]).serialized())
            } else {
                print(String(format: "%11d   %11.0f   %18.0f   %7d", r.caseTables, r.decisionsPerSecond, r.medianNanoseconds, r.permits))
            }
        }
    }
}

struct BenchPseudonym: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pseudonym", abstract: "Pseudonyms per second on one core beside `openssl speed -hmac sha256 -bytes 16`, same run.")
    @Option(help: "Pseudonyms to make.") var count: Int = 1_000_000
    @Option(help: "Seconds for openssl speed.") var seconds: Int = 3
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let ours = try PseudonymBenchmark.run(count: count)
        let raw = try PseudonymBenchmark.opensslHMACRate(seconds: seconds)
        if json {
            print(JSONValue.object([
                ("pseudonyms_per_second", .number(ours.rounded())), ("openssl_hmac_sha256_16b_per_second", .number(raw.rounded())),
                ("ratio", .number((ours / raw * 1000).rounded() / 1000)),
            ]).serialized())
        } else {
            print(String(format: "pseudonyms/s (HMAC-SHA256, text form)   %12.0f", ours))
            print(String(format: "openssl speed -hmac sha256 -bytes 16    %12.0f", raw))
            print(String(format: "ratio                                   %12.3f  (goal >= 0.3)", ours / raw))
        }
    }
}

struct BenchLog: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log",
        abstract: "Audit log: durable appends with group commit vs synchronous=OFF, same writers and disk; verify rate; fsync latency.")
    @Option(help: "Directory for the benchmark databases (a temporary one by default).") var dir: String?
    @Option(help: "Entries per measurement.") var entries: Int = 20_000
    @Option(help: "Concurrent writers.") var writers: Int = 64
    @Option(name: .customLong("report-entries"), help: "Entries in the log the subject report runs over (0: skip).") var reportEntries: Int = 1_000_000
    @Option(name: .customLong("person-entries"), help: "Entries about the person in that log.") var personEntries: Int = 20

    func run() async throws {
        let directory = dir ?? NSTemporaryDirectory() + "ketenpoort-bench-log-\(getpid())"
        defer { if dir == nil { try? FileManager.default.removeItem(atPath: directory) } }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let r = try await AuditBenchmark.run(directory: directory, entries: entries, writers: writers)
        print(String(format: "durable appends/s (WAL, synchronous=FULL, group commit, %d writers)  %10.0f", writers, r.durableAppendsPerSecond))
        print(String(format: "appends/s with synchronous=OFF (same writers, same disk)              %10.0f", r.unsyncedAppendsPerSecond))
        print(String(format: "ratio                                                                %10.3f  (goal >= 0.5)", r.durableAppendsPerSecond / r.unsyncedAppendsPerSecond))
        print(String(format: "log verify over the %d durable entries (one thread)             %10.0f entries/s", entries, r.verifyEntriesPerSecond))
        print(String(format: "fsync latency (4 KiB write + fsync, median)                          %10.0f us on %@", r.fsyncMedianMicroseconds, r.filesystem))
        guard reportEntries > 0 else { return }
        // A fixed benchmark key (never a real one): pseudonyms and checkpoint signatures.
        let keys = try LogKeys(keys: try KeyRing(keys: [("k1", Crypto.sha256(Array("ketenpoort bench log key".utf8)))]), origin: "bench.ketenpoort.example/audit")
        let report = try AuditBenchmark.subjectReport(directory: directory, entries: reportEntries, personEntries: personEntries, keys: keys)
        if report.loadSeconds > 0 {
            print(String(format: "built a log of %d entries (bulk load, synchronous=OFF) in            %10.1f s", report.entries, report.loadSeconds))
        }
        print(String(format: "subject report over %d entries, %d about the person, proofs checked: median %.1f ms, p95 %.1f ms  (goal <= 50 ms)",
                     report.entries, report.personEntries, report.medianMilliseconds, report.p95Milliseconds))
        let clock = ContinuousClock()
        let start = clock.now
        let verified = try AuditVerifier.verify(path: directory + "/bench-report-\(reportEntries).db", keys: try keys.verifierKeys)
        let elapsed = clock.now - start
        let rate = Double(verified.entries) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        print(String(format: "log verify over those %d entries (chain, tree, signed checkpoint): %10.0f entries/s  (goal >= 500000)", verified.entries, rate))
    }
}
