/// The closed vocabularies of the policy language (from `docs/policy-language.md`).
public enum Vocabulary {
    /// Data categories and the fields each may carry.
    public static let fields: [String: Set<String>] = [
        "identity": ["bsn", "name", "birthDate", "gender", "address", "postcode", "phone"],
        "contact": ["phone", "email", "contactPerson", "organisation"],
        "household": ["members", "composition", "custody"],
        "concern_signal": ["summary", "reporter", "reporterRole", "date", "meldcodeSteps", "severity"],
        "safety_assessment": ["summary", "level", "date"],
        "safety_plan": ["summary", "agreements", "date"],
        "steps_taken": ["steps", "date"],
        "health": ["summary", "inTreatment", "riskConclusion", "diagnosis", "treatment"],
        "criminal": ["incident", "incidentDate", "record"],
        "child_protection_measure": ["measure", "institution", "since", "until"],
        "restraining_order": ["order", "since", "until"],
        "court_injunction": ["injunction", "since"],
        "livelihood": ["housing", "income", "debts"],
        "school": ["school", "attendance"],
        "location_protected": ["shelter", "address", "postcode", "school", "gp", "safelyHoused"],
        "referral": ["reason", "processDirector"],
        "known_check": ["known", "contactPerson"],
    ]

    /// GDPR art. 9 special categories.
    public static let specialCategories: Set<String> = ["health"]
    /// GDPR art. 10 / UAVG criminal data (a suspicion of violence is often a suspected offence;
    /// civil injunctions count as criminal data in the UAVG).
    public static let criminalCategories: Set<String> = ["criminal", "concern_signal", "restraining_order", "court_injunction"]

    /// GDPR art. 6(1) bases as W3C DPV terms.
    public static let lawfulBases: [String: String] = [
        "legal-obligation": "dpv:LegalObligation",
        "public-task": "dpv:PublicTask",
        "vital-interest": "dpv:VitalInterest",
        "consent": "dpv:Consent",
        "contract": "dpv:Contract",
        "legitimate-interest": "dpv:LegitimateInterest",
    ]

    /// Grounds to break professional secrecy.
    public static let grounds: Set<String> = ["consent", "wmo-5.2.6", "bw-1.240", "jw-7.3.11-4", "conflict-of-duties", "statutory"]
    /// The non-consent grounds used when someone is unsafe: every use is reviewed afterwards.
    public static let safetyExceptionGrounds: Set<String> = ["wmo-5.2.6", "bw-1.240", "jw-7.3.11-4", "conflict-of-duties"]
    /// Statutory grounds bound to one kind of recipient.
    public static let groundRecipientKind: [String: String] = [
        "wmo-5.2.6": "veilig_thuis",
        "bw-1.240": "child_protection_board",
        "jw-7.3.11-4": "certified_institution",
    ]

    /// Conditions a route may require of the case facts.
    public static let conditions: Set<String> = [
        "supervision_order_active", "supervision_order_by_recipient", "vt_investigation_open", "no_vt_investigation",
    ]

    /// Facts computed per decision that forbid rules may test.
    public static let forbidFacts: Set<String> = [
        "case_closed", "sender_not_member", "recipient_not_member", "statutory_ground_wrong_recipient",
        "safety_exception_incomplete", "bulk", "location_may_reach_kept_apart", "bystander_reporter_without_consent",
        "reporter_protected", "consent_without_capacity",
    ]

    /// Field transforms by name.
    public static let transforms: Set<String> = ["keep", "drop", "pseudonymise", "token", "year", "year_month", "postcode4", "age_band"]

    /// Consent grantor capacities.
    public static let grantors: Set<String> = ["self", "parent_with_custody", "parent_without_custody", "guardian", "representative"]
}
