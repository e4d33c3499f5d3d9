import Foundation

/// Notices changes in the policy directory by polling file names, sizes and modification times
/// (portable, and cheap for a few dozen files). A change is reported once the directory has been
/// stable for one interval, so a half-written set is not loaded.
struct PolicyDirectoryWatcher {
    let directory: String
    var interval: Duration = .seconds(2)

    func fingerprint() -> String {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { return "" }
        var parts: [String] = []
        while let name = enumerator.nextObject() as? String {
            let path = (directory as NSString).appendingPathComponent(name)
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { continue }
            let size = (attributes[.size] as? NSNumber)?.intValue ?? 0
            let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            parts.append("\(name)|\(size)|\(modified)")
        }
        return parts.sorted().joined(separator: "\n")
    }

    func watch(onChange: @Sendable () async -> Void) async {
        var last = fingerprint()
        var pending: String? = nil
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            let now = fingerprint()
            if now != last {
                if pending == now {
                    last = now
                    pending = nil
                    await onChange()
                } else {
                    pending = now
                }
            } else {
                pending = nil
            }
        }
    }
}
