#!/usr/bin/env python3
"""`make bench`: Ketenpoort against nginx, same certificates, same libssl, same load generator.

Server on core 0, load generator on core 1 (taskset), three alternating runs per case, medians,
CPU time per request beside the rate. `--smoke` runs each case once, briefly, unpinned, to keep
the benchmark working in CI (its numbers mean nothing).
"""
import argparse, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, ssl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core, argv, smoke):
    if smoke or shutil.which("taskset") is None or os.cpu_count() < 2:
        return argv
    return ["taskset", "-c", str(core)] + argv


def wait_ready(proc, pattern="ready:", timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise SystemExit(f"server exited early with {proc.returncode}")
            continue
        if pattern in line:
            return line.strip()
    raise SystemExit("server did not become ready")


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def exchange_bench_arguments(default_seconds):
    """--bin, --smoke, --seconds, --out: the options of the exchange benchmarks."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build/release/ketenpoort"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seconds", type=float, default=default_seconds)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    return parser.parse_args()


def start_gateway(binary, work, pki, smoke, name="gateway", database=None, password_file=None, pin=True):
    """A gateway on free ports with the bench master key; `database` defaults to WORK/bench.db
    (a postgresql:// URL needs `password_file`)."""
    port, ops = free_port(), free_port()
    config = os.path.join(work, f"{name}.yaml")
    keys = os.path.join(work, "master.key")
    if not os.path.exists(keys):
        subprocess.run([binary, "keys", "init", keys], check=True, stdout=subprocess.DEVNULL)
    with open(config, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
ops_listen: 127.0.0.1:{ops}
event_loop_threads: 1
log_level: warning
tls:
  certificate: {pki}/gateway/server.crt
  key: {pki}/gateway/server.key
  client_ca: {pki}/ca.crt
  crl: {pki}/crl.pem
policies: {ROOT}/Policies
database: {database or work + "/bench.db"}
{"database_password_file: " + password_file if password_file else ""}
keys: {keys}
limits:
  max_connections: 20000
  idle_timeout_seconds: 600
""")
    argv = [binary, "serve", "--config", config]
    # Standard error to a file: a pipe nobody reads would stall a gateway that logs.
    log_path = os.path.join(work, f"{name}.log")
    proc = subprocess.Popen(pinned(0, argv, smoke) if pin else argv, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True)
    try:
        wait_ready(proc)
    except SystemExit:
        raise SystemExit(f"gateway {name} did not start: {open(log_path).read().strip()[-2000:]}")
    return proc, port


def start_nginx(work, pki, smoke):
    port = free_port()
    with open(os.path.join(ROOT, "bench", "nginx.conf.template")) as f:
        conf = f.read().format(dir=work, port=port, pki=pki)
    path = os.path.join(work, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(pinned(0, [nginx, "-e", "stderr", "-c", path, "-g", "daemon off;"], smoke), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port)
    # The worker does the TLS work: report its CPU, not the master's.
    time.sleep(0.2)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    worker = int(children[0]) if children else proc.pid
    return proc, port, worker


def bench(binary, port, path, pki, smoke, server_pid, extra):
    argv = [binary, "bench", "--url", f"https://127.0.0.1:{port}{path}", "--cert", f"{pki}/partners/wijkteam-dordrecht.crt",
            "--key", f"{pki}/partners/wijkteam-dordrecht.key", "--ca", f"{pki}/ca.crt", "--json", "--server-pid", str(server_pid)] + extra
    out = subprocess.run(pinned(1, argv, smoke), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def idle_connections(port, pki, count):
    """Opens `count` keep-alive mTLS connections, one request each, and keeps them open."""
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    ctx.load_cert_chain(f"{pki}/partners/wijkteam-dordrecht.crt", f"{pki}/partners/wijkteam-dordrecht.key")
    conns = []
    for _ in range(count):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
        s.sendall(b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(4096)
        conns.append(s)
    return conns


def cpu_steal():
    """(steal, total) jiffies from /proc/stat: a hypervisor taking CPU from this machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build/release/ketenpoort"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    seconds = 1.0 if args.smoke else args.seconds
    binary = os.path.abspath(args.bin)
    work = tempfile.mkdtemp(prefix="ketenpoort-bench-")
    pki = os.path.join(work, "pki")
    subprocess.run([binary, "pki", "init", pki, "--partners", os.path.join(ROOT, "Policies/partners.yaml")], check=True, stdout=subprocess.DEVNULL)
    cases = [
        ("keep-alive, 16 connections", "/v1/whoami", ["--connections", "16", "--duration", str(seconds)]),
        ("new connection per request, 4 workers", "/v1/whoami", ["--connections", "4", "--duration", str(seconds), "--new-connection-per-request"]),
    ]
    results = {name: {"ketenpoort": [], "nginx": []} for name, _, _ in cases}
    memory = {}
    steal_before = cpu_steal()
    gateway, gport = start_gateway(binary, work, pki, args.smoke)
    nginx, nport, nworker = start_nginx(work, pki, args.smoke)
    try:
        for name, path, extra in cases:
            for run in range(runs):
                for server in (["ketenpoort", "nginx"] if run % 2 == 0 else ["nginx", "ketenpoort"]):
                    port, pid = (gport, gateway.pid) if server == "ketenpoort" else (nport, nworker)
                    r = bench(binary, port, path, pki, args.smoke, pid, extra)
                    if r["errors"]:
                        raise SystemExit(f"{server} {name}: errors {r['errors']}")
                    results[name][server].append(r)
        count = 50 if args.smoke else 1000
        for server, port, pid in (("ketenpoort", gport, gateway.pid), ("nginx", nport, nworker)):
            before = rss_kib(pid)
            conns = idle_connections(port, pki, count)
            time.sleep(0.5)
            memory[server] = {"idle_connections": count, "rss_before_mib": before / 1024, "rss_mib": rss_kib(pid) / 1024}
            for c in conns:
                c.close()
    finally:
        gateway.send_signal(signal.SIGTERM)
        nginx.send_signal(signal.SIGQUIT)
        gateway.wait(timeout=30)
        nginx.wait(timeout=30)
    steal_after = cpu_steal()
    steal = 100.0 * (steal_after[0] - steal_before[0]) / max(1, steal_after[1] - steal_before[1])
    summary = {"machine": machine(), "smoke": args.smoke, "runs": runs, "seconds": seconds, "cases": {}, "memory": memory, "cpu_steal_percent": round(steal, 1)}
    print(f"CPU stolen by the hypervisor during the run: {steal:.1f}%")
    print(f"\n{'case':42} {'server':11} {'req/s (median)':>15} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>10}")
    for name, _, _ in cases:
        row = {}
        for server in ("ketenpoort", "nginx"):
            rs = results[name][server]
            med = statistics.median(r["requests_per_second"] for r in rs)
            p50 = statistics.median(r["latency_p50_ms"] for r in rs)
            p99 = statistics.median(r["latency_p99_ms"] for r in rs)
            cpu = statistics.median(r.get("server_cpu_us_per_request", 0) for r in rs)
            row[server] = {"requests_per_second": med, "all": [r["requests_per_second"] for r in rs], "p50_ms": p50, "p99_ms": p99, "cpu_us_per_request": cpu}
            print(f"{name:42} {server:11} {med:15.1f} {p50:8.3f} {p99:8.3f} {cpu:10.1f}")
        row["ratio"] = row["ketenpoort"]["requests_per_second"] / max(row["nginx"]["requests_per_second"], 1e-9)
        print(f"{name:42} {'ratio':11} {row['ratio']:15.3f}")
        summary["cases"][name] = row
    for server, m in memory.items():
        print(f"memory {server:11} {m['idle_connections']} idle connections: RSS {m['rss_mib']:.1f} MiB (before {m['rss_before_mib']:.1f} MiB)")
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "smoke.json" if args.smoke else "tls-http.json")
    with open(out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"written {out}")
    shutil.rmtree(work, ignore_errors=True)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    nginx = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return {"cpu": model, "cores": os.cpu_count(), "openssl": openssl, "nginx": nginx}


if __name__ == "__main__":
    main()
