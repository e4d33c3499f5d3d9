import Foundation
import KetenpoortCore

#if canImport(Glibc)
import Glibc
#endif

/// A partner to issue a certificate for: its id, name, and OIN (the subject serialNumber).
public struct PKIPartner: Sendable {
    public var id: String
    public var name: String
    public var oin: String
    public init(id: String, name: String, oin: String) {
        self.id = id
        self.name = name
        self.oin = oin
    }
}

/// A privacy officer or information manager: id, name, and the serial number in the certificate.
public struct PKIOfficer: Sendable {
    public var id: String
    public var name: String
    public var serialNumber: String
    public init(id: String, name: String, serialNumber: String) {
        self.id = id
        self.name = name
        self.serialNumber = serialNumber
    }
}

/// A development PKI shaped like PKIoverheid's: a root, an issuing intermediate, and leaves
/// under it that carry the OIN in the subject's serialNumber. Made with the `openssl` CLI
/// (`openssl ca` keeps the issuing database, so certificates can be revoked and CRLs issued).
///
/// Never for production: the keys are unencrypted files. `Certs/README.md` says how production
/// uses PKIoverheid certificates instead.
public struct DevelopmentPKI: Sendable {
    public enum KeyType: String, Sendable, CaseIterable {
        case ecdsaP256 = "ecdsa-p256"
        case rsa3072 = "rsa3072"
    }

    /// The gateway's own client identity (push delivery).
    public static let gatewayOIN = "00000009900000000001"
    /// The OIN of the `invalid/unknown-oin` certificate: valid, but registered nowhere.
    public static let unknownOIN = "00000009900000099999"
    /// The password of the officers' PKCS#12 bundles (for a browser; development only).
    public static let pkcs12Password = "ketenpoort-dev"

    public let directory: String
    public let keyType: KeyType
    public let openssl: String

    public init(directory: String, keyType: KeyType = .ecdsaP256, openssl: String = "/usr/bin/openssl") {
        self.directory = directory
        self.keyType = keyType
        self.openssl = openssl
    }

    /// Creates the whole PKI in ``directory``. Refuses a non-empty directory unless `force`.
    public func create(partners: [PKIPartner], officers: [PKIOfficer], force: Bool = false, now: Date = Date()) throws {
        let fm = FileManager.default
        guard fm.isExecutableFile(atPath: openssl) else {
            throw KetenpoortError(.configuration, "`\(openssl)` not found: install the `openssl` package")
        }
        if fm.fileExists(atPath: directory) {
            let contents = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
            if !contents.isEmpty {
                guard force else {
                    throw KetenpoortError(.invalidInput, "directory `\(directory)` is not empty: choose another or pass --force")
                }
                for entry in contents { try fm.removeItem(atPath: (directory as NSString).appendingPathComponent(entry)) }
            }
        }
        for sub in ["", "gateway", "partners", "officers", "invalid", ".ca/root/newcerts", ".ca/intermediate/newcerts", ".ca/requests"] {
            try fm.createDirectory(atPath: path(sub), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        for ca in ["root", "intermediate"] {
            try write("", to: path(".ca/\(ca)/index.txt"))
            try write("1000\n", to: path(".ca/\(ca)/crlnumber"))
        }
        try write(opensslConfiguration(), to: path(".ca/openssl.cnf"))

        // Root and intermediate.
        try generateKey(path("ca.key"))
        try run([
            "req", "-x509", "-new", "-key", path("ca.key"), "-config", path(".ca/openssl.cnf"), "-extensions", "v3_root",
            "-subj", "/C=NL/O=Ketenpoort development/CN=Ketenpoort Development Root CA", "-days", "3650", "-sha256", "-out", path("ca.crt"),
        ])
        try generateKey(path("intermediate.key"))
        try request(key: path("intermediate.key"), subject: "/C=NL/O=Ketenpoort development/CN=Ketenpoort Development Private Services CA", name: "intermediate")
        try sign(ca: "root_ca", request: "intermediate", extensions: "v3_intermediate", out: path("intermediate.crt"),
                 start: now.addingTimeInterval(-3600), end: now.addingTimeInterval(3650 * 86400), appendIntermediate: false)

        let yearFromNow = now.addingTimeInterval(365 * 86400)
        let hourAgo = now.addingTimeInterval(-3600)
        // The gateway: a server certificate and a client certificate.
        try leaf(name: "gateway/server", subject: "/C=NL/O=Ketenpoort development/CN=localhost", extensions: "server_leaf", start: hourAgo, end: yearFromNow)
        try leaf(name: "gateway/client", subject: "/C=NL/O=Ketenpoort development/CN=ketenpoort-gateway/serialNumber=\(Self.gatewayOIN)",
                 extensions: "client_leaf", start: hourAgo, end: yearFromNow)
        for partner in partners {
            try leaf(name: "partners/\(partner.id)", subject: "/C=NL/O=\(escape(partner.name))/CN=\(escape(partner.id))/serialNumber=\(partner.oin)",
                     extensions: "client_leaf", start: hourAgo, end: yearFromNow)
        }
        for officer in officers {
            try leaf(name: "officers/\(officer.id)", subject: "/C=NL/O=Ketenpoort development/CN=\(escape(officer.id))/serialNumber=\(officer.serialNumber)",
                     extensions: "client_leaf", start: hourAgo, end: yearFromNow)
            try run([
                "pkcs12", "-export", "-in", path("officers/\(officer.id).crt"), "-inkey", path("officers/\(officer.id).key"),
                "-name", officer.id, "-out", path("officers/\(officer.id).p12"), "-passout", "pass:\(Self.pkcs12Password)",
            ], privateOutput: true)
        }

        // Certificates a gateway must refuse.
        let someone = partners.first ?? PKIPartner(id: "wijkteam-test", name: "Test", oin: "00000009900000000100")
        let subject = "/C=NL/O=\(escape(someone.name))/CN=\(escape(someone.id))/serialNumber=\(someone.oin)"
        try leaf(name: "invalid/expired", subject: subject, extensions: "client_leaf",
                 start: now.addingTimeInterval(-60 * 86400), end: now.addingTimeInterval(-86400))
        try leaf(name: "invalid/not-yet-valid", subject: subject, extensions: "client_leaf",
                 start: now.addingTimeInterval(30 * 86400), end: now.addingTimeInterval(395 * 86400))
        try leaf(name: "invalid/revoked", subject: subject, extensions: "client_leaf", start: hourAgo, end: yearFromNow)
        try leaf(name: "invalid/server-auth-only", subject: subject, extensions: "server_only_leaf", start: hourAgo, end: yearFromNow)
        try leaf(name: "invalid/unknown-oin", subject: "/C=NL/O=Onbekende organisatie/CN=unknown/serialNumber=\(Self.unknownOIN)",
                 extensions: "client_leaf", start: hourAgo, end: yearFromNow)
        try foreignLeaf(subject: subject, now: now)

        // Revoke, then issue both CRLs.
        try run(["ca", "-config", path(".ca/openssl.cnf"), "-name", "intermediate_ca", "-revoke", path(".ca/requests/invalid-revoked.pem"),
                 "-crl_reason", "keyCompromise", "-batch"])
        try issueCRLs()
        try write(readme(partners: partners, officers: officers), to: path("README.txt"))
    }

    /// Issues fresh CRLs of the root and the intermediate into `crl.pem` (next update in 30
    /// days): a PKI kept between demo runs would otherwise refuse every client once they expire.
    public func issueCRLs() throws {
        try run(["ca", "-config", path(".ca/openssl.cnf"), "-name", "root_ca", "-gencrl", "-out", path(".ca/root.crl"), "-batch"])
        try run(["ca", "-config", path(".ca/openssl.cnf"), "-name", "intermediate_ca", "-gencrl", "-out", path(".ca/intermediate.crl"), "-batch"])
        let crls = try String(contentsOfFile: path(".ca/root.crl"), encoding: .utf8) + String(contentsOfFile: path(".ca/intermediate.crl"), encoding: .utf8)
        try write(crls, to: path("crl.pem"))
    }

    // MARK: Steps

    func path(_ relative: String) -> String {
        relative.isEmpty ? directory : (directory as NSString).appendingPathComponent(relative)
    }

    private func generateKey(_ file: String) throws {
        switch keyType {
        case .ecdsaP256:
            try run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file], privateOutput: true)
        case .rsa3072:
            try run(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", file], privateOutput: true)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
    }

    private func request(key: String, subject: String, name: String) throws {
        try run(["req", "-new", "-key", key, "-subj", subject, "-utf8", "-config", path(".ca/openssl.cnf"), "-out", path(".ca/requests/\(name).csr")])
    }

    private func sign(ca: String, request name: String, extensions: String, out: String, start: Date, end: Date, appendIntermediate: Bool) throws {
        let leafOnly = path(".ca/requests/\(name).pem")
        try run([
            "ca", "-config", path(".ca/openssl.cnf"), "-name", ca, "-extensions", extensions, "-in", path(".ca/requests/\(name).csr"),
            "-out", leafOnly, "-notext", "-batch", "-utf8", "-startdate", Self.generalizedTime(start), "-enddate", Self.generalizedTime(end),
        ])
        var pem = try String(contentsOfFile: leafOnly, encoding: .utf8)
        if appendIntermediate { pem += try String(contentsOfFile: path("intermediate.crt"), encoding: .utf8) }
        try write(pem, to: out)
    }

    private func leaf(name: String, subject: String, extensions: String, start: Date, end: Date) throws {
        let requestName = name.replacingOccurrences(of: "/", with: "-")
        try generateKey(path("\(name).key"))
        try request(key: path("\(name).key"), subject: subject, name: requestName)
        try sign(ca: "intermediate_ca", request: requestName, extensions: extensions, out: path("\(name).crt"), start: start, end: end, appendIntermediate: true)
    }

    /// A certificate from another root that the gateway does not trust (its chain included).
    private func foreignLeaf(subject: String, now: Date) throws {
        let root = path(".ca/foreign-root")
        try generateKey(root + ".key")
        try run([
            "req", "-x509", "-new", "-key", root + ".key", "-config", path(".ca/openssl.cnf"), "-extensions", "v3_root",
            "-subj", "/C=NL/O=Elsewhere/CN=Foreign Root CA", "-days", "3650", "-out", root + ".crt",
        ])
        try generateKey(path("invalid/foreign-ca.key"))
        try request(key: path("invalid/foreign-ca.key"), subject: subject, name: "invalid-foreign-ca")
        try run([
            "x509", "-req", "-in", path(".ca/requests/invalid-foreign-ca.csr"), "-CA", root + ".crt", "-CAkey", root + ".key",
            "-set_serial", "4242", "-days", "365", "-extfile", path(".ca/openssl.cnf"), "-extensions", "client_leaf_foreign",
            "-out", path(".ca/requests/invalid-foreign-ca.pem"),
        ])
        let pem = try String(contentsOfFile: path(".ca/requests/invalid-foreign-ca.pem"), encoding: .utf8)
            + String(contentsOfFile: root + ".crt", encoding: .utf8)
        try write(pem, to: path("invalid/foreign-ca.crt"))
        try FileManager.default.removeItem(atPath: root + ".key")
    }

    static func generalizedTime(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMddHHmmss'Z'"
        return formatter.string(from: date)
    }

    private func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "/", with: "\\/").replacingOccurrences(of: "=", with: "\\=")
    }

    private func write(_ text: String, to file: String) throws {
        do {
            try text.write(toFile: file, atomically: true, encoding: .utf8)
        } catch {
            throw KetenpoortError(.fileUnreadable, "cannot write `\(file)`")
        }
    }

    /// Runs `openssl`; with `privateOutput`, under umask 077 so keys are 0600 from their creation.
    private func run(_ arguments: [String], privateOutput: Bool = false) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: openssl)
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        let previous = privateOutput ? umask(0o077) : umask(0o022)
        defer { umask(previous) }
        do {
            try process.run()
        } catch {
            throw KetenpoortError(.configuration, "cannot run `\(openssl)`")
        }
        let message = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let first = String(decoding: message, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
            throw KetenpoortError(.crypto, "openssl \(arguments.first ?? "") failed: \(first)")
        }
    }

    private func opensslConfiguration() -> String {
        let keyUsage = keyType == .rsa3072 ? "critical, digitalSignature, keyEncipherment" : "critical, digitalSignature"
        func caSection(_ name: String, certificate: String, key: String) -> String {
            """
            [ \(name) ]
            dir               = \(path(".ca/" + (name == "root_ca" ? "root" : "intermediate")))
            database          = $dir/index.txt
            new_certs_dir     = $dir/newcerts
            crlnumber         = $dir/crlnumber
            certificate       = \(certificate)
            private_key       = \(key)
            rand_serial       = yes
            default_md        = sha256
            default_crl_days  = 30
            crl_extensions    = crl_ext
            policy            = policy_any
            unique_subject    = no
            preserve          = yes
            email_in_dn       = no
            copy_extensions   = none

            """
        }
        return """
            # The development PKI's CA configuration, written by `ketenpoort pki init`. Not for production.
            [ req ]
            distinguished_name = req_dn
            string_mask        = utf8only
            [ req_dn ]

            [ ca ]
            default_ca = intermediate_ca

            """ + caSection("root_ca", certificate: path("ca.crt"), key: path("ca.key"))
            + caSection("intermediate_ca", certificate: path("intermediate.crt"), key: path("intermediate.key")) + """
            [ policy_any ]
            countryName            = optional
            organizationName       = optional
            commonName             = supplied
            serialNumber           = optional

            [ crl_ext ]
            authorityKeyIdentifier = keyid:always

            [ v3_root ]
            basicConstraints       = critical, CA:true
            keyUsage               = critical, keyCertSign, cRLSign
            subjectKeyIdentifier   = hash

            [ v3_intermediate ]
            basicConstraints       = critical, CA:true, pathlen:0
            keyUsage               = critical, keyCertSign, cRLSign
            subjectKeyIdentifier   = hash
            authorityKeyIdentifier = keyid:always

            [ client_leaf ]
            basicConstraints       = critical, CA:false
            keyUsage               = \(keyUsage)
            extendedKeyUsage       = clientAuth
            subjectKeyIdentifier   = hash
            authorityKeyIdentifier = keyid

            [ client_leaf_foreign ]
            basicConstraints       = critical, CA:false
            keyUsage               = \(keyUsage)
            extendedKeyUsage       = clientAuth

            [ server_leaf ]
            basicConstraints       = critical, CA:false
            keyUsage               = \(keyUsage)
            extendedKeyUsage       = serverAuth
            subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
            subjectKeyIdentifier   = hash
            authorityKeyIdentifier = keyid

            [ server_only_leaf ]
            basicConstraints       = critical, CA:false
            keyUsage               = \(keyUsage)
            extendedKeyUsage       = serverAuth
            subjectKeyIdentifier   = hash
            authorityKeyIdentifier = keyid

            """
    }

    private func readme(partners: [PKIPartner], officers: [PKIOfficer]) -> String {
        """
        Ketenpoort development PKI — NEVER use in production (unencrypted keys, a CA anyone here can use).
        Made by `ketenpoort pki init` with \(keyType.rawValue) keys. Production: see Certs/README.md (PKIoverheid).

        ca.crt, ca.key                     development root CA: the trust anchor (the gateway's `client_ca`)
        intermediate.crt, .key             issuing CA under the root, as PKIoverheid's TSP CAs are
        gateway/server.crt, .key           the gateway's server certificate (localhost, 127.0.0.1, ::1), then the intermediate
        gateway/client.crt, .key           the gateway's client certificate (push delivery, OIN \(Self.gatewayOIN))
        partners/<id>.crt, .key            \(partners.count) partners, the OIN in the subject's serialNumber, then the intermediate
        officers/<id>.crt, .key, .p12      \(officers.count) officers (PKCS#12 password `\(Self.pkcs12Password)`, for a browser)
        invalid/expired                    expired yesterday
        invalid/not-yet-valid              valid from 30 days from now
        invalid/revoked                    revoked in the intermediate's CRL
        invalid/server-auth-only           extendedKeyUsage serverAuth only
        invalid/unknown-oin                valid, with an OIN no partner has (\(Self.unknownOIN))
        invalid/foreign-ca                 issued by another, untrusted root (included)
        crl.pem                            the CRLs of the root and the intermediate (next update in 30 days)
        .ca/                               the issuing database of `openssl ca` (no keys)

        """
    }
}
