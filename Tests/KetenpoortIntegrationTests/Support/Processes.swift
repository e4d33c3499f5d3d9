import Foundation
import Synchronization

/// The built `ketenpoort` binary: `$KETENPOORT_BIN`, else beside the test bundle, else `.build/debug`.
let ketenpoortBinary: String = {
    if let path = ProcessInfo.processInfo.environment["KETENPOORT_BIN"] { return path }
    let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("ketenpoort").path
    if FileManager.default.isExecutableFile(atPath: beside) { return beside }
    let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    return packageRoot.appendingPathComponent(".build/debug/ketenpoort").path
}()

/// The repository root (for `Policies/`).
let packageRoot: String = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion with optional standard input.
@discardableResult
func runProcess(_ executable: String, _ arguments: [String], stdin: String? = nil, environment: [String: String]? = nil, timeout: Double = 120) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
    process.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    }
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    // Collect output as it comes. Reading to end-of-file could wait for ever: a process started
    // at the same moment by another test can inherit the pipes' write ends.
    let outData = DataBuffer()
    let errData = DataBuffer()
    out.fileHandleForReading.readabilityHandler = { outData.append($0.availableData) }
    err.fileHandleForReading.readabilityHandler = { errData.append($0.availableData) }
    let exited = DispatchSemaphore(value: 0)
    process.terminationHandler = { _ in exited.signal() }
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try? input.fileHandleForWriting.close()
    if exited.wait(timeout: .now() + timeout) == .timedOut {
        process.terminate()
        exited.wait()
    }
    out.fileHandleForReading.readabilityHandler = nil
    err.fileHandleForReading.readabilityHandler = nil
    // What the process wrote before it exited is in the pipe: drain it without blocking.
    outData.append(drainWithoutBlocking(out.fileHandleForReading))
    errData.append(drainWithoutBlocking(err.fileHandleForReading))
    return ProcessResult(
        status: process.terminationStatus,
        stdout: String(decoding: outData.value, as: UTF8.self),
        stderr: String(decoding: errData.value, as: UTF8.self))
}

/// Bytes collected from another thread.
final class DataBuffer: Sendable {
    private let data = Mutex(Data())
    func append(_ more: Data) { if !more.isEmpty { data.withLock { $0.append(more) } } }
    var value: Data { data.withLock { $0 } }
}

/// Reads what is buffered in a pipe now, without waiting for its end.
func drainWithoutBlocking(_ handle: FileHandle) -> Data {
    let fd = handle.fileDescriptor
    let flags = fcntl(fd, F_GETFL)
    _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    var result = Data()
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        result.append(contentsOf: buffer[0..<n])
    }
    return result
}

/// Runs `ketenpoort ARGS`.
@discardableResult
func ketenpoort(_ arguments: [String], stdin: String? = nil, environment: [String: String]? = nil) throws -> ProcessResult {
    try runProcess(ketenpoortBinary, arguments, stdin: stdin, environment: environment)
}

/// A fresh temporary directory (removed by the caller when wanted).
func temporaryDirectory(_ prefix: String = "ketenpoort-test") -> String {
    let path = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString.prefix(8))"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func write(_ text: String, to path: String, mode: Int = 0o644) throws {
    try text.write(toFile: path, atomically: false, encoding: .utf8)
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
}
