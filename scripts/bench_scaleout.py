#!/usr/bin/env python3
"""Exchanges/s with one and with two gateway instances on one PostgreSQL database (and one over
TLS with verify-full), against one
gateway on SQLite: the same exchange (bench_exchanges.py's: consent basis, ~2 KB body, decided,
logged durably, delivered to the sealed inbox), the same load generator (`ketenpoort bench`),
16 connections in all, the same run, rounds alternating between the set-ups.

On a two-core machine this measures the overhead of the PostgreSQL backend (a network round trip
per statement, the advisory lock, a server's own processes sharing the two cores), not scaling:
two instances and the server compete for the same two cores. Nothing is pinned: the server
processes of each set-up share both cores alike.

PostgreSQL (Debian's) is started here on a free loopback port as the unprivileged `postgres`
user (initdb refuses root) and stopped by its PID."""
import json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as common  # noqa: E402
from bench_exchanges import exchange_body  # noqa: E402

ROOT = common.ROOT


def postgres_bin():
    root = "/usr/lib/postgresql"
    versions = sorted(int(v) for v in os.listdir(root) if v.isdigit()) if os.path.isdir(root) else []
    if not versions:
        raise SystemExit("PostgreSQL's server programs are not installed (make test-deps installs postgresql)")
    return f"{root}/{versions[-1]}/bin"


def as_server_user(argv):
    return (["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups"] + argv) if os.getuid() == 0 else argv


def start_postgres(work, pki):
    bin_dir = postgres_bin()
    pg = os.path.join(work, "pg")
    os.makedirs(os.path.join(pg, "run"))
    password = "bench-" + os.urandom(6).hex()
    for name in ("password", "server-password"):
        with open(os.path.join(pg, name), "w") as f:
            f.write(password)
        os.chmod(os.path.join(pg, name), 0o600)
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", pg], check=True)
        os.chmod(pg, 0o755)
        os.chown(os.path.join(pg, "password"), 0, 0)
    subprocess.run(as_server_user([f"{bin_dir}/initdb", "-D", f"{pg}/data", "-U", "ketenpoort", "--auth=scram-sha-256",
                                   f"--pwfile={pg}/server-password", "-E", "UTF8", "--locale=C"]), check=True, stdout=subprocess.DEVNULL)
    # TLS for the set-up that uses it (the bench PKI's server certificate: localhost, 127.0.0.1).
    for name in ("server.crt", "server.key"):
        shutil.copy(f"{pki}/gateway/{name}", f"{pg}/data/{name}")
    os.chmod(f"{pg}/data/server.key", 0o600)
    if os.getuid() == 0:
        subprocess.run(["chown", "postgres:postgres", f"{pg}/data/server.crt", f"{pg}/data/server.key"], check=True)
    port = common.free_port()
    log = open(os.path.join(work, "postgres.log"), "w")
    proc = subprocess.Popen(as_server_user([f"{bin_dir}/postgres", "-D", f"{pg}/data", "-p", str(port), "-k", f"{pg}/run",
                                            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=60",
                                            "-c", "ssl=on", "-c", "ssl_cert_file=server.crt", "-c", "ssl_key_file=server.key"]), stdout=log, stderr=log)
    common.wait_port(port, timeout=60)
    env = dict(os.environ, PGPASSWORD=password)
    for _ in range(100):
        if subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "ketenpoort", "-d", "postgres", "-c", "SELECT 1"],
                          env=env, capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    for db in ("one", "two", "tls"):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "ketenpoort", "-d", "postgres", "-c", f"CREATE DATABASE {db}"],
                       env=env, check=True, capture_output=True)
    return proc, port, os.path.join(pg, "password")


def start_gateway(binary, work, pki, name, database, password_file):
    return common.start_gateway(binary, work, pki, True, name=name, database=database, password_file=password_file, pin=False)


def load(binary, ports, pki, body_path, seconds):
    """16 connections split over the instances, all at once; the rates add up."""
    per = 16 // len(ports)
    procs = []
    for port in ports:
        argv = [binary, "bench", "--url", f"https://127.0.0.1:{port}/v1/exchanges", "--cert", f"{pki}/partners/jgz-zhz.crt",
                "--key", f"{pki}/partners/jgz-zhz.key", "--ca", f"{pki}/ca.crt", "--json", "--method", "POST", "--body", body_path,
                "--header", "content-type: application/json", "--connections", str(per), "--duration", str(seconds), "--expect-status", "201"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"bench failed: {err.strip()}")
        results.append(json.loads(out))
    errors = [r["errors"] for r in results if r["errors"]]
    if errors:
        raise SystemExit(f"errors under load: {errors}")
    return {"requests_per_second": sum(r["requests_per_second"] for r in results),
            "latency_p50_ms": max(r["latency_p50_ms"] for r in results), "latency_p99_ms": max(r["latency_p99_ms"] for r in results),
            "requests": sum(r.get("requests", 0) for r in results)}


def main():
    args = common.exchange_bench_arguments(default_seconds=8)
    binary = os.path.abspath(args.bin)
    seconds = 1.0 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 3
    work = tempfile.mkdtemp(prefix="ketenpoort-bench-scaleout-")
    os.chmod(work, 0o755)
    pki = os.path.join(work, "pki")
    subprocess.run([binary, "pki", "init", pki, "--partners", os.path.join(ROOT, "Policies/partners.yaml")], check=True, stdout=subprocess.DEVNULL)
    postgres, pg_port, password_file = start_postgres(work, pki)
    try:
        run(binary, work, pki, postgres, pg_port, password_file, seconds, rounds, args)
    finally:
        # Stopped by its PID whatever happened, so that no server outlives the benchmark.
        if postgres.poll() is None:
            postgres.send_signal(signal.SIGINT)
            postgres.wait(timeout=60)


def run(binary, work, pki, postgres, pg_port, password_file, seconds, rounds, args):
    url = lambda db: f"postgresql://ketenpoort@127.0.0.1:{pg_port}/{db}?sslmode=disable"
    tls_url = f"postgresql://ketenpoort@localhost:{pg_port}/tls?sslmode=verify-full&sslrootcert={pki}/ca.crt"
    gateways = []
    try:
        sqlite, sqlite_port = start_gateway(binary, work, pki, "sqlite", f"{work}/bench.db", None)
        pg_one, pg_one_port = start_gateway(binary, work, pki, "pg-one", url("one"), password_file)
        pg_a, pg_a_port = start_gateway(binary, work, pki, "pg-a", url("two"), password_file)
        pg_b, pg_b_port = start_gateway(binary, work, pki, "pg-b", url("two"), password_file)
        pg_tls, pg_tls_port = start_gateway(binary, work, pki, "pg-tls", tls_url, password_file)
        gateways = [sqlite, pg_one, pg_a, pg_b, pg_tls]
        setups = {"SQLite, one gateway": [sqlite_port], "PostgreSQL, one gateway": [pg_one_port], "PostgreSQL, two gateways": [pg_a_port, pg_b_port],
                  "PostgreSQL over TLS, one gateway": [pg_tls_port]}
        bodies = {}
        for name, ports in setups.items():
            path = os.path.join(work, f"body-{len(bodies)}.json")
            with open(path, "w") as f:
                json.dump(exchange_body(ports[0], pki), f)
            bodies[name] = path
        results = {name: [] for name in setups}
        names = list(setups)
        for r in range(rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                results[name].append(load(binary, setups[name], pki, bodies[name], seconds))
    finally:
        for g in gateways:
            g.send_signal(signal.SIGTERM)
        for g in gateways:
            try:
                g.wait(timeout=60)
            except subprocess.TimeoutExpired:
                g.kill()
    env = dict(os.environ, KETENPOORT_DATABASE_PASSWORD_FILE=password_file)
    verified = {}
    for label, db in (("sqlite", f"{work}/bench.db"), ("one", url("one")), ("two", url("two")), ("tls", tls_url)):
        v = subprocess.run([binary, "log", "verify", "--db", db, "--keys", f"{work}/master.key"], capture_output=True, text=True, env=env)
        verified[label] = (v.returncode, (v.stdout or v.stderr).strip().splitlines()[0] if (v.stdout or v.stderr) else "")
    # Storage per log entry (an exchange is one entry plus its exchange row and inbox item).
    sizes = {}
    password = open(password_file).read().strip()
    for label, db in (("one", "one"), ("two", "two"), ("tls", "tls")):
        q = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "ketenpoort", "-d", db, "-At", "-c",
                            "SELECT pg_database_size(current_database()), (SELECT count(*) FROM audit_entries)"],
                           env=dict(os.environ, PGPASSWORD=password), capture_output=True, text=True)
        total, entries = (int(x) for x in q.stdout.strip().split("|"))
        sizes[label] = total / max(entries, 1)
    db_path = f"{work}/bench.db"
    sqlite_entries = int(verified["sqlite"][1].split()[0]) if verified["sqlite"][1] else 1
    sizes["sqlite"] = os.path.getsize(db_path) / max(sqlite_entries, 1)
    base = statistics.median(r["requests_per_second"] for r in results["SQLite, one gateway"])
    print(f"{rounds} alternating rounds of {seconds:.0f} s, 16 connections in all, medians; 2 cores shared by everything (overhead, not scaling)")
    for name in names:
        rs = results[name]
        rate = statistics.median(r["requests_per_second"] for r in rs)
        print(f"{name:34} {rate:9.1f} exchanges/s   p50 {statistics.median(r['latency_p50_ms'] for r in rs):7.2f} ms"
              f"   p99 {statistics.median(r['latency_p99_ms'] for r in rs):7.2f} ms   ÷ SQLite {rate / max(base, 1e-9):5.2f}")
    for label, (code, line) in verified.items():
        print(f"log verify ({label}): exit {code}: {line}; {sizes[label]:.0f} bytes of database per entry")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "scaleout-smoke.json" if args.smoke else "scaleout.json")
    with open(out, "w") as f:
        json.dump({"results": results, "machine": common.machine(), "verified": verified, "bytes_per_entry": sizes}, f, indent=2)
    print(f"written {out}")
    if any(code != 0 for code, _ in verified.values()):
        raise SystemExit("a log does not verify after the benchmark")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
