import ArgumentParser
import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortPolicy
import KetenpoortReports

struct RouteMapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "routemap",
        abstract: "The DPIA route map: declared routes beside observed flows, one self-contained HTML file (or dot / mermaid), and the register of processing (art. 30) as CSV and JSON.")
    @Option(help: "The policy directory.") var policies: String
    @Option(help: "The gateway's database (the audit log); without it, only the declared routes.") var db: String?
    @Option(help: "The output file.") var out: String
    @Option(help: "html (default), dot or mermaid.") var format: String = "html"
    @Option(help: "Observed flows from this day or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC).") var from: String?
    @Option(help: "Observed flows before this day or time (the same forms).") var until: String?

    func validate() throws {
        guard ["html", "dot", "mermaid"].contains(format) else { throw ValidationError("--format must be html, dot or mermaid") }
        // The log's times are UTC text: anything else would be compared as text and silently
        // select the wrong period (`--from banana` selected nothing; a +01:00 offset shifted it).
        for (name, value) in [("--from", from), ("--until", until)] {
            if let value, !AuditClock.isQueryBound(value) { throw ValidationError("\(name) must be a day (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)") }
        }
    }

    func run() throws {
        let loaded = PolicyLoader.load(directory: policies)
        guard let set = loaded.policySet else {
            throw KetenpoortError(.invalidInput, "the policies in `\(policies)` have \(loaded.errors.count) error(s); run `ketenpoort policy check \(policies)`")
        }
        let flows = try db.map { try AuditStores.reading(databaseLocation($0)).observedFlows(from: from, until: until) } ?? []
        let period = db == nil ? "geen log" : "\(from ?? "begin van het log") tot \(until ?? "nu")"
        let map = RouteMap(policies: set, flows: flows, period: period)
        switch format {
        case "dot": try map.dot().write(toFile: out, atomically: true, encoding: .utf8)
        case "mermaid": try map.mermaid().write(toFile: out, atomically: true, encoding: .utf8)
        default:
            try map.html().write(toFile: out, atomically: true, encoding: .utf8)
            let base = out.hasSuffix(".html") ? String(out.dropLast(5)) : out
            let register = map.register()
            try register.csv.write(toFile: base + "-register.csv", atomically: true, encoding: .utf8)
            try register.json.serialized().write(toFile: base + "-register.json", atomically: true, encoding: .utf8)
            print("written \(out), \(base)-register.csv and \(base)-register.json (\(set.tables.count) case tables, \(flows.reduce(0) { $0 + $1.count }) logged exchanges)")
            return
        }
        print("written \(out)")
    }
}
