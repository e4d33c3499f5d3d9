import ArgumentParser
import Foundation
import KetenpoortCore
import KetenpoortPKI
import KetenpoortPolicy

struct PKI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pki", abstract: "Development PKI (never for production).", subcommands: [PKIInit.self])
}

struct PKIInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a development PKI shaped like PKIoverheid's for the partners in a registry.")

    @Argument(help: "The directory to create (must be empty unless --force).") var directory: String
    @Option(help: "The partner registry.") var partners: String = "Policies/partners.yaml"
    @Option(help: "ecdsa-p256 (default) or rsa3072.") var keyType: String = "ecdsa-p256"
    @Flag(help: "Replace the contents of a non-empty directory.") var force = false

    func run() throws {
        guard let type = DevelopmentPKI.KeyType(rawValue: keyType) else {
            throw ValidationError("--key-type must be ecdsa-p256 or rsa3072")
        }
        let registry = try loadRegistry(partners)
        let pki = DevelopmentPKI(directory: directory, keyType: type)
        try pki.create(
            partners: registry.partners.map { PKIPartner(id: $0.id, name: $0.name, oin: $0.oin.value) },
            officers: registry.officers.map { PKIOfficer(id: $0.id, name: $0.name, serialNumber: $0.serialNumber) },
            force: force)
        print("development PKI written to \(directory): \(registry.partners.count) partners, \(registry.officers.count) officers (see \(directory)/README.txt)")
    }
}

func loadRegistry(_ path: String) throws -> PartnerRegistry {
    guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
        throw KetenpoortError(.fileUnreadable, "partner registry `\(path)` does not exist or cannot be read")
    }
    return try PartnerRegistry.parse(yaml: text, file: path)
}
