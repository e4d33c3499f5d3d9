// PKI section of the OpenSSL shim (owner: KetenpoortPKI).
#ifndef KETENPOORT_SHIM_PKI_H
#define KETENPOORT_SHIM_PKI_H
#endif
