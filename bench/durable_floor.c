/*
 * The floor of an exchange's durable work under the project's fixed choices (system SQLite in
 * WAL mode with synchronous=FULL, system OpenSSL), written in plain C with nothing else in the
 * way: no TLS, no HTTP, no JSON parsing, no policy, no tree nodes, no subject index, no
 * exchange row. It only does, per exchange, what no design of the gateway can leave out:
 *   - one keyed pseudonym (HMAC-SHA-256 of the BSN),
 *   - the ~2 KB payload sealed with AES-256-GCM,
 *   - a ~600-byte log entry, its leaf hash SHA-256(0x00 || entry) and chain hash,
 *   - two rows (the entry, the sealed inbox item),
 * and a durable commit for every `batch` exchanges (one fdatasync of the WAL per commit).
 *
 * It prints one JSON object: CPU time (user + system, getrusage) per exchange, and the rate.
 * Run it pinned to one core, as the gateway is in scripts/bench_exchanges.py:
 *   cc -O2 -o /tmp/durable_floor bench/durable_floor.c -lsqlite3 -lcrypto
 *   taskset -c 0 /tmp/durable_floor DIR 40000 16
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "durable_floor: %s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static double system_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + system_seconds();
}

static double wall_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void hex(const unsigned char *in, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: durable_floor DIR EXCHANGES BATCH\n");
        return 2;
    }
    const char *dir = argv[1];
    long exchanges = atol(argv[2]);
    long batch = atol(argv[3]);
    if (exchanges < 1 || batch < 1) {
        fprintf(stderr, "durable_floor: EXCHANGES and BATCH must be positive\n");
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/floor-%ld.sqlite", dir, batch);
    remove(path);
    sqlite3 *db;
    check(sqlite3_open(path, &db), db, "open");
    check(sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                           "CREATE TABLE log (sequence INTEGER PRIMARY KEY, body TEXT NOT NULL, leaf BLOB NOT NULL, chain BLOB NOT NULL);"
                           "CREATE TABLE inbox (id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, sealed BLOB NOT NULL, log_sequence INTEGER NOT NULL);",
                 NULL, NULL, NULL), db, "schema");
    sqlite3_stmt *entry, *inbox;
    check(sqlite3_prepare_v2(db, "INSERT INTO log VALUES (?, ?, ?, ?)", -1, &entry, NULL), db, "prepare");
    check(sqlite3_prepare_v2(db, "INSERT INTO inbox (recipient, sealed, log_sequence) VALUES (?, ?, ?)", -1, &inbox, NULL), db, "prepare");

    unsigned char key[32], pseudonym_key[32], iv[12] = {0}, tag[16], chain[32] = {0}, leaf[32];
    memset(key, 7, sizeof key);
    memset(pseudonym_key, 9, sizeof pseudonym_key);
    unsigned char payload[2048];
    memset(payload, 'x', sizeof payload);
    unsigned char sealed[12 + sizeof payload + 16];
    const EVP_CIPHER *gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    EVP_CIPHER_CTX *cipher = EVP_CIPHER_CTX_new();
    EVP_MD *sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *digest = EVP_MD_CTX_new();
    char body[1024], pseudonym_hex[65], hash_hex[65];

    double cpu0 = 0, wall0 = 0, system0 = 0;
    long warmup = exchanges / 10, commits = 0, in_transaction = 0;
    for (long i = 0; i < warmup + exchanges; i++) {
        if (i == warmup) {
            cpu0 = cpu_seconds();
            system0 = system_seconds();
            wall0 = wall_seconds();
            commits = 0;
        }
        if (in_transaction == 0) check(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), db, "begin");
        in_transaction++;
        /* The pseudonym. */
        unsigned char mac[32];
        unsigned int mac_len = 0;
        HMAC(EVP_sha256(), pseudonym_key, sizeof pseudonym_key, (const unsigned char *)"999990019", 9, mac, &mac_len);
        hex(mac, 32, pseudonym_hex);
        /* The sealed payload: nonce ‖ ciphertext ‖ tag. */
        memcpy(iv, &i, sizeof i);
        int n = 0, m = 0;
        EVP_EncryptInit_ex2(cipher, gcm, key, iv, NULL);
        EVP_EncryptUpdate(cipher, sealed + 12, &n, payload, sizeof payload);
        EVP_EncryptFinal_ex(cipher, sealed + 12 + n, &m);
        EVP_CIPHER_CTX_ctrl(cipher, EVP_CTRL_GCM_GET_TAG, 16, tag);
        memcpy(sealed, iv, 12);
        memcpy(sealed + 12 + n + m, tag, 16);
        /* The entry, its leaf and chain hashes. */
        unsigned char payload_hash[32];
        SHA256(sealed, sizeof sealed, payload_hash);
        hex(payload_hash, 32, hash_hex);
        int length = snprintf(body, sizeof body,
            "{\"basis\":\"consent\",\"caseTable\":\"lokaal-dordrecht\",\"categories\":[\"health\",\"identity\"],"
            "\"consentIds\":[\"c-0192ab34cd56ef78\"],\"decision\":\"permit\",\"exchangeId\":\"x-%016lx\",\"kind\":\"exchange\","
            "\"payloadHash\":\"%s\",\"policyVersion\":\"sha256:2f1c\",\"purpose\":\"safety-plan\",\"recipient\":\"wijkteam-dordrecht\","
            "\"released\":[\"identity.bsn\",\"identity.birthDate\",\"identity.postcode\",\"health.summary\"],\"retainUntil\":\"2033-12-01\","
            "\"route\":\"jgz-shares-with-local-team\",\"rules\":[\"jgz-shares-with-local-team\"],\"sender\":\"jgz-zhz\",\"sequence\":%ld,"
            "\"subjects\":[\"%s\"],\"time\":\"2026-12-01T05:00:00.000000Z\"}",
            i, hash_hex, i + 1, pseudonym_hex);
        unsigned char zero = 0, pair[64];
        unsigned int len = 0;
        EVP_DigestInit_ex(digest, sha256, NULL);
        EVP_DigestUpdate(digest, &zero, 1);
        EVP_DigestUpdate(digest, body, length);
        EVP_DigestFinal_ex(digest, leaf, &len);
        memcpy(pair, chain, 32);
        memcpy(pair + 32, leaf, 32);
        EVP_DigestInit_ex(digest, sha256, NULL);
        EVP_DigestUpdate(digest, pair, 64);
        EVP_DigestFinal_ex(digest, chain, &len);
        /* The two rows. */
        sqlite3_reset(entry);
        sqlite3_bind_int64(entry, 1, i + 1);
        sqlite3_bind_text(entry, 2, body, length, SQLITE_STATIC);
        sqlite3_bind_blob(entry, 3, leaf, 32, SQLITE_STATIC);
        sqlite3_bind_blob(entry, 4, chain, 32, SQLITE_STATIC);
        check(sqlite3_step(entry), db, "insert entry");
        sqlite3_reset(inbox);
        sqlite3_bind_text(inbox, 1, "wijkteam-dordrecht", -1, SQLITE_STATIC);
        sqlite3_bind_blob(inbox, 2, sealed, sizeof sealed, SQLITE_STATIC);
        sqlite3_bind_int64(inbox, 3, i + 1);
        check(sqlite3_step(inbox), db, "insert inbox");
        if (in_transaction == batch || i + 1 == warmup || i + 1 == warmup + exchanges) {
            in_transaction = 0;
            check(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), db, "commit");
            commits++;
            /* Keep the WAL bounded, as the gateway's checkpointer does (its cost counts too). */
            if (commits % 64 == 0) sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        }
    }
    double cpu = cpu_seconds() - cpu0, system = system_seconds() - system0, wall = wall_seconds() - wall0;
    printf("{\"exchanges\": %ld, \"batch\": %ld, \"commits\": %ld, \"cpu_us_per_exchange\": %.2f, \"kernel_us_per_exchange\": %.2f, \"exchanges_per_s\": %.0f}\n",
           exchanges, batch, commits, cpu * 1e6 / exchanges, system * 1e6 / exchanges, exchanges / wall);
    sqlite3_finalize(entry);
    sqlite3_finalize(inbox);
    sqlite3_close(db);
    EVP_CIPHER_CTX_free(cipher);
    EVP_MD_CTX_free(digest);
    return 0;
}
