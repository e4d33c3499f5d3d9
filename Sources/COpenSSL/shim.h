// Shim over the system OpenSSL 3.0 for Swift.
//
// Swift cannot see function-like macros, cast macros or C variadics. Each of those that the
// project needs is wrapped here as a `static inline` function named `kp_<what it does>`.
// Sections are owned by the Swift target that uses them; keep them apart.
#ifndef KETENPOORT_COPENSSL_SHIM_H
#define KETENPOORT_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/kdf.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/asn1.h>
#include <openssl/objects.h>

#include "shim_tls.h"
#include "shim_crypto.h"
#include "shim_pki.h"

#endif
