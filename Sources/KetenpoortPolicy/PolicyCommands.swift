import Foundation
import KetenpoortCore
import Yams

/// The library side of `ketenpoort policy check|test|explain`: each returns the text to print
/// and the exit code (0 fine, 1 problems found, 2 unreadable input).
public enum PolicyCommands {
    public struct Output: Sendable {
        public let text: String
        public let exitCode: Int32
    }

    /// `policy check DIR`: every diagnostic as `file:line:col: severity: message`.
    public static func check(directory: String) -> Output {
        let result = PolicyLoader.load(directory: directory)
        var lines = result.diagnostics.map(\.description)
        let errors = result.errors.count
        let warnings = result.diagnostics.count - errors
        if let set = result.policySet {
            lines.append("\(set.tables.count) case table(s), \(set.tables.values.reduce(0) { $0 + $1.routes.count }) route(s), \(set.tables.values.reduce(0) { $0 + $1.forbids.count } + set.regionForbids.count) forbid rule(s); policy version \(set.version); \(warnings) warning(s)")
        } else {
            lines.append("\(errors) error(s), \(warnings) warning(s)")
        }
        return Output(text: lines.joined(separator: "\n"), exitCode: errors > 0 ? 1 : 0)
    }

    /// `policy test DIR`: runs `DIR/tests/*.yaml`; the last line is `N passed, M failed`.
    public static func test(directory: String) -> Output {
        let loaded = PolicyLoader.load(directory: directory)
        guard let set = loaded.policySet else {
            return Output(text: (loaded.errors.map(\.description) + ["policies do not load: 0 passed, 0 failed"]).joined(separator: "\n"), exitCode: 1)
        }
        let testDirectory = (directory as NSString).appendingPathComponent("tests")
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: testDirectory) else {
            return Output(text: "no test directory `\(testDirectory)`\n0 passed, 0 failed", exitCode: 1)
        }
        var lines: [String] = []
        var passed = 0
        var failed = 0
        for name in names.sorted() where name.hasSuffix(".yaml") {
            let path = (testDirectory as NSString).appendingPathComponent(name)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                return Output(text: "tests/\(name): cannot be read", exitCode: 2)
            }
            let cases: [PolicyTestCase]
            do {
                cases = try PolicyTestCase.parse(yaml: text, file: "tests/\(name)")
            } catch {
                lines.append("\(error)")
                failed += 1
                continue
            }
            for testCase in cases {
                let outcome = testCase.run(against: set)
                if outcome.failures.isEmpty {
                    passed += 1
                    lines.append("PASS  \(testCase.file):\(testCase.line)  \(testCase.name)")
                } else {
                    failed += 1
                    lines.append("FAIL  \(testCase.file):\(testCase.line)  \(testCase.name)")
                    for failure in outcome.failures { lines.append("      \(failure)") }
                    for line in outcome.decision?.explanation ?? [] { lines.append("      explanation: \(line)") }
                }
            }
        }
        lines.append("\(passed) passed, \(failed) failed")
        return Output(text: lines.joined(separator: "\n"), exitCode: failed > 0 ? 1 : 0)
    }

    /// `policy explain DIR --request FILE`: the decision and every rule consulted.
    public static func explain(directory: String, requestFile: String) -> Output {
        let loaded = PolicyLoader.load(directory: directory)
        guard let set = loaded.policySet else {
            return Output(text: loaded.errors.map(\.description).joined(separator: "\n"), exitCode: 1)
        }
        guard let text = try? String(contentsOfFile: requestFile, encoding: .utf8) else {
            return Output(text: "request file `\(requestFile)` does not exist or cannot be read", exitCode: 2)
        }
        let request: DecisionRequest
        do {
            let json: JSONValue
            if requestFile.hasSuffix(".json") {
                json = try JSONParser.parse(text)
            } else {
                guard let node = try Yams.compose(yaml: text) else { throw KetenpoortError(.invalidRequest, "the request file is empty") }
                json = YAMLJSON.convert(node)
            }
            request = try DecisionRequest(json: json["request"] ?? json)
        } catch let error as KetenpoortError {
            return Output(text: "\(requestFile): \(error.message)", exitCode: 2)
        } catch {
            return Output(text: "\(requestFile): \(error)", exitCode: 2)
        }
        let decision = set.evaluate(request, explain: true)
        return Output(text: render(decision, request: request, set: set), exitCode: 0)
    }

    static func render(_ decision: Decision, request: DecisionRequest, set: PolicySet) -> String {
        var lines: [String] = []
        let table = set.tables[request.caseTable]
        lines.append("decision: \(decision.effect.rawValue)   (policy \(decision.policyVersion))")
        lines.append("exchange: \(request.sender) → \(request.recipient), table \(request.caseTable), purpose \(request.purpose)\(table?.purposes[request.purpose].map { " (\($0))" } ?? ""), ground \(request.basis.ground)")
        lines.append("deciding rules: \(decision.rules.joined(separator: ", "))")
        lines.append("rules consulted:")
        for t in decision.trace {
            lines.append("  [\(t.matched ? "x" : " ")] \(t.kind.rawValue) \(t.id) — \(t.label): \(t.reason)")
        }
        let o = decision.obligations
        if decision.isPermit {
            lines.append("released:")
            for (path, transform) in o.released.sorted(by: { $0.key < $1.key }) { lines.append("  \(path)  (\(describe(transform)))") }
        }
        lines.append("withheld: \(o.withheld.sorted().joined(separator: ", "))")
        if decision.isPermit {
            lines.append("review: \(o.review ? "yes" : "no")")
            if let by = o.informSubjectBy { lines.append("inform subject by: \(by)") }
            if let g = o.informDeferredGround { lines.append("informing deferred: \(g)") }
            if let years = o.retentionYears { lines.append("retention: \(years) years") }
        }
        return lines.joined(separator: "\n")
    }

    static func describe(_ t: FieldTransform) -> String {
        switch t {
        case .keep: return "kept"
        case .drop: return "dropped"
        case .pseudonymise: return "pseudonymised for the recipient"
        case .token: return "tokenised for the recipient"
        case .generalise(let g): return "generalised to \(g.rawValue)"
        }
    }
}

/// One policy test: a request and what its decision must be.
struct PolicyTestCase {
    let name: String
    let file: String
    let line: Int
    let request: JSONValue
    let expectDecision: String
    let expectRules: [String]?
    let expectReleased: [String]?
    let expectWithheld: [String]?
    let expectReview: Bool?
    let expectInformBy: String?

    struct Outcome {
        var decision: Decision?
        var failures: [String]
    }

    func run(against set: PolicySet) -> Outcome {
        let request: DecisionRequest
        do {
            request = try DecisionRequest(json: self.request)
        } catch let error as KetenpoortError {
            return Outcome(decision: nil, failures: ["the request is invalid: \(error.message)"])
        } catch {
            return Outcome(decision: nil, failures: ["the request is invalid: \(error)"])
        }
        let decision = set.evaluate(request, explain: true)
        var failures: [String] = []
        if decision.effect.rawValue != expectDecision { failures.append("decision: expected \(expectDecision), got \(decision.effect.rawValue) (rules \(decision.rules.joined(separator: ", ")))") }
        if let rules = expectRules, Set(rules) != Set(decision.rules) { failures.append("rules: expected \(rules.sorted()), got \(decision.rules.sorted())") }
        if let released = expectReleased, Set(released) != Set(decision.obligations.released.keys) {
            failures.append("released: expected \(released.sorted()), got \(decision.obligations.released.keys.sorted())")
        }
        if let withheld = expectWithheld, Set(withheld) != decision.obligations.withheld {
            failures.append("withheld: expected \(withheld.sorted()), got \(decision.obligations.withheld.sorted())")
        }
        if let review = expectReview, review != decision.obligations.review { failures.append("review: expected \(review), got \(decision.obligations.review)") }
        if let by = expectInformBy, by != decision.obligations.informSubjectBy { failures.append("informSubjectBy: expected \(by), got \(decision.obligations.informSubjectBy ?? "none")") }
        return Outcome(decision: decision, failures: failures)
    }

    /// A test file: `defaults` (merged into every request) and `tests`.
    static func parse(yaml text: String, file: String) throws -> [PolicyTestCase] {
        guard let root = try Yams.compose(yaml: text), let map = root.mapping else {
            throw KetenpoortError(.invalidInput, "\(file):1:1: error: a test file is a mapping with `tests`")
        }
        let defaults = map["defaults"].map(YAMLJSON.convert) ?? .object([])
        guard let tests = map["tests"]?.sequence else {
            throw KetenpoortError(.invalidInput, "\(file):1:1: error: a test file needs a list of `tests`")
        }
        return try tests.map { node in
            let line = node.mark?.line ?? 1
            guard let t = node.mapping, let name = t["name"]?.string, let requestNode = t["request"], let expect = t["expect"]?.mapping,
                let decision = expect["decision"]?.string, decision == "permit" || decision == "deny"
            else {
                throw KetenpoortError(.invalidInput, "\(file):\(line):\(node.mark?.column ?? 1): error: a test needs `name`, `request` and `expect.decision` (permit or deny)")
            }
            func list(_ key: String) -> [String]? { expect[key]?.sequence?.compactMap(\.string) }
            return PolicyTestCase(
                name: name, file: file, line: line, request: YAMLJSON.merge(defaults, YAMLJSON.convert(requestNode)), expectDecision: decision,
                expectRules: list("rules"), expectReleased: list("released"), expectWithheld: list("withheld"), expectReview: expect["review"]?.bool,
                expectInformBy: expect["informSubjectBy"]?.string)
        }
    }
}

/// YAML nodes as JSON values (for request files and test tables written in YAML).
enum YAMLJSON {
    static func convert(_ node: Node) -> JSONValue {
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain {
                if let b = node.bool { return .bool(b) }
                if let i = node.int { return .number(Double(i)) }
                if node.tag.description.hasSuffix(":float"), let f = node.float { return .number(f) }
                if node.tag.description.hasSuffix(":null") { return .null }
            }
            return .string(scalar.string)
        case .mapping(let mapping):
            return .object(mapping.map { ($0.key.string ?? "", convert($0.value)) })
        case .sequence(let sequence):
            return .array(sequence.map(convert))
        case .alias:
            return .null
        }
    }

    /// Deep merge: `override` wins; objects merge member by member.
    static func merge(_ base: JSONValue, _ override: JSONValue) -> JSONValue {
        guard case .object(let b) = base, case .object(let o) = override else { return override }
        var result = b
        for (key, value) in o {
            if let index = result.firstIndex(where: { $0.0 == key }) {
                result[index] = (key, merge(result[index].1, value))
            } else {
                result.append((key, value))
            }
        }
        return .object(result)
    }
}
