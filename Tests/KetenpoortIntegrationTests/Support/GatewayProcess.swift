import Foundation
import KetenpoortCrypto
import Synchronization

/// A gateway started as a real process on free loopback ports, stopped by its PID.
final class GatewayProcess: @unchecked Sendable {
    let process: Process
    let directory: String
    let configPath: String
    private(set) var port = 0
    private(set) var operationsPort = 0
    private let output = TextBuffer()
    private let errors = TextBuffer()

    /// Writes a configuration (the development PKI, `Policies/`, ports chosen by the kernel) with
    /// `extra` YAML appended, and starts `ketenpoort serve`.
    convenience init(extraConfiguration: String = "", tlsSection: String? = nil, policies: String? = nil) throws {
        let directory = temporaryDirectory("ketenpoort-gateway")
        let configPath = directory + "/gateway.yaml"
        try MasterKeyFile.create(path: directory + "/keys")
        try write(
            GatewayProcess.configuration(
                database: directory + "/ketenpoort.db", keys: directory + "/keys", policies: policies, tlsSection: tlsSection, extra: extraConfiguration),
            to: configPath)
        try self.init(directory: directory, configPath: configPath, arguments: ["serve", "--config", configPath])
    }

    /// A test gateway's configuration: loopback on ports the kernel chooses, the development PKI
    /// (with its CRL unless `tlsSection` replaces it), `Policies/` unless `policies` is given,
    /// then `extra` YAML.
    static func configuration(database: String, keys: String, policies: String? = nil, tlsSection: String? = nil, extra: String = "") -> String {
        let tls = tlsSection ?? """
            tls:
              certificate: \(PKIFixture.path("gateway/server.crt"))
              key: \(PKIFixture.path("gateway/server.key"))
              client_ca: \(PKIFixture.path("ca.crt"))
              crl: \(PKIFixture.path("crl.pem"))
            """
        return """
            listen: 127.0.0.1:0
            ops_listen: 127.0.0.1:0
            event_loop_threads: 1
            log_level: notice
            policies: \(policies ?? packageRoot + "/Policies")
            database: \(database)
            keys: \(keys)
            \(tls)
            \(extra)
            """
    }

    /// Starts `ketenpoort ARGUMENTS` (serve or demo) and waits for its `ready:` and
    /// `operations:` lines.
    init(directory: String, configPath: String, arguments: [String], environment: [String: String] = [:]) throws {
        self.directory = directory
        self.configPath = configPath
        process = Process()
        process.executableURL = URL(fileURLWithPath: ketenpoortBinary)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let ready = DispatchSemaphore(value: 0)
        out.fileHandleForReading.readabilityHandler = { [output] handle in
            let data = handle.availableData
            if data.isEmpty { return }
            let text = String(decoding: data, as: UTF8.self)
            output.append(text)
            if output.value.contains("operations: ") { ready.signal() }
        }
        err.fileHandleForReading.readabilityHandler = { [errors] handle in
            let data = handle.availableData
            if !data.isEmpty { errors.append(String(decoding: data, as: UTF8.self)) }
        }
        process.terminationHandler = { _ in ready.signal() }
        try process.run()
        guard ready.wait(timeout: .now() + 60) == .success, process.isRunning || output.value.contains("operations: ") else {
            process.terminate()
            throw GatewayProcessError(message: "gateway did not become ready: \(errors.value)")
        }
        let text = output.value
        port = GatewayProcess.port(in: text, after: "ready: https://127.0.0.1:")
        operationsPort = GatewayProcess.port(in: text, after: "operations: http://127.0.0.1:")
    }

    static func port(in text: String, after prefix: String) -> Int {
        guard let range = text.range(of: prefix) else { return 0 }
        return Int(text[range.upperBound...].prefix(while: { $0.isNumber })) ?? 0
    }

    var pid: Int32 { process.processIdentifier }
    var stderr: String { errors.value }
    var stdout: String { output.value }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop(timeout: Double = 30) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Text collected from a pipe on another thread.
final class TextBuffer: Sendable {
    private let text = Mutex("")
    func append(_ more: String) { text.withLock { $0 += more } }
    var value: String { text.withLock { $0 } }
}

struct GatewayProcessError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// The example region's policies, copied, with mental-health care (ggz-zhz) still a member of
/// the local table. It left on 2026-06-30, and only a member gets tokens of its route
/// re-identified: tests that re-identify today use this copy.
func policiesWithMentalHealthCareStillAMember() throws -> String {
    let dir = temporaryDirectory("ketenpoort-policies-ggz")
    let ended = "{ partner: ggz-zhz, since: 2024-01-01, until: 2026-06-30 }"
    for name in try FileManager.default.contentsOfDirectory(atPath: packageRoot + "/Policies") where name.hasSuffix(".yaml") || name.hasSuffix(".json") {
        var text = try String(contentsOfFile: packageRoot + "/Policies/" + name, encoding: .utf8)
        if name == "lokaal-dordrecht.yaml" {
            guard text.contains(ended) else { throw GatewayProcessError(message: "lokaal-dordrecht.yaml no longer says `\(ended)`") }
            text = text.replacingOccurrences(of: ended, with: "{ partner: ggz-zhz, since: 2024-01-01 }")
        }
        try write(text, to: dir + "/" + name)
    }
    return dir
}

/// A plain TCP connection to 127.0.0.1 that sends nothing: for limits and idle timeouts.
final class IdleTCPConnection {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else {
            close(fd)
            throw GatewayProcessError(message: "cannot connect to port \(port)")
        }
    }

    /// Whether the server closed the connection within `seconds` (it sends nothing itself).
    func closedByServer(within seconds: Double) -> Bool {
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) == 0
    }

    deinit { close(fd) }
}

/// A GET/POST over plain HTTP to the operations listener.
func operationsGet(port: Int, path: String) throws -> (status: Int, body: String) {
    let r = try runProcess("curl", ["-s", "-o", "-", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"])
    let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false)
    let status = Int(lines.last ?? "") ?? 0
    return (status, lines.dropLast().joined(separator: "\n"))
}

extension GatewayProcess {
    /// Whether the operations listener's /metrics comes to contain `series` within 5 s (polled
    /// every 100 ms): for effects that follow a signal, such as a reload.
    func metricsEventuallyContain(_ series: String) async throws -> Bool {
        for _ in 0..<50 {
            if try operationsGet(port: operationsPort, path: "/metrics").body.contains(series) { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return false
    }
}

/// Which of `texts` stand in clear in a SQLite database's files (the database, its WAL and its
/// shared memory): what no personal value may do.
func textsInDatabase(_ path: String, _ texts: [String]) -> [String] {
    let files = ["", "-wal", "-shm"].compactMap { FileManager.default.contents(atPath: path + $0) }
    return texts.filter { text in files.contains { $0.range(of: Data(text.utf8)) != nil } }
}
