import Foundation
import KetenpoortServer
import KetenpoortCore
import NIOCore
import NIOPosix

/// The example scenario `ketenpoort demo` runs once the gateway serves: a local team registers
/// custody and a consent and reports to Veilig Thuis; a refused exchange; a safety-exception
/// report; a withdrawn consent; Veilig Thuis reads its inbox. Test-range BSNs only.
enum DemoScenario {
    static let child = "999990019"  // test range, 11-check
    static let mother = "999990020"

    static func run(port: Int, pki: String) async {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            func client(_ partner: String) throws -> HTTPSClient {
                try HTTPSClient(
                    port: port, certificate: "\(pki)/partners/\(partner).crt", key: "\(pki)/partners/\(partner).key", ca: "\(pki)/ca.crt", group: group)
            }
            let team = try client("wijkteam-dordrecht")
            let vt = try client("veilig-thuis-zhz")
            let jgz = try client("jgz-zhz")
            func say(_ line: String) { announce("scenario: " + line) }
            say("the Dordrecht local team records that the mother holds custody of the child (test BSNs)")
            let custody = try await team.request(.POST, "/v1/facts", json: #"{"caseTable": "mda-zhz", "type": "custody", "subject": "\#(child)", "holders": ["\#(mother)"]}"#)
            say("  → \(custody.status)")
            let consent = try await team.request(.POST, "/v1/consents", json: """
                {"caseTable": "mda-zhz", "subject": {"bsn": "\(child)", "age": 9}, "grantor": {"capacity": "parent_with_custody", "bsn": "\(mother)"},
                 "purposes": ["meldcode-report"], "recipients": ["veilig-thuis-zhz"], "categories": ["identity", "health"], "evidenceRef": "dossier 2026-114, formulier toestemming"}
                """)
            let consentID = consent.json?["consentId"]?.stringValue ?? "?"
            say("the mother consents to sharing identity and health data with Veilig Thuis → \(consent.status) \(consentID)")
            let exchange = """
                {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
                 "basis": {"type": "consent", "consentIds": ["\(consentID)"]},
                 "subjects": [{"bsn": "\(child)", "role": "child", "age": 9}],
                 "data": {"identity": {"bsn": "\(child)", "name": "Demo Kind"}, "health": {"summary": "astma"}, "concern_signal": {"summary": "zorgen over de thuissituatie"}}}
                """
            let sent = try await team.request(.POST, "/v1/exchanges", json: exchange)
            say("the team sends to Veilig Thuis on that consent → \(sent.status), released \(list(sent.json?["released"])), withheld \(list(sent.json?["withheld"])) (not covered by the consent), log entry \(sent.json?["logSequence"]?.intValue ?? 0)")
            let refused = try await jgz.request(.POST, "/v1/exchanges", json: exchange.replacingOccurrences(of: consentID, with: "c-none"))
            let reason = refused.json?["reasons"]?.arrayValue?.first?["explanation"]?.stringValue ?? ""
            say("youth health care tries the same → \(refused.status) \(refused.json?["code"]?.stringValue ?? ""): \(reason)")
            let safety = try await team.request(.POST, "/v1/exchanges", json: """
                {"caseTable": "mda-zhz", "purpose": "meldcode-report", "recipient": "veilig-thuis-zhz",
                 "basis": {"type": "safety-exception", "ground": "wmo-5.2.6", "justification": "het kind vertelt over geweld thuis", "professional": "wt-17",
                           "meldcode": {"signalsMapped": true, "colleagueConsulted": true, "clientSpokenTo": true, "weighed": true, "decided": "report"}},
                 "subjects": [{"bsn": "\(child)", "role": "child", "age": 9}],
                 "data": {"identity": {"bsn": "\(child)"}, "concern_signal": {"summary": "blauwe plekken"}, "health": {"diagnosis": "niet relevant"}}}
                """)
            say("a report without consent under the safety exception (Wmo 2015 art. 5.2.6) → \(safety.status), released \(list(safety.json?["released"])), review \(safety.json?["review"]?.boolValue ?? false), inform the family by \(safety.json?["informSubjectBy"]?.stringValue ?? "-")")
            let withdrawn = try await team.request(.POST, "/v1/consents/\(consentID)/withdraw")
            say("the mother withdraws her consent → \(withdrawn.status)")
            let again = try await team.request(.POST, "/v1/exchanges", json: exchange)
            say("the team sends on the withdrawn consent → \(again.status) \(again.json?["code"]?.stringValue ?? "")")
            let inbox = try await vt.request(.GET, "/v1/inbox")
            let items = inbox.json?["items"]?.arrayValue ?? []
            say("Veilig Thuis reads its inbox → \(items.count) item(s): " + items.map { "\($0["purpose"]?.stringValue ?? "") from \($0["sender"]?.stringValue ?? "") (\($0["basis"]?.stringValue ?? ""))" }.joined(separator: "; "))
            if let first = items.first?["id"]?.stringValue {
                let ack = try await vt.request(.POST, "/v1/inbox/\(first)/ack")
                say("and acknowledges the first → \(ack.status); its payload is erased from the gateway")
            }
            say("done. The log: `ketenpoort log query --db <demo dir>/ketenpoort.db`; the review queue: GET /v1/reviews with an officer certificate.")
        } catch {
            announce("scenario: stopped: \(error)")
        }
        try? await group.shutdownGracefully()
    }

    static func list(_ value: JSONValue?) -> String {
        let items = value?.arrayValue?.compactMap(\.stringValue) ?? []
        return items.isEmpty ? "nothing" : items.joined(separator: ", ")
    }
}
