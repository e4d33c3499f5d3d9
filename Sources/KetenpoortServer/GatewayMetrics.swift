import KetenpoortTLS
import Metrics
import Prometheus
import Synchronization

/// The gateway's metrics, created through swift-metrics on a Prometheus registry.
///
/// Labels are closed sets (route templates, status codes, failure reasons): never a path, an
/// identifier of a person or any free text.
public final class GatewayMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let requestCounters = Mutex<[String: Metrics.Counter]>([:])
    private let handshakeFailureCounters: [TLSHandshakeFailure: Metrics.Counter]
    public let openConnections: Metrics.Gauge
    public let rejectedConnections: Metrics.Counter
    public let droppedSlowClients: Metrics.Counter
    public let tlsReloadsSucceeded: Metrics.Counter
    public let tlsReloadsFailed: Metrics.Counter
    public let policyReloadsSucceeded: Metrics.Counter
    public let policyReloadsFailed: Metrics.Counter
    public let auditEntries: Metrics.Counter
    public let auditWriteFailures: Metrics.Counter
    private let certificateExpiry = Mutex<[String: Metrics.Gauge]>([:])
    private let inboxGauges = Mutex<[String: (items: Metrics.Gauge, oldest: Metrics.Gauge)]>([:])
    /// Gauges read from elsewhere (the inbox backlog) are brought up to date when scraped.
    private let scrapeHooks = Mutex<[@Sendable () -> Void]>([])

    public func onScrape(_ hook: @escaping @Sendable () -> Void) { scrapeHooks.withLock { $0.append(hook) } }

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let factory = PrometheusMetricsFactory(registry: registry)
        self.factory = factory
        var failures: [TLSHandshakeFailure: Metrics.Counter] = [:]
        for reason in TLSHandshakeFailure.allCases {
            failures[reason] = Metrics.Counter(
                label: "ketenpoort_tls_handshake_failures_total", dimensions: [("reason", reason.rawValue)], factory: factory)
        }
        handshakeFailureCounters = failures
        openConnections = Metrics.Gauge(label: "ketenpoort_open_connections", factory: factory)
        rejectedConnections = Metrics.Counter(label: "ketenpoort_connections_rejected_total", factory: factory)
        droppedSlowClients = Metrics.Counter(label: "ketenpoort_slow_clients_dropped_total", factory: factory)
        tlsReloadsSucceeded = Metrics.Counter(label: "ketenpoort_tls_reloads_total", dimensions: [("result", "ok")], factory: factory)
        tlsReloadsFailed = Metrics.Counter(label: "ketenpoort_tls_reloads_total", dimensions: [("result", "failed")], factory: factory)
        policyReloadsSucceeded = Metrics.Counter(label: "ketenpoort_policy_reloads_total", dimensions: [("result", "ok")], factory: factory)
        policyReloadsFailed = Metrics.Counter(label: "ketenpoort_policy_reloads_total", dimensions: [("result", "failed")], factory: factory)
        auditEntries = Metrics.Counter(label: "ketenpoort_audit_entries_total", factory: factory)
        auditWriteFailures = Metrics.Counter(label: "ketenpoort_audit_write_failures_total", factory: factory)
        openConnections.record(0)
    }

    public func handshakeFailed(_ reason: TLSHandshakeFailure) {
        handshakeFailureCounters[reason]?.increment()
    }

    /// The request counter for one route template and status code.
    public func requestCounter(route: String, status: UInt) -> Metrics.Counter {
        let key = "\(route) \(status)"
        if let counter = requestCounters.withLock({ $0[key] }) { return counter }
        let counter = Metrics.Counter(
            label: "ketenpoort_http_requests_total", dimensions: [("route", route), ("status", String(status))], factory: factory)
        requestCounters.withLock { $0[key] = counter }
        return counter
    }

    /// When a certificate the gateway presents ends (`server`, `client`): alert before it does.
    public func certificateExpires(_ which: String, at notAfter: Double?) {
        guard let notAfter else { return }
        let gauge = certificateExpiry.withLock { gauges in
            if let g = gauges[which] { return g }
            let g = Metrics.Gauge(label: "ketenpoort_certificate_expiry_timestamp_seconds", dimensions: [("certificate", which)], factory: factory)
            gauges[which] = g
            return g
        }
        gauge.record(notAfter)
    }

    /// Unacknowledged inbox items per partner (a partner id from partners.yaml, never personal
    /// data) and the age of the oldest.
    public func inboxBacklog(partner: String, items: Int, oldestSeconds: Double) {
        let gauges = inboxGauges.withLock { all in
            if let g = all[partner] { return g }
            let g = (
                items: Metrics.Gauge(label: "ketenpoort_inbox_unacknowledged_items", dimensions: [("partner", partner)], factory: factory),
                oldest: Metrics.Gauge(label: "ketenpoort_inbox_oldest_unacknowledged_seconds", dimensions: [("partner", partner)], factory: factory)
            )
            all[partner] = g
            return g
        }
        gauges.items.record(items)
        gauges.oldest.record(oldestSeconds)
    }

    /// The Prometheus text exposition.
    public func exposition() -> [UInt8] {
        for hook in scrapeHooks.withLock({ $0 }) { hook() }
        return registry.emitToBuffer()
    }
}
