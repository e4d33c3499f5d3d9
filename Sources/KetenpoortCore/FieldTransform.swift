/// What happens to one field of an exchange on its way to the recipient.
///
/// Shared vocabulary between the policy engine (which decides the transform per
/// `category.field`) and the privacy layer (which applies it in one pass over the data tree).
public enum FieldTransform: Sendable, Hashable {
    /// Released as sent.
    case keep
    /// Replaced by a keyed pseudonym (HMAC-SHA256) in the named domain.
    case pseudonymise(domain: String)
    /// Replaced by a reversible token (AES-SIV) in the named domain; only the gateway re-identifies.
    case token(domain: String)
    /// Generalised to a coarser value.
    case generalise(Generalisation)
    /// Removed (withheld).
    case drop

    public enum Generalisation: String, Sendable, Hashable, CaseIterable {
        /// A date (YYYY-MM-DD) to its year.
        case year
        /// A date to year and month.
        case yearMonth = "year_month"
        /// A Dutch postcode (1234 AB) to its four digits.
        case postcode4 = "postcode4"
        /// A birth date to an age band (0-3, 4-11, 12-15, 16-17, 18-26, 27-64, 65+) on the decision date.
        case ageBand = "age_band"
    }
}
