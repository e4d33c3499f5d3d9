// TLS section of the OpenSSL shim (owner: KetenpoortTLS).
#ifndef KETENPOORT_SHIM_TLS_H
#define KETENPOORT_SHIM_TLS_H

static inline int kp_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}
static inline int kp_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
static inline uint64_t kp_SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options) {
    return (uint64_t)SSL_CTX_set_options(ctx, options);
}
static inline uint64_t kp_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t kp_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t kp_SSL_OP_CIPHER_SERVER_PREFERENCE(void) { return SSL_OP_CIPHER_SERVER_PREFERENCE; }
static inline uint64_t kp_SSL_OP_NO_TICKET(void) { return SSL_OP_NO_TICKET; }
static inline long kp_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}
static inline long kp_SSL_SESS_CACHE_SERVER(void) { return SSL_SESS_CACHE_SERVER; }
static inline long kp_SSL_SESS_CACHE_CLIENT(void) { return SSL_SESS_CACHE_CLIENT; }
static inline long kp_SSL_SESS_CACHE_OFF(void) { return SSL_SESS_CACHE_OFF; }
static inline long kp_SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long size) {
    return SSL_CTX_sess_set_cache_size(ctx, size);
}
static inline long kp_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
static inline long kp_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline long kp_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER(void) { return SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
static inline long kp_SSL_MODE_ENABLE_PARTIAL_WRITE(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE; }
static inline int kp_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
static inline long kp_SSL_CTX_add_extra_chain_cert(SSL_CTX *ctx, X509 *x509) {
    return SSL_CTX_add_extra_chain_cert(ctx, x509);
}
static inline size_t kp_BIO_pending(BIO *bio) { return BIO_ctrl_pending(bio); }
static inline void kp_OPENSSL_free(void *p) { OPENSSL_free(p); }

static inline int kp_X509_V_FLAG_CRL_CHECK(void) { return X509_V_FLAG_CRL_CHECK; }
static inline int kp_X509_V_FLAG_CRL_CHECK_ALL(void) { return X509_V_FLAG_CRL_CHECK_ALL; }
static inline int kp_X509_V_FLAG_X509_STRICT(void) { return X509_V_FLAG_X509_STRICT; }

static inline int kp_sk_X509_num(const STACK_OF(X509) *sk) { return sk_X509_num(sk); }
static inline X509 *kp_sk_X509_value(const STACK_OF(X509) *sk, int i) { return sk_X509_value(sk, i); }
static inline int kp_sk_X509_INFO_num(const STACK_OF(X509_INFO) *sk) { return sk_X509_INFO_num(sk); }
static inline X509_INFO *kp_sk_X509_INFO_value(const STACK_OF(X509_INFO) *sk, int i) {
    return sk_X509_INFO_value(sk, i);
}
static inline void kp_sk_X509_INFO_pop_free(STACK_OF(X509_INFO) *sk) { sk_X509_INFO_pop_free(sk, X509_INFO_free); }

// Alert descriptions: OpenSSL encodes the last alert it sent/received in the verify result.
static inline int kp_SSL_ERROR_WANT_READ(void) { return SSL_ERROR_WANT_READ; }
#endif
