#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Checks on files that hold secrets (private keys, the master key).
public enum SecretFile {
    /// Refuses a file readable or writable by others, or writable by its group. Group read is
    /// allowed: container platforms mount secrets that way.
    public static func checkPermissions(path: String, what: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw KetenpoortError(.fileUnreadable, "\(what) `\(path)` does not exist or cannot be read")
        }
        let mode = info.st_mode & 0o777
        if mode & 0o007 != 0 || mode & 0o020 != 0 {
            let octal = String(mode, radix: 8)
            throw KetenpoortError(
                .insecureFilePermissions,
                "\(what) `\(path)` has mode \(octal): it must not be accessible by others or writable by its group (run `chmod 600 \(path)`)")
        }
    }

    /// Whether the file exists and the process can read it.
    public static func isReadable(_ path: String) -> Bool {
        access(path, R_OK) == 0
    }
}
