import ArgumentParser
import Foundation
import KetenpoortCore
import KetenpoortServer
import Logging

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway.",
        discussion: "Prints `ready: https://HOST:PORT` once it accepts connections. SIGHUP reloads certificates, CRLs and policies; SIGTERM shuts down gracefully.")

    @Option(help: "The configuration file (YAML).") var config: String
    @Option(help: "Override the main listener, HOST:PORT.") var listen: String?
    @Option(name: .customLong("ops-listen"), help: "Override the operations listener, HOST:PORT.") var opsListen: String?

    func run() async throws {
        var configuration = try GatewayConfiguration.load(path: config)
        if let listen { configuration.listen = try ListenAddress(parsing: listen, what: "--listen") }
        if let opsListen { configuration.operationsListen = try ListenAddress(parsing: opsListen, what: "--ops-listen") }
        try await runGateway(configuration)
    }
}

/// Starts the gateway with logging set up; shared by `serve` and `demo`.
func runGateway(_ configuration: GatewayConfiguration, afterReady: (@Sendable (GatewayAddresses) -> Void)? = nil) async throws {
    let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
    let logger = Logger(label: "ketenpoort")
    try await Gateway.run(configuration: configuration, logger: logger) { addresses in
        announce("ready: \(addresses.mainURL)")
        announce("operations: \(addresses.operationsURL)")
        if let officers = addresses.officers { announce("officers: https://\(officers.ipAddress ?? "127.0.0.1"):\(officers.port ?? 0)") }
        afterReady?(addresses)
    }
}
