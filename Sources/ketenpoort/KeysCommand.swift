import ArgumentParser
import Foundation
import KetenpoortCore
import KetenpoortCrypto

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "Master keys for pseudonyms, tokens and encryption at rest.",
        subcommands: [KeysInit.self, KeysRotate.self])
}

struct KeysInit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Create a new master key file (32 random bytes, mode 0600).")
    @Argument(help: "The key file to create (refused if it exists).") var file: String
    func run() throws {
        try MasterKeyFile.create(path: file)
        print("master key file written to \(file) (mode 0600, key id k1)")
    }
}

struct KeysRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate", abstract: "Add a new key that becomes current; older keys stay to recognise and re-identify.")
    @Argument(help: "The key file.") var file: String
    func run() throws {
        let id = try MasterKeyFile.rotate(path: file)
        print("new current key \(id) in \(file); restart the gateway to use it (SIGHUP reloads TLS and policies, not keys)")
    }
}

struct PseudonymCLI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pseudonym",
        abstract: "Read BSNs from standard input, one a line; print one pseudonym a line, in order.",
        discussion: "A BSN never goes on the command line. Domains: `log`, or `recipient:<case table>:<recipient id>`.")
    @Option(help: "The master key file.") var keys: String?
    @Option(help: "The pseudonym domain.") var domain: String

    func validate() throws {
        guard domain == "log" || (domain.hasPrefix("recipient:") && domain.split(separator: ":").count == 3) else {
            throw ValidationError("--domain must be `log` or `recipient:<case table>:<recipient id>`")
        }
    }

    func run() throws {
        let ring = try KeyRing.load(path: try MasterKeySource.resolve(path: keys))
        var lines: [String] = []
        while let line = readLine() { lines.append(line) }
        let out = try PseudonymCommand.run(lines: lines, keys: ring, domain: domain)
        print(out.joined(separator: "\n"))
    }
}
