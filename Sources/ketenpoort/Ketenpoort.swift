import ArgumentParser
import Foundation
import KetenpoortCore

// The `ketenpoort` binary: argument parsing and wiring only; everything else lives in libraries.
// Exit codes (contract.md): 0 success; 1 a check found problems; 2 bad usage or bad input.

@main
struct KetenpoortMain {
    static func main() async {
        do {
            var command = try Ketenpoort.parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let error as KetenpoortError {
            FileHandle.standardError.write(Data("ketenpoort: error: \(error.message)\n".utf8))
            exit(CommandFailure.exitCode(for: error))
        } catch let error as CommandFailure {
            FileHandle.standardError.write(Data("ketenpoort: error: \(error.message)\n".utf8))
            exit(error.exitCode)
        } catch {
            let code = Ketenpoort.exitCode(for: error)
            if code == .success {
                print(Ketenpoort.fullMessage(for: error))
                exit(0)
            }
            if let exitCode = error as? ExitCode {
                exit(exitCode.rawValue)
            }
            let message = Ketenpoort.fullMessage(for: error)
            FileHandle.standardError.write(Data("ketenpoort: error: \(message)\n".utf8))
            exit(2)
        }
    }
}

struct Ketenpoort: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ketenpoort",
        abstract: "A privacy-aware data-exchange gateway for child and family protection.",
        subcommands: [Serve.self, Demo.self, PKI.self, Keys.self, PseudonymCLI.self, PolicyCommand.self, LogCommand.self, RouteMapCommand.self, Migrate.self, Backup.self, Bench.self])
}

/// A failure with a one-line message and an exit code.
struct CommandFailure: Error {
    let message: String
    let exitCode: Int32

    static func exitCode(for error: KetenpoortError) -> Int32 {
        // Bad input or configuration: 2. Anything else that went wrong at run time: 1.
        switch error.code {
        case .tls, .crypto, .internalError, .serviceUnavailable, .auditUnavailable, .signatureInvalid: return 1
        default: return 2
        }
    }
}

/// Prints a line to standard output immediately (the `ready:` line is read by scripts).
func announce(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
