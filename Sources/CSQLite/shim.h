// Shim over the system SQLite 3. SQLITE_TRANSIENT / SQLITE_STATIC are cast macros Swift cannot see.
#ifndef KETENPOORT_CSQLITE_SHIM_H
#define KETENPOORT_CSQLITE_SHIM_H
#include <sqlite3.h>
static inline sqlite3_destructor_type kp_sqlite_transient(void) { return SQLITE_TRANSIENT; }
static inline sqlite3_destructor_type kp_sqlite_static(void) { return SQLITE_STATIC; }
#endif
