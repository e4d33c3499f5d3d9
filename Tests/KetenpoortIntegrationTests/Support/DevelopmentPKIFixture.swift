import Foundation

/// One development PKI per test process, made by `ketenpoort pki init` from the example
/// region's partners. Tests that change files copy what they change.
enum PKIFixture {
    static let directory: String = {
        let dir = temporaryDirectory("ketenpoort-pki") + "/pki"
        let result = try! ketenpoort(["pki", "init", dir, "--partners", packageRoot + "/Policies/partners.yaml"])
        precondition(result.status == 0, "pki init failed: \(result.stderr)")
        return dir
    }()

    static func path(_ relative: String) -> String { directory + "/" + relative }

    /// A partner's certificate and key.
    static func partner(_ id: String) -> (cert: String, key: String) {
        (path("partners/\(id).crt"), path("partners/\(id).key"))
    }

    static func invalid(_ name: String) -> (cert: String, key: String) {
        (path("invalid/\(name).crt"), path("invalid/\(name).key"))
    }

    static func officer(_ id: String) -> (cert: String, key: String) {
        (path("officers/\(id).crt"), path("officers/\(id).key"))
    }

    /// Issues a new leaf from the development intermediate with the openssl CLI.
    static func issue(subject: String, extensions: String, into dir: String, name: String) throws -> (cert: String, key: String) {
        let key = dir + "/\(name).key"
        let csr = dir + "/\(name).csr"
        let cert = dir + "/\(name).crt"
        let ext = dir + "/\(name).ext"
        try write(extensions, to: ext)
        var r = try runProcess("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr, "-subj", subject])
        precondition(r.status == 0, r.stderr)
        r = try runProcess("openssl", [
            "x509", "-req", "-in", csr, "-CA", path("intermediate.crt"), "-CAkey", path("intermediate.key"), "-CAcreateserial",
            "-CAserial", dir + "/\(name).srl", "-out", cert, "-days", "30", "-extfile", ext,
        ])
        precondition(r.status == 0, r.stderr)
        let chain = try String(contentsOfFile: cert, encoding: .utf8) + String(contentsOfFile: path("intermediate.crt"), encoding: .utf8)
        try write(chain, to: cert)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: key)
        return (cert, key)
    }
}
