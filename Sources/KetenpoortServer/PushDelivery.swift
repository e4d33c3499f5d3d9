import Foundation
import KetenpoortAudit
import KetenpoortCore
import KetenpoortTLS
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Pushes inbox items to partners that have a `delivery_endpoint` in `partners.yaml`, over
/// mutual TLS with the gateway's client certificate (`client_tls`). A 2xx answer is the
/// partner's acknowledgement (the payload is then erased); anything else is retried with
/// exponential backoff (1 s, 2 s, 4 s … at most 5 minutes). The state lives in the inbox rows,
/// so a restart resumes where it stopped; the inbox stays readable meanwhile.
final class PushDelivery: Sendable {
    let repository: ExchangeRepository
    let service: ExchangeService
    let state: GatewayState
    /// The client context, read per push: a SIGHUP swaps in a renewed certificate.
    let context: TLSContextBox
    let logger: Logger
    let group: EventLoopGroup
    let interval: Duration
    /// Partners whose endpoint failed, until when their items wait untried (this instance's view).
    private let partnerBackoff = Mutex<[String: (until: Date, next: String)]>([:])

    init(repository: ExchangeRepository, service: ExchangeService, state: GatewayState, context: TLSContextBox, logger: Logger, group: EventLoopGroup, interval: Duration = .milliseconds(500)) {
        self.repository = repository
        self.service = service
        self.state = state
        self.context = context
        self.logger = logger
        self.group = group
        self.interval = interval
    }

    static func backoff(attempts: Int) -> TimeInterval { min(300, pow(2, Double(max(0, attempts - 1)))) }

    /// One push: connecting may take this long, and then the answer as long again.
    static let pushTimeout: TimeInterval = 10
    /// Items claimed per round.
    static let batch = 16
    /// How long a claim holds: every item of a round at its worst (connect and answer timeouts,
    /// one after the other) plus a margin, so another instance never takes over a live round.
    static var lease: TimeInterval { Double(batch) * 2 * pushTimeout + 30 }

    /// Runs until the task is cancelled.
    func run() async {
        while !Task.isCancelled {
            await deliverDue()
            do { try await Task.sleep(for: interval) } catch { return }
        }
    }

    func deliverDue() async {
        let endpoints = Dictionary(
            state.snapshot.registry.partners.compactMap { p in p.deliveryEndpoint.flatMap(URL.init(string:)).map { (p.id, $0) } },
            uniquingKeysWith: { first, _ in first })
        guard !endpoints.isEmpty else { return }
        let due: [ExchangeRepository.PushRow]
        do {
            // Claimed for long enough to push them all: another instance leaves them alone
            // meanwhile and takes them over if this one dies.
            due = try repository.claimDuePushes(
                recipients: Array(endpoints.keys), now: AuditClock.timestamp(),
                leaseUntil: AuditClock.timestamp(Date().addingTimeInterval(PushDelivery.lease)), limit: PushDelivery.batch)
        } catch {
            logger.error("push delivery: the inbox cannot be read", metadata: ["error": "\((error as? KetenpoortError)?.message ?? "storage error")"])
            return
        }
        // A partner whose endpoint failed is not tried again until its backoff has passed: its
        // other items — also items that became due in a later round — wait with it (attempts
        // unchanged), and a dead endpoint holding many items costs one timeout per backoff, not
        // one per item, so other partners are not starved.
        for row in due {
            guard let url = endpoints[row.recipient] else { continue }
            let now = Date()
            if let next = partnerBackoff.withLock({ waiting -> String? in
                guard let entry = waiting[row.recipient], entry.until > now else { return nil }
                return entry.next
            }) {
                do {
                    try repository.markPushFailed(id: row.id, attempts: row.attempts, next: next, reason: "not tried: the endpoint failed for an earlier item")
                } catch {
                    logger.error("push delivery: the inbox cannot be updated", metadata: ["error": "\((error as? KetenpoortError)?.message ?? "storage error")"])
                }
                continue
            }
            let outcome = await push(row, to: url)
            do {
                switch outcome {
                case .success:
                    partnerBackoff.withLock { _ = $0.removeValue(forKey: row.recipient) }
                    try repository.markPushed(id: row.id, at: AuditClock.timestamp())
                case .failure(let reason):
                    let attempts = row.attempts + 1
                    let until = Date().addingTimeInterval(PushDelivery.backoff(attempts: attempts))
                    let next = AuditClock.timestamp(until)
                    partnerBackoff.withLock { $0[row.recipient] = (until, next) }
                    try repository.markPushFailed(id: row.id, attempts: attempts, next: next, reason: reason)
                    logger.warning(
                        "push delivery failed; will retry", metadata: ["partner": "\(row.recipient)", "attempt": "\(attempts)", "reason": "\(reason)"])
                }
            } catch {
                logger.error("push delivery: the inbox cannot be updated", metadata: ["error": "\((error as? KetenpoortError)?.message ?? "storage error")"])
            }
        }
    }

    enum Outcome {
        case success
        case failure(String)
    }

    func push(_ row: ExchangeRepository.PushRow, to url: URL) async -> Outcome {
        guard url.scheme == "https", let host = url.host else { return .failure("the endpoint is not an https URL") }
        do {
            var payload = try service.openPayload(row.sealed, recipient: row.recipient, exchangeID: row.exchangeID)
            if case .object(var members) = payload {
                members.insert(("id", .string(String(row.id))), at: 0)
                members.append(("deliveredAt", .string(row.deliveredAt)))
                payload = .object(members)
            }
            let client = HTTPSClient(context: context.context, host: host == "localhost" ? "127.0.0.1" : host, port: url.port ?? 443, serverName: host, group: group)
            let path = url.path.isEmpty ? "/" : url.path
            let response = try await client.request(.POST, path, json: payload.serialized(), timeout: .seconds(Int64(PushDelivery.pushTimeout)))
            return (200...299).contains(response.status) ? .success : .failure("the endpoint answered \(response.status)")
        } catch let error as KetenpoortError {
            return .failure(error.message)
        } catch {
            return .failure("connection failed (\(type(of: error)))")
        }
    }
}
