// Shim over the system libpq (PostgreSQL's own client library).
#ifndef KETENPOORT_CPOSTGRES_SHIM_H
#define KETENPOORT_CPOSTGRES_SHIM_H
#include <libpq-fe.h>
#endif
