import Foundation
import KetenpoortCore
import Testing

@testable import KetenpoortPolicy

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let partnersYAML = try! String(contentsOfFile: repositoryRoot + "/Policies/partners.yaml", encoding: .utf8)

/// The corpus of broken policies: each file names its expected diagnostic in its first line,
/// `# expect: LINE:COL: [warning: ]fragment`.
@Suite("Broken policies give file:line:col diagnostics")
struct BrokenPolicyTests {
    static let fixtures: [String] = {
        let dir = Bundle.module.resourcePath! + "/Fixtures/broken"
        return (try! FileManager.default.contentsOfDirectory(atPath: dir)).filter { $0.hasSuffix(".yaml") }.sorted()
    }()

    @Test("each broken policy gives its diagnostic at its line", arguments: fixtures)
    func diagnostic(name: String) throws {
        let text = try String(contentsOfFile: Bundle.module.resourcePath! + "/Fixtures/broken/" + name, encoding: .utf8)
        let header = try #require(text.split(separator: "\n").first.map(String.init))
        let expectation = header.replacingOccurrences(of: "# expect: ", with: "")
        let parts = expectation.split(separator: ":", maxSplits: 2).map { $0.trimmingCharacters(in: .whitespaces) }
        let (line, column) = (Int(parts[0])!, Int(parts[1])!)
        var fragment = parts[2]
        var severity = Diagnostic.Severity.error
        if fragment.hasPrefix("warning: ") {
            severity = .warning
            fragment = String(fragment.dropFirst("warning: ".count))
        }
        let result = PolicyLoader.load(files: [("partners.yaml", partnersYAML), (name, text)])
        let match = result.diagnostics.first { $0.file == name && $0.message.contains(fragment) }
        #expect(match != nil, "no diagnostic containing `\(fragment)`; got:\n\(result.diagnostics.map(\.description).joined(separator: "\n"))")
        #expect(match?.line == line, "line: \(match?.description ?? "")")
        #expect(match?.column == column, "column: \(match?.description ?? "")")
        #expect(match?.severity == severity)
        if severity == .error {
            #expect(result.policySet == nil, "a policy set with errors must not compile")
        } else {
            #expect(result.policySet != nil)
        }
    }

    @Test("diagnostics print as file:line:col: severity: message")
    func format() {
        let d = Diagnostic(file: "mda-zhz.yaml", line: 12, column: 7, severity: .error, message: "unknown partner `x`")
        #expect(d.description == "mda-zhz.yaml:12:7: error: unknown partner `x`")
    }
}

@Suite("The example region")
struct ExampleRegionTests {
    @Test("policy check passes without errors or warnings")
    func check() {
        let output = PolicyCommands.check(directory: repositoryRoot + "/Policies")
        #expect(output.exitCode == 0, "\(output.text)")
        #expect(!output.text.contains("error:"))
        #expect(!output.text.contains("warning:"))
        #expect(output.text.contains("4 case table(s)"))
    }

    @Test("the region's policy tests pass, and there are at least 40")
    func policyTests() throws {
        let output = PolicyCommands.test(directory: repositoryRoot + "/Policies")
        #expect(output.exitCode == 0, "\(output.text)")
        let last = try #require(output.text.split(separator: "\n").last.map(String.init))
        let passed = Int(last.split(separator: " ").first ?? "") ?? 0
        #expect(passed >= 40)
        #expect(last.hasSuffix(", 0 failed"))
    }

    @Test("a failing policy test shows expected against actual and the explanation, exit 1")
    func failingTest() throws {
        let dir = NSTemporaryDirectory() + "policy-fail-\(UUID().uuidString.prefix(6))"
        try FileManager.default.createDirectory(atPath: dir + "/tests", withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: repositoryRoot + "/Policies") where name.hasSuffix(".yaml") {
            try FileManager.default.copyItem(atPath: repositoryRoot + "/Policies/" + name, toPath: dir + "/" + name)
        }
        try """
            tests:
              - name: expects the wrong thing
                request:
                  sender: politie-zhz
                  caseTable: mda-zhz
                  purpose: safety-assessment
                  recipient: veilig-thuis-zhz
                  basis: { type: statutory, article: "Besluit politiegegevens art. 4:2" }
                  fields: [identity.bsn]
                expect: { decision: deny }
            """.write(toFile: dir + "/tests/wrong.yaml", atomically: true, encoding: .utf8)
        let output = PolicyCommands.test(directory: dir)
        #expect(output.exitCode == 1)
        #expect(output.text.contains("FAIL  tests/wrong.yaml:2  expects the wrong thing"))
        #expect(output.text.contains("decision: expected deny, got permit"))
        #expect(output.text.contains("explanation: police-informs-vt"))
        #expect(output.text.hasSuffix("0 passed, 1 failed"))
    }

    @Test("explain lists every rule consulted, matched or not")
    func explain() throws {
        let file = NSTemporaryDirectory() + "explain-\(UUID().uuidString.prefix(6)).yaml"
        try """
            sender: wijkteam-dordrecht
            caseTable: mda-zhz
            purpose: meldcode-report
            recipient: veilig-thuis-zhz
            basis: { type: consent, consentIds: [c1] }
            subjects: [{ ref: child, role: child, age: 9, custody: [mother] }]
            fields: [identity.bsn]
            facts: { date: "2026-05-01", consents: [] }
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let output = PolicyCommands.explain(directory: repositoryRoot + "/Policies", requestFile: file)
        #expect(output.exitCode == 0)
        #expect(output.text.contains("decision: deny"))
        #expect(output.text.contains("[ ] route local-team-reports-to-vt"))
        #expect(output.text.contains("consent `c1` is not registered"))
        #expect(output.text.contains("[ ] forbid closed-case"))
    }
}

@Suite("Pure helpers")
struct PureHelperTests {
    // FIPS 180-2 examples.
    @Test("SHA-256 of the FIPS 180-2 examples")
    func sha256() {
        #expect(SHA256Digest.hex(SHA256Digest.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Digest.hex(SHA256Digest.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Digest.hex(SHA256Digest.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("date arithmetic across months and leap years")
    func dates() {
        #expect(DateText.adding(days: 28, to: "2026-05-01") == "2026-05-29")
        #expect(DateText.adding(days: 28, to: "2028-02-10") == "2028-03-09")
        #expect(DateText.adding(days: 1, to: "2026-12-31") == "2027-01-01")
    }
}

@Suite("Partner registry")
struct PartnerRegistryTests {
    @Test("duplicate ids, duplicate OINs and officer serials that are OINs are refused")
    func duplicates() throws {
        let base = "partners:\n  - { id: a, name: A, kind: local_team, oin: \"00000009900000000001\" }\n"
        #expect(throws: KetenpoortError.self) { try PartnerRegistry.parse(yaml: base + "  - { id: a, name: B, kind: police, oin: \"00000009900000000002\" }\n") }
        #expect(throws: KetenpoortError.self) { try PartnerRegistry.parse(yaml: base + "  - { id: b, name: B, kind: police, oin: \"00000009900000000001\" }\n") }
        #expect(throws: KetenpoortError.self) {
            try PartnerRegistry.parse(yaml: base + "officers:\n  - { id: o, name: O, role: privacy_officer, serial_number: \"00000009900000000001\" }\n")
        }
        let fine = try PartnerRegistry.parse(yaml: base + "officers:\n  - { id: o, name: O, role: privacy_officer, serial_number: \"00000009900000009001\" }\n")
        #expect(fine.partner(oin: "00000009900000000001")?.id == "a")
        #expect(fine.officer(serialNumber: "00000009900000009001")?.id == "o")
    }

    @Test("a misspelt key in partners.yaml is refused with its line, not dropped (an unpinned partner would pass)")
    func unknownKeys() throws {
        let misspelt = "partners:\n  - id: a\n    name: A\n    kind: local_team\n    oin: \"00000009900000000001\"\n    certificate_fingerprint: [\"aa\"]\n"
        let error = try #require(throws: KetenpoortError.self) { try PartnerRegistry.parse(yaml: misspelt) }
        #expect(error.message.hasPrefix("partners.yaml:6:5: unknown key `certificate_fingerprint` in partner `a`"), "\(error.message)")
        let result = PolicyLoader.load(files: [("partners.yaml", misspelt)])
        #expect(result.policySet == nil)
        #expect(result.diagnostics.first.map { "\($0.line):\($0.column)" } == "6:5")
        #expect(throws: KetenpoortError.self) { try PartnerRegistry.parse(yaml: "region: x\nregoin: y\npartners: []\n") }
        #expect(throws: KetenpoortError.self) {
            try PartnerRegistry.parse(yaml: "partners: []\nofficers:\n  - { id: o, name: O, role: privacy_officer, serial: \"00000009900000009001\" }\n")
        }
        #expect(try PartnerRegistry.parse(yaml: misspelt.replacingOccurrences(of: "fingerprint:", with: "fingerprints:")).partner(id: "a")?.certificateFingerprints == ["aa"])
    }
}
