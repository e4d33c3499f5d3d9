import Foundation
import KetenpoortCore
import Testing

@testable import KetenpoortPKI

func openssl(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite("Development PKI", .serialized)
struct DevelopmentPKITests {
    static let directory: String = {
        let dir = NSTemporaryDirectory() + "pki-\(UUID().uuidString.prefix(6))"
        try! DevelopmentPKI(directory: dir).create(
            partners: [PKIPartner(id: "wijkteam-dordrecht", name: "Sociaal Wijkteam Dordrecht", oin: "00000009900000000101")],
            officers: [PKIOfficer(id: "privacy-officer-zhz", name: "FG", serialNumber: "00000009900000009001")])
        return dir
    }()

    func verify(_ cert: String, purpose: String = "sslclient") throws -> (Int32, String) {
        try openssl(["verify", "-CAfile", Self.directory + "/ca.crt", "-untrusted", Self.directory + "/intermediate.crt", "-crl_check_all",
                     "-CRLfile", Self.directory + "/crl.pem", "-purpose", purpose, Self.directory + "/" + cert])
    }

    @Test("good certificates verify against the root with the intermediate and the CRLs")
    func good() throws {
        #expect(try verify("partners/wijkteam-dordrecht.crt").0 == 0)
        #expect(try verify("officers/privacy-officer-zhz.crt").0 == 0)
        #expect(try verify("gateway/client.crt").0 == 0)
        #expect(try verify("gateway/server.crt", purpose: "sslserver").0 == 0)
        #expect(try verify("invalid/unknown-oin.crt").0 == 0)
    }

    @Test(
        "invalid certificates fail for their reason",
        arguments: [
            ("invalid/expired.crt", "certificate has expired"), ("invalid/not-yet-valid.crt", "not yet valid"),
            ("invalid/revoked.crt", "revoked"), ("invalid/foreign-ca.crt", "unable to get local issuer certificate"),
            ("invalid/server-auth-only.crt", "unsuitable certificate purpose"),
        ])
    func invalid(cert: String, reason: String) throws {
        let (status, output) = try verify(cert)
        #expect(status != 0)
        #expect(output.contains(reason), "\(output)")
    }

    @Test("the partner's OIN is its subject serialNumber; the file holds the certificate then the intermediate")
    func subject() throws {
        let (_, output) = try openssl(["x509", "-in", Self.directory + "/partners/wijkteam-dordrecht.crt", "-noout", "-subject", "-nameopt", "RFC2253"])
        #expect(output.contains("serialNumber=00000009900000000101"))
        let pem = try String(contentsOfFile: Self.directory + "/partners/wijkteam-dordrecht.crt", encoding: .utf8)
        #expect(pem.components(separatedBy: "BEGIN CERTIFICATE").count - 1 == 2)
    }

    @Test("keys are PKCS#8, mode 0600, and match their certificates")
    func keys() throws {
        for name in ["ca", "intermediate", "gateway/server", "partners/wijkteam-dordrecht", "officers/privacy-officer-zhz"] {
            let key = Self.directory + "/\(name).key"
            let text = try String(contentsOfFile: key, encoding: .utf8)
            #expect(text.hasPrefix("-----BEGIN PRIVATE KEY-----"))
            let mode = try FileManager.default.attributesOfItem(atPath: key)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(name).key has mode \(String(mode ?? 0, radix: 8))")
            let fromKey = try openssl(["pkey", "-in", key, "-pubout"]).1
            let fromCert = try openssl(["x509", "-in", Self.directory + "/\(name).crt", "-noout", "-pubkey"]).1
            #expect(fromKey == fromCert)
        }
        #expect(FileManager.default.fileExists(atPath: Self.directory + "/officers/privacy-officer-zhz.p12"))
    }

    @Test("a non-empty directory is refused without force")
    func nonEmpty() throws {
        #expect(throws: KetenpoortError.self) {
            try DevelopmentPKI(directory: Self.directory).create(partners: [], officers: [])
        }
    }

    @Test("RSA 3072 as an option")
    func rsa() throws {
        let dir = NSTemporaryDirectory() + "pki-rsa-\(UUID().uuidString.prefix(6))"
        try DevelopmentPKI(directory: dir, keyType: .rsa3072).create(partners: [], officers: [])
        let (_, output) = try openssl(["pkey", "-in", dir + "/gateway/server.key", "-noout", "-text"])
        #expect(output.contains("3072 bit"))
    }
}
