import Foundation
import KetenpoortStore

/// A real PostgreSQL server (Debian's `postgresql`) for the tests: a fresh cluster in a temporary
/// directory, password authentication (SCRAM) for the role `ketenpoort`, listening on a free
/// loopback port only, stopped by its PID. `initdb` refuses root: when the tests run as root the
/// server's programs run as the unprivileged `postgres` user (`runuser`).
final class PostgresServer: @unchecked Sendable {
    let directory: String
    let port: Int
    let passwordFile: String
    private(set) var pid: Int32 = 0
    private var process: Process?
    private static let password = "kp-test-\(UUID().uuidString.prefix(8))"

    /// The newest installed server's programs.
    static func binDirectory() throws -> String {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let version = versions.last, FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/initdb") else {
            throw GatewayProcessError(message: "PostgreSQL's server programs are not installed (`make test` installs Debian's postgresql)")
        }
        return "\(root)/\(version)/bin"
    }

    /// With `tls`, the server presents the development PKI's server certificate (`localhost`,
    /// 127.0.0.1) and accepts only TLS connections (`hostssl` in pg_hba.conf).
    let tls: Bool

    init(tls: Bool = false) throws {
        self.tls = tls
        let bin = try PostgresServer.binDirectory()
        directory = temporaryDirectory("ketenpoort-pg")
        let data = directory + "/data"
        let sockets = directory + "/run"
        passwordFile = directory + "/password"
        try write(PostgresServer.password, to: passwordFile, mode: 0o600)
        let serverPasswordFile = directory + "/server-password"
        try write(PostgresServer.password, to: serverPasswordFile, mode: 0o600)
        try FileManager.default.createDirectory(atPath: sockets, withIntermediateDirectories: true)
        port = try PostgresServer.freePort()
        let asRoot = getuid() == 0
        if asRoot {
            // The cluster's files belong to the unprivileged user that runs the server.
            FileManager.default.createFile(atPath: directory + "/server.log", contents: nil)
            _ = try runProcess("/bin/chown", ["-R", "postgres:postgres", directory])
            _ = try runProcess("/bin/chmod", ["0755", directory])
            _ = try runProcess("/bin/chown", ["root:root", passwordFile])
        }
        func run(_ program: String, _ arguments: [String]) throws -> ProcessResult {
            asRoot ? try runProcess("/sbin/runuser", ["-u", "postgres", "--", "\(bin)/\(program)"] + arguments) : try runProcess("\(bin)/\(program)", arguments)
        }
        let initdb = try run(
            "initdb", ["-D", data, "-U", "ketenpoort", "--auth=scram-sha-256", "--pwfile=\(serverPasswordFile)", "--no-sync", "-E", "UTF8", "--locale=C"])
        guard initdb.status == 0 else { throw GatewayProcessError(message: "initdb failed: \(initdb.stderr)") }
        if tls {
            // The server's key must belong to the server's user with mode 0600.
            try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.crt"), toPath: data + "/server.crt")
            try FileManager.default.copyItem(atPath: PKIFixture.path("gateway/server.key"), toPath: data + "/server.key")
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: data + "/server.key")
            if asRoot { _ = try runProcess("/bin/chown", ["postgres:postgres", data + "/server.crt", data + "/server.key"]) }
            let hba = try String(contentsOfFile: data + "/pg_hba.conf", encoding: .utf8)
            let tlsOnly = hba.split(separator: "\n", omittingEmptySubsequences: false).map { line in
                line.hasPrefix("host ") ? "hostssl" + line.dropFirst(4) : line
            }.joined(separator: "\n")
            try tlsOnly.write(toFile: data + "/pg_hba.conf", atomically: false, encoding: .utf8)
        }
        self.data = data
        self.sockets = sockets
        self.bin = bin
        self.asRoot = asRoot
        try start()
    }

    private let data: String
    private let sockets: String
    private let bin: String
    private let asRoot: Bool

    /// Starts the server on the cluster and port of this instance (again after `stop(keepingData:)`).
    func start() throws {
        // The server runs as a child of the test (not daemonised by pg_ctl: a daemon would keep
        // the test's process-watching descriptors open); `setpriv` execs it under the unprivileged
        // user, so the child's PID is the postmaster's.
        let postgres = Process()
        let serverArguments = [
            "-D", data, "-p", "\(port)", "-k", sockets, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=60", "-c", "shared_buffers=64MB",
        ] + (tls ? ["-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key", "-c", "ssl_min_protocol_version=TLSv1.2"] : [])
        if asRoot {
            postgres.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            postgres.arguments = ["--reuid=postgres", "--regid=postgres", "--clear-groups", "\(bin)/postgres"] + serverArguments
        } else {
            postgres.executableURL = URL(fileURLWithPath: "\(bin)/postgres")
            postgres.arguments = serverArguments
        }
        if !FileManager.default.fileExists(atPath: directory + "/server.log") {
            _ = FileManager.default.createFile(atPath: directory + "/server.log", contents: nil)
        }
        guard let log = FileHandle(forWritingAtPath: directory + "/server.log") else {
            throw GatewayProcessError(message: "the server log cannot be written in \(directory)")
        }
        log.seekToEndOfFile()
        postgres.standardOutput = log
        postgres.standardError = log
        postgres.standardInput = FileHandle.nullDevice
        try postgres.run()
        process = postgres
        pid = postgres.processIdentifier
        // Ready once it accepts a login.
        let deadline = Date().addingTimeInterval(60)
        while true {
            if (try? PostgresDatabase(settings: PostgresSettings(url: url(), passwordFile: passwordFile))) != nil {
                break
            }
            guard postgres.isRunning, Date() < deadline else {
                let text = (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? ""
                stop(keepingData: true)
                throw GatewayProcessError(message: "PostgreSQL did not start: \(text.suffix(2_000))")
            }
            usleep(100_000)
        }
    }

    /// A URL for one database (no password in it: that comes from `passwordFile`).
    func url(_ database: String = "postgres") -> String {
        tls
            ? "postgresql://ketenpoort@localhost:\(port)/\(database)?sslmode=verify-full&sslrootcert=\(PKIFixture.path("ca.crt"))"
            : "postgresql://ketenpoort@127.0.0.1:\(port)/\(database)?sslmode=disable"
    }

    func settings(_ database: String = "postgres") -> PostgresSettings { PostgresSettings(url: url(database), passwordFile: passwordFile) }

    /// Runs the `ketenpoort` command with this server's password file (as operators do).
    func ketenpoort(_ arguments: [String]) throws -> ProcessResult {
        try KetenpoortIntegrationTests.ketenpoort(arguments, environment: ["KETENPOORT_DATABASE_PASSWORD_FILE": passwordFile])
    }

    /// Creates an empty database and returns its URL.
    @discardableResult
    func createDatabase(_ name: String) throws -> String {
        let admin = try PostgresDatabase(settings: settings())
        try admin.execute("CREATE DATABASE \(name)")
        return url(name)
    }

    /// Fast shutdown by PID (SIGINT), waiting until the postmaster is gone; the cluster's files
    /// are removed unless kept for a restart.
    func stop(keepingData: Bool = false) {
        defer { if !keepingData { try? FileManager.default.removeItem(atPath: directory) } }
        guard pid > 0 else { return }
        kill(pid, SIGINT)
        let deadline = Date().addingTimeInterval(30)
        while process?.isRunning == true && Date() < deadline { usleep(50_000) }
        if process?.isRunning == true {
            kill(pid, SIGKILL)
            process?.waitUntilExit()
        }
        pid = 0
    }

    deinit { stop() }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw GatewayProcessError(message: "no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
