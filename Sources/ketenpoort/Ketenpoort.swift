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
            FileHandle.standardError.write(Data("ketenpoort: error: \(KetenpoortMain.oneLine(error))\n".utf8))
            exit(2)
        }
    }
}

extension KetenpoortMain {
    /// The error as one line (cli.md): the argument parser's message and where its help is, or
    /// a file error as the path and what the system said; never a dump of an error value.
    static func oneLine(_ error: Error) -> String {
        let ns = error as NSError
        if ns.domain == NSCocoaErrorDomain {
            let path = ns.userInfo[NSFilePathErrorKey] as? String ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path ?? "the file"
            let reason = (ns.userInfo[NSUnderlyingErrorKey] as? NSError).map { String(cString: strerror(Int32($0.code))) } ?? ns.localizedDescription
            return "cannot write or read `\(path)`: \(reason)"
        }
        var message = Ketenpoort.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        if message.hasPrefix("Error: ") { message.removeFirst("Error: ".count) }
        // "See 'ketenpoort log prove --help' for more information." in the full text names the command.
        let full = Ketenpoort.fullMessage(for: error)
        if let start = full.range(of: "See '"), let end = full[start.upperBound...].range(of: "'") {
            message += " (see `\(full[start.upperBound..<end.lowerBound])`)"
        }
        return message
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
