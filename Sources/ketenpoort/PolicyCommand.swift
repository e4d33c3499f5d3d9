import ArgumentParser
import Foundation
import KetenpoortPolicy

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check, test and explain the declarative policies.",
        subcommands: [PolicyCheck.self, PolicyTest.self, PolicyExplain.self])
}

/// Prints a library command's output and exits with its code. Unreadable input (exit 2) is an
/// error like any other command's: one line on standard error.
func finish(_ output: PolicyCommands.Output) throws {
    if output.exitCode == 2 {
        throw CommandFailure(message: output.text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: "; "), exitCode: 2)
    }
    if !output.text.isEmpty { print(output.text) }
    if output.exitCode != 0 { throw ExitCode(output.exitCode) }
}

/// A policy directory that is not there is bad input (exit 2), not a policy with errors.
func requirePolicyDirectory(_ directory: String) throws {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
        throw CommandFailure(message: "policy directory `\(directory)` does not exist or is not a directory", exitCode: 2)
    }
}

struct PolicyCheck: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Validate all policies: `file:line:col: error: message`; exit 1 on errors.")
    @Argument(help: "The policy directory.") var directory: String
    func run() throws {
        try requirePolicyDirectory(directory)
        try finish(PolicyCommands.check(directory: directory))
    }
}

struct PolicyTest: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "test", abstract: "Run DIR/tests/*.yaml; ends with `N passed, M failed`; exit 1 on any failure.")
    @Argument(help: "The policy directory.") var directory: String
    func run() throws {
        try requirePolicyDirectory(directory)
        try finish(PolicyCommands.test(directory: directory))
    }
}

struct PolicyExplain: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "explain", abstract: "The decision for one request file and every rule consulted.")
    @Argument(help: "The policy directory.") var directory: String
    @Option(help: "A request file (YAML or JSON): sender, request, facts.") var request: String
    func run() throws {
        try requirePolicyDirectory(directory)
        try finish(PolicyCommands.explain(directory: directory, requestFile: request))
    }
}
