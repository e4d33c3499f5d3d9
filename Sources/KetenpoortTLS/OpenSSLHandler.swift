import COpenSSL
import KetenpoortCore
import NIOCore
import Synchronization

/// Why a handshake failed, as a small closed set (a metric label; never personal data).
public enum TLSHandshakeFailure: String, Sendable, CaseIterable {
    case certificateRequired = "certificate_required"
    case unknownCA = "unknown_ca"
    case certificateExpired = "certificate_expired"
    case certificateNotYetValid = "certificate_not_yet_valid"
    case certificateRevoked = "certificate_revoked"
    case crlUnavailable = "crl_unavailable"
    case invalidPurpose = "invalid_purpose"
    case badCertificate = "bad_certificate"
    case hostnameMismatch = "hostname_mismatch"
    case protocolVersion = "protocol_version"
    case noSharedCipher = "no_shared_cipher"
    case timeout = "timeout"
    case connectionClosed = "connection_closed"
    case other = "handshake_failure"
}

/// Errors the TLS handler raises in the pipeline.
public struct TLSError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case handshakeFailed(TLSHandshakeFailure)
        case protocolError
    }
    public let kind: Kind
    public let detail: String
    public var description: String {
        switch kind {
        case .handshakeFailed(let reason): return "tls handshake failed (\(reason.rawValue)): \(detail)"
        case .protocolError: return "tls error: \(detail)"
        }
    }
}

/// What a completed handshake established.
public struct TLSConnectionInfo: Sendable {
    /// The verified peer certificate (always present on a server that requires client certificates).
    public let peerCertificate: CertificateInfo?
    public let protocolVersion: String
    public let cipher: String
    public let sessionReused: Bool
}

/// The user event fired once the handshake is complete and the peer verified.
public enum TLSUserEvent: Sendable {
    case handshakeCompleted(TLSConnectionInfo)
}

/// A SwiftNIO channel handler that drives OpenSSL through two memory BIOs.
///
/// Ciphertext from the network goes into the read BIO; OpenSSL's output is taken from the write
/// BIO and written to the channel. Plaintext writes are coalesced until `flush`, so one HTTP
/// response becomes one TLS record write. The same handler serves both sides.
public final class OpenSSLHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        case idle, handshaking, active, closing, closed
    }

    private let tlsContext: TLSContext
    private let serverHostname: String?
    private let handshakeTimeout: TimeAmount?
    private let onHandshakeFailure: (@Sendable (TLSHandshakeFailure) -> Void)?
    private let session: TLSClientSessionCache?
    private var ssl: OpaquePointer?
    private var readBIO: OpaquePointer?
    private var writeBIO: OpaquePointer?
    private var state: State = .idle
    private var pendingPlaintext: ByteBuffer?
    private var pendingPromises: [EventLoopPromise<Void>] = []
    private var closePromise: EventLoopPromise<Void>?
    private var handshakeTimer: Scheduled<Void>?
    private var failureReported = false

    /// - Parameters:
    ///   - context: the TLS context (server or client role).
    ///   - serverHostname: client role: the name or IP address the server certificate must carry.
    ///   - handshakeTimeout: the connection is closed if the handshake has not completed by then.
    ///   - sessionCache: client role: resume sessions across connections.
    ///   - onHandshakeFailure: called once with the reason when a handshake fails (for metrics).
    public init(
        context: TLSContext,
        serverHostname: String? = nil,
        handshakeTimeout: TimeAmount? = .seconds(10),
        sessionCache: TLSClientSessionCache? = nil,
        onHandshakeFailure: (@Sendable (TLSHandshakeFailure) -> Void)? = nil
    ) {
        self.tlsContext = context
        self.serverHostname = serverHostname
        self.handshakeTimeout = handshakeTimeout
        self.session = sessionCache
        self.onHandshakeFailure = onHandshakeFailure
    }

    deinit {
        if let ssl { SSL_free(ssl) }
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        do {
            let ssl = try tlsContext.makeSSL()
            self.ssl = ssl
            let rbio = BIO_new(BIO_s_mem())
            let wbio = BIO_new(BIO_s_mem())
            SSL_set_bio(ssl, rbio, wbio)  // the SSL object owns both BIOs from here
            readBIO = rbio
            writeBIO = wbio
            if tlsContext.configuration.role == .server {
                SSL_set_accept_state(ssl)
            } else {
                SSL_set_connect_state(ssl)
                if let host = serverHostname {
                    try configureHostnameCheck(ssl, host)
                }
                if let session, let cached = session.take() {
                    _ = SSL_set_session(ssl, cached)
                    SSL_SESSION_free(cached)
                }
            }
        } catch {
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        if context.channel.isActive { startHandshake(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        failPending(ChannelError.ioOnClosedChannel)
    }

    public func channelActive(context: ChannelHandlerContext) {
        startHandshake(context: context)
        context.fireChannelActive()
    }

    /// Client side: keeps a resumable session (TLS 1.3 tickets arrive after the handshake, so
    /// this is tried again when the connection ends).
    private func rememberSession() {
        guard tlsContext.configuration.role == .client, let session, let ssl, let current = SSL_get1_session(ssl) else { return }
        if SSL_SESSION_is_resumable(current) == 1 {
            session.store(current)
        } else {
            SSL_SESSION_free(current)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if state == .active || state == .closing || state == .closed { rememberSession() }
        handshakeTimer?.cancel()
        if state == .handshaking { reportFailure(.connectionClosed) }
        state = .closed
        failPending(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    private func startHandshake(context: ChannelHandlerContext) {
        guard state == .idle, ssl != nil else { return }
        state = .handshaking
        if let timeout = handshakeTimeout {
            handshakeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
                guard let self, self.state == .handshaking else { return }
                self.reportFailure(.timeout)
                self.state = .closed
                context.close(promise: nil)
            }
        }
        if tlsContext.configuration.role == .client {
            doHandshake(context: context)
        }
    }

    private func configureHostnameCheck(_ ssl: OpaquePointer, _ host: String) throws {
        let isIP = host.contains(":") || host.split(separator: ".").allSatisfy { UInt8($0) != nil } && host.split(separator: ".").count == 4
        if isIP {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 else {
                throw KetenpoortError(.tls, "invalid IP address `\(host)` for server verification")
            }
        } else {
            guard SSL_set1_host(ssl, host) == 1 else {
                throw KetenpoortError(.tls, "invalid host name `\(host)` for server verification")
            }
            _ = kp_SSL_set_tlsext_host_name(ssl, host)
        }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard ssl != nil, state != .closed else { return }
        buffer.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = BIO_write(readBIO, bytes.baseAddress! + offset, Int32(bytes.count - offset))
                if written <= 0 { break }
                offset += Int(written)
            }
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        switch state {
        case .handshaking:
            doHandshake(context: context)
        case .active, .closing:
            readPlaintext(context: context)
        case .idle, .closed:
            break
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
    }

    private func doHandshake(context: ChannelHandlerContext) {
        guard let ssl else { return }
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            state = .active
            handshakeTimer?.cancel()
            handshakeTimer = nil
            flushNetwork(context: context, promise: nil)
            rememberSession()
            let info = connectionInfo(ssl)
            context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(info))
            if pendingPlaintext != nil { flushPlaintext(context: context) }
            readPlaintext(context: context)
            return
        }
        let error = SSL_get_error(ssl, rc)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE {
            flushNetwork(context: context, promise: nil)
            return
        }
        let (reason, detail) = classifyHandshakeFailure(ssl)
        // Send the fatal alert so the peer sees why it was refused, then close.
        flushNetwork(context: context, promise: nil)
        reportFailure(reason)
        state = .closed
        handshakeTimer?.cancel()
        context.fireErrorCaught(TLSError(kind: .handshakeFailed(reason), detail: detail))
        context.close(promise: nil)
    }

    private func readPlaintext(context: ChannelHandlerContext) {
        guard let ssl else { return }
        while state == .active || state == .closing {
            // Plaintext is never longer than the ciphertext waiting, nor than one record.
            let waiting = kp_BIO_pending(readBIO) + Int(SSL_pending(ssl))
            if waiting == 0 { break }
            let capacity = min(max(waiting, 256), 16_384)
            var buffer = context.channel.allocator.buffer(capacity: capacity)
            var readBytes = 0
            ERR_clear_error()
            let rc = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: capacity) { pointer -> Int in
                let ok = SSL_read_ex(ssl, pointer.baseAddress, pointer.count, &readBytes)
                return ok == 1 ? readBytes : 0
            }
            if rc > 0 {
                context.fireChannelRead(wrapInboundOut(buffer))
                continue
            }
            let error = SSL_get_error(ssl, 0)
            if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE {
                break
            }
            if error == SSL_ERROR_ZERO_RETURN {
                // The peer sent close_notify: answer it and close.
                flushNetwork(context: context, promise: nil)
                initiateClose(context: context, promise: nil)
                break
            }
            let detail = openSSLErrorString()
            state = .closed
            flushNetwork(context: context, promise: nil)
            context.fireErrorCaught(TLSError(kind: .protocolError, detail: detail))
            context.close(promise: nil)
            break
        }
        // Post-handshake messages (session tickets, key updates) may have produced output.
        if kp_BIO_pending(writeBIO) > 0 { flushNetwork(context: context, promise: nil) }
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard state != .closed, state != .closing else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if pendingPlaintext == nil {
            pendingPlaintext = buffer
        } else {
            var incoming = buffer
            pendingPlaintext!.writeBuffer(&incoming)
        }
        if let promise { pendingPromises.append(promise) }
    }

    public func flush(context: ChannelHandlerContext) {
        if state == .active { flushPlaintext(context: context) }
    }

    private func flushPlaintext(context: ChannelHandlerContext) {
        guard let ssl, var plaintext = pendingPlaintext else { return }
        pendingPlaintext = nil
        let promises = pendingPromises
        pendingPromises = []
        var failed = false
        while plaintext.readableBytes > 0 {
            ERR_clear_error()
            var written = 0
            let ok = plaintext.withUnsafeReadableBytes { bytes in
                SSL_write_ex(ssl, bytes.baseAddress, bytes.count, &written)
            }
            if ok != 1 || written == 0 {
                failed = true
                break
            }
            plaintext.moveReaderIndex(forwardBy: written)
        }
        if failed {
            let error = TLSError(kind: .protocolError, detail: openSSLErrorString())
            promises.forEach { $0.fail(error) }
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        let promise = combine(promises, on: context.eventLoop)
        flushNetwork(context: context, promise: promise)
    }

    /// Moves OpenSSL's pending output to the channel and flushes it.
    private func flushNetwork(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        let pending = kp_BIO_pending(writeBIO)
        guard pending > 0 else {
            promise?.succeed(())
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: pending)
        while kp_BIO_pending(writeBIO) > 0 {
            let want = kp_BIO_pending(writeBIO)
            _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: want) { pointer -> Int in
                let n = BIO_read(writeBIO, pointer.baseAddress, Int32(min(pointer.count, Int(Int32.max))))
                return n > 0 ? Int(n) : 0
            }
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: promise)
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        initiateClose(context: context, promise: promise)
    }

    private func initiateClose(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        switch state {
        case .active:
            rememberSession()
            state = .closing
            if pendingPlaintext != nil {
                // Nothing written before close may be lost.
                state = .active
                flushPlaintext(context: context)
                state = .closing
            }
            if let ssl {
                ERR_clear_error()
                _ = SSL_shutdown(ssl)  // queue close_notify
            }
            flushNetwork(context: context, promise: nil)
            state = .closed
            context.close(promise: promise)
        case .closing, .closed:
            context.close(promise: promise)
        case .idle, .handshaking:
            state = .closed
            context.close(promise: promise)
        }
    }

    // MARK: Helpers

    private func failPending(_ error: Error) {
        let promises = pendingPromises
        pendingPromises = []
        pendingPlaintext = nil
        promises.forEach { $0.fail(error) }
    }

    private func combine(_ promises: [EventLoopPromise<Void>], on loop: EventLoop) -> EventLoopPromise<Void>? {
        switch promises.count {
        case 0: return nil
        case 1: return promises[0]
        default:
            let combined = loop.makePromise(of: Void.self)
            combined.futureResult.whenComplete { result in
                for promise in promises { promise.completeWith(result) }
            }
            return combined
        }
    }

    private func reportFailure(_ reason: TLSHandshakeFailure) {
        guard !failureReported else { return }
        failureReported = true
        onHandshakeFailure?(reason)
    }

    private func connectionInfo(_ ssl: OpaquePointer) -> TLSConnectionInfo {
        var peer: CertificateInfo? = nil
        if let certificate = SSL_get1_peer_certificate(ssl) {
            peer = CertificateInfo(x509: certificate)
            X509_free(certificate)
        }
        let version = String(cString: SSL_get_version(ssl))
        let cipher = SSL_get_current_cipher(ssl).map { String(cString: SSL_CIPHER_get_name($0)) } ?? ""
        return TLSConnectionInfo(
            peerCertificate: peer, protocolVersion: version, cipher: cipher, sessionReused: SSL_session_reused(ssl) == 1)
    }

    private func classifyHandshakeFailure(_ ssl: OpaquePointer) -> (TLSHandshakeFailure, String) {
        let verify = Int32(SSL_get_verify_result(ssl))
        let firstError = ERR_peek_error()
        let detail = openSSLErrorString()
        if verify != X509_V_OK {
            let text = String(cString: X509_verify_cert_error_string(Int(verify)))
            switch verify {
            case X509_V_ERR_CERT_HAS_EXPIRED:
                return (.certificateExpired, text)
            case X509_V_ERR_CERT_NOT_YET_VALID:
                return (.certificateNotYetValid, text)
            case X509_V_ERR_CERT_REVOKED:
                return (.certificateRevoked, text)
            case X509_V_ERR_UNABLE_TO_GET_CRL, X509_V_ERR_CRL_HAS_EXPIRED, X509_V_ERR_CRL_NOT_YET_VALID,
                X509_V_ERR_CRL_SIGNATURE_FAILURE, X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
                return (.crlUnavailable, text)
            case X509_V_ERR_INVALID_PURPOSE:
                return (.invalidPurpose, text)
            case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH:
                return (.hostnameMismatch, text)
            case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, X509_V_ERR_CERT_UNTRUSTED:
                return (.unknownCA, text)
            default:
                return (.badCertificate, text)
            }
        }
        let reason = ERR_GET_REASON(firstError)
        switch reason {
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
            return (.certificateRequired, detail)
        case SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_WRONG_VERSION_NUMBER, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION,
            SSL_R_VERSION_TOO_LOW:
            return (.protocolVersion, detail)
        case SSL_R_NO_SHARED_CIPHER:
            return (.noSharedCipher, detail)
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
            return (.badCertificate, detail)
        default:
            if detail.contains("certificate required") { return (.certificateRequired, detail) }
            if detail.contains("unknown ca") { return (.unknownCA, detail) }
            if detail.contains("certificate expired") { return (.certificateExpired, detail) }
            if detail.contains("certificate revoked") { return (.certificateRevoked, detail) }
            if detail.contains("unsupported certificate") { return (.invalidPurpose, detail) }
            return (.other, detail)
        }
    }
}

/// Client side: remembers the last session so the next connection can resume it.
public final class TLSClientSessionCache: Sendable {
    private struct SessionReference: @unchecked Sendable {
        // An `SSL_SESSION`: immutable once established and reference counted by OpenSSL.
        let pointer: OpaquePointer
    }
    private let current = Mutex<SessionReference?>(nil)

    public init() {}

    deinit {
        current.withLock { reference in
            if let reference { SSL_SESSION_free(reference.pointer) }
            reference = nil
        }
    }

    func store(_ session: OpaquePointer) {
        let previous = current.withLock { reference -> SessionReference? in
            let old = reference
            reference = SessionReference(pointer: session)
            return old
        }
        if let previous { SSL_SESSION_free(previous.pointer) }
    }

    /// Returns a new reference to the cached session (the caller frees it).
    func take() -> OpaquePointer? {
        current.withLock { reference -> OpaquePointer? in
            guard let reference else { return nil }
            _ = SSL_SESSION_up_ref(reference.pointer)
            return reference.pointer
        }
    }
}
