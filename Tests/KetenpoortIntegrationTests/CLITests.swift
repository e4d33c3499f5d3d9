import Foundation
import KetenpoortAudit
import KetenpoortStore
import Testing

/// The `ketenpoort` binary's commands, run as a user would.
@Suite("Command line")
struct CLITests {
    @Test("keys init, then pseudonym reads BSNs from standard input and prints one pseudonym a line")
    func pseudonyms() throws {
        let dir = temporaryDirectory()
        let keys = dir + "/master.key"
        #expect(try ketenpoort(["keys", "init", keys]).status == 0)
        let mode = try FileManager.default.attributesOfItem(atPath: keys)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let r = try ketenpoort(["pseudonym", "--keys", keys, "--domain", "recipient:mda-zhz:veilig-thuis-zhz"], stdin: "999990019\n999990020\n999990019\n")
        #expect(r.status == 0)
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 3)
        #expect(lines[0] == lines[2])
        #expect(lines[0] != lines[1])
        #expect(lines.allSatisfy { $0.hasPrefix("ps1.k1.") })
        let log = try ketenpoort(["pseudonym", "--keys", keys, "--domain", "log"], stdin: "999990019\n")
        #expect(log.stdout.split(separator: "\n").first.map(String.init) != lines[0])
        // Overwriting an existing key file is refused.
        #expect(try ketenpoort(["keys", "init", keys]).status == 2)
    }

    @Test("an invalid BSN: exit 2, one line, the value not echoed")
    func invalidBSN() throws {
        let dir = temporaryDirectory()
        let keys = dir + "/master.key"
        try ketenpoort(["keys", "init", keys])
        let r = try ketenpoort(["pseudonym", "--keys", keys, "--domain", "log"], stdin: "999990019\n123456789\n")
        #expect(r.status == 2)
        #expect(r.stderr.split(separator: "\n").count == 1)
        #expect(r.stderr.contains("line 2"))
        #expect(!r.stderr.contains("123456789"))
        #expect(r.stdout.isEmpty)
    }

    @Test("log query: a time bound that is not a day or a UTC time is refused (exit 2, one line)")
    func logQueryBounds() throws {
        let db = temporaryDirectory() + "/log.db"
        for bad in [["--from", "2026-13-01"], ["--until", "2026-06-01T12:00:00+02:00"], ["--from", "gisteren"]] {
            let r = try ketenpoort(["log", "query", "--db", db] + bad)
            #expect(r.status == 2, "\(bad) \(r.stderr)")
            #expect(r.stderr.contains(bad[0]) && r.stderr.contains("UTC"), "\(r.stderr)")
        }
    }

    @Test("bad arguments and unwritable files are one line on stderr (cli.md), exit 2, naming the command's help")
    func oneLineErrors() throws {
        let cases: [([String], String)] = [
            (["log", "query", "--db", "/tmp/none.db", "--kind", "bogus"], "(see `ketenpoort log query --help`)"),
            (["backup", "--db", "/tmp/none.db"], "Missing expected argument '--out <out>' (see `ketenpoort backup --help`)"),
            (["log", "prove", "--db", "/tmp/none.db", "--entry", "abc"], "(see `ketenpoort log prove --help`)"),
            (["no-such-command"], "(see `ketenpoort --help`)"),
            (["routemap", "--policies", packageRoot + "/Policies", "--out", "/nonexistent/dir/map.html"], "`/nonexistent/dir/map.html`"),
        ]
        for (arguments, fragment) in cases {
            let r = try ketenpoort(arguments)
            #expect(r.status == 2, "\(arguments): \(r.status)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1 && lines.first?.hasPrefix("ketenpoort: error: ") == true, "\(arguments): \(r.stderr)")
            #expect(r.stderr.contains(fragment) && !r.stderr.contains("Error Domain") && !r.stderr.contains("Error: "), "\(arguments): \(r.stderr)")
        }
    }

    @Test("log verify: a database that holds no log any more fails the check (exit 1); a missing file is bad input (exit 2)")
    func verifyEmptiedLog() throws {
        let dir = temporaryDirectory()
        FileManager.default.createFile(atPath: dir + "/emptied.db", contents: Data())
        let emptied = try ketenpoort(["log", "verify", "--db", dir + "/emptied.db"])
        #expect(emptied.status == 1 && emptied.stdout.contains("log verify failed"), "\(emptied.stdout)\(emptied.stderr)")
        #expect(try ketenpoort(["log", "verify", "--db", dir + "/missing.db"]).status == 2)
    }

    @Test("a key file readable by others: exit 2 with what to do")
    func looseKeyFile() throws {
        let dir = temporaryDirectory()
        let keys = dir + "/master.key"
        try ketenpoort(["keys", "init", keys])
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: keys)
        let r = try ketenpoort(["pseudonym", "--keys", keys, "--domain", "log"], stdin: "999990019\n")
        #expect(r.status == 2)
        #expect(r.stderr.contains("chmod 600"))
    }

    @Test("policy check and test exit 0 on the example region; bad usage exits 2")
    func policyCommands() throws {
        let check = try ketenpoort(["policy", "check", packageRoot + "/Policies"])
        #expect(check.status == 0)
        let test = try ketenpoort(["policy", "test", packageRoot + "/Policies"])
        #expect(test.status == 0)
        #expect(test.stdout.split(separator: "\n").last?.hasSuffix("passed, 0 failed") == true)
        #expect(try ketenpoort(["policy", "frobnicate"]).status == 2)
        #expect(try ketenpoort(["pseudonym", "--domain", "nonsense"]).status == 2)
        // Unreadable input is one line on stderr with exit 2, nothing on stdout.
        for arguments in [["policy", "check", "/nonexistent/policies"], ["policy", "explain", packageRoot + "/Policies", "--request", "/nonexistent/request.yaml"]] {
            let r = try ketenpoort(arguments)
            #expect(r.status == 2 && r.stdout.isEmpty, "\(arguments): \(r.status) \(r.stdout)")
            #expect(r.stderr.split(separator: "\n").count == 1 && r.stderr.hasPrefix("ketenpoort: error: "), "\(arguments): \(r.stderr)")
        }
    }

    @Test("pki init refuses a non-empty directory without --force")
    func pkiRefusesNonEmpty() throws {
        let dir = temporaryDirectory()
        try write("x", to: dir + "/something")
        let r = try ketenpoort(["pki", "init", dir, "--partners", packageRoot + "/Policies/partners.yaml"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("--force"))
    }
}

@Suite("log verify")
struct LogVerifyCLITests {
    @Test("a clean log verifies (exit 0); an edited entry is named (exit 1)")
    func verify() async throws {
        let path = temporaryDirectory() + "/ketenpoort.db"
        let log = try AuditLog(path: path)
        for i in 0..<40 {
            _ = try await log.append(AuditRecord(kind: "exchange_denied", members: [("exchangeId", .string("ex-\(i)")), ("rules", ["closed-case"])]))
        }
        log.close()
        let clean = try ketenpoort(["log", "verify", "--db", path])
        #expect(clean.status == 0)
        #expect(clean.stdout.contains("40 entries verified; tree head "))
        try SQLiteDatabase(path: path).execute("UPDATE audit_entries SET body = replace(body, 'closed-case', 'no-route') WHERE sequence = 12")
        let tampered = try ketenpoort(["log", "verify", "--db", path])
        #expect(tampered.status == 1)
        #expect(tampered.stdout.contains("failed at entry 12"))
        #expect(try ketenpoort(["log", "verify", "--db", "/nonexistent.db"]).status == 2)
    }
}

@Suite("Audit log crash drill")
struct AuditCrashTests {
    @Test("a writer killed with SIGKILL 20 times: every acknowledged entry is present and the chain verifies")
    func sigkill() throws {
        let path = temporaryDirectory("ketenpoort-crash") + "/ketenpoort.db"
        var highestAck: Int64 = 0
        for round in 1...20 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ketenpoortBinary)
            process.arguments = ["log", "append-load", "--db", path, "--writers", "16"]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            let acks = TextBuffer()
            out.fileHandleForReading.readabilityHandler = { handle in
                let data = handle.availableData
                if !data.isEmpty { acks.append(String(decoding: data, as: UTF8.self)) }
            }
            try process.run()
            // Let it append for a while (more each round), then kill it mid-write.
            usleep(UInt32(100_000 + round * 15_000))
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            out.fileHandleForReading.readabilityHandler = nil
            let text = acks.value + String(decoding: drainWithoutBlocking(out.fileHandleForReading), as: UTF8.self)
            for line in text.split(separator: "\n") where line.hasPrefix("ack ") {
                if let n = Int64(line.dropFirst(4)), n > highestAck { highestAck = n }
            }
            let report = try AuditVerifier.verify(path: path)
            #expect(report.isValid, "round \(round): \(report.problem ?? "")")
            // Sequences are contiguous from 1, so every acknowledged one is present.
            #expect(report.entries >= highestAck, "round \(round): \(report.entries) entries, highest ack \(highestAck)")
        }
        #expect(highestAck > 100, "the drill wrote too little to mean anything")
    }
}
