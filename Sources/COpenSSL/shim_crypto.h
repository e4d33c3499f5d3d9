// Crypto section of the OpenSSL shim (owner: KetenpoortCrypto).
#ifndef KETENPOORT_SHIM_CRYPTO_H
#define KETENPOORT_SHIM_CRYPTO_H
#endif
