import KetenpoortCore
import KetenpoortCrypto
import KetenpoortPolicy

/// Re-identification of a token by the gateway: only where the policy permits it for that
/// partner and purpose, and never without a durable log record first (fail closed).
public struct Reidentification: Sendable {
    /// What is logged for every re-identification (no value in clear: the subject only as a
    /// log-domain pseudonym).
    public struct Record: Sendable, Equatable {
        public let caseTable: String
        public let partner: String
        public let purpose: String
        public let subjectPseudonym: String
        public let policyVersion: String
    }

    let tokeniser: Tokeniser
    let pseudonymiser: Pseudonymiser

    public init(keys: KeyRing) {
        tokeniser = Tokeniser(keys: keys)
        pseudonymiser = Pseudonymiser(keys: keys)
    }

    /// - Parameter log: writes the record durably; if it throws, nothing is re-identified.
    public func reidentify(
        token: String, caseTable: String, partner: String, purpose: String, policies: PolicySet, date: String, log: (Record) throws -> Void
    ) throws -> String {
        guard policies.permitsReidentification(caseTable: caseTable, partner: partner, purpose: purpose, on: date) else {
            throw KetenpoortError(.forbidden, "no route of this case table lets the gateway re-identify tokens for you for this purpose (today, as a member)")
        }
        let domain = Pseudonymiser.recipientDomain(caseTable: caseTable, recipient: partner)
        let value = try tokeniser.reidentify(token, domain: domain)
        let record = Record(
            caseTable: caseTable, partner: partner, purpose: purpose,
            subjectPseudonym: try pseudonymiser.pseudonym(of: value, domain: Pseudonymiser.logDomain), policyVersion: policies.version)
        do {
            try log(record)
        } catch {
            throw KetenpoortError(.auditUnavailable, "re-identification refused: the log record could not be written")
        }
        return value
    }
}
