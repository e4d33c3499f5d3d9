import ArgumentParser
import Foundation
import KetenpoortPolicy

struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Check, test and explain the declarative policies.",
        subcommands: [PolicyCheck.self, PolicyTest.self, PolicyExplain.self])
}

/// Prints a library command's output and exits with its code.
func finish(_ output: PolicyCommands.Output) throws {
    if !output.text.isEmpty { print(output.text) }
    if output.exitCode != 0 { throw ExitCode(output.exitCode) }
}

struct PolicyCheck: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Validate all policies: `file:line:col: error: message`; exit 1 on errors.")
    @Argument(help: "The policy directory.") var directory: String
    func run() throws { try finish(PolicyCommands.check(directory: directory)) }
}

struct PolicyTest: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "test", abstract: "Run DIR/tests/*.yaml; ends with `N passed, M failed`; exit 1 on any failure.")
    @Argument(help: "The policy directory.") var directory: String
    func run() throws { try finish(PolicyCommands.test(directory: directory)) }
}

struct PolicyExplain: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "explain", abstract: "The decision for one request file and every rule consulted.")
    @Argument(help: "The policy directory.") var directory: String
    @Option(help: "A request file (YAML or JSON): sender, request, facts.") var request: String
    func run() throws { try finish(PolicyCommands.explain(directory: directory, requestFile: request)) }
}
