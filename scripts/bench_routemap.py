#!/usr/bin/env python3
"""The route map over 1,000,000 log entries and 100 case tables (goal: 5 s or less).

The policies: the example region's four case tables and 96 copies of `mda-zhz` under other ids.
The log: the 1,000,000-entry exchange log `ketenpoort bench log` builds (kept in --dir between
runs). Times `ketenpoort routemap --policies … --db … --out …` as a whole process, median of 3."""
import argparse, os, re, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(ROOT, ".build/release/ketenpoort"))
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ketenpoort-bench-routemap"))
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--tables", type=int, default=100)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    db = os.path.join(args.dir, f"bench-report-{args.entries}.db")
    if not os.path.exists(db):
        subprocess.run([args.bin, "bench", "log", "--dir", args.dir, "--entries", "2000", "--report-entries", str(args.entries)], check=True)
    policies = os.path.join(args.dir, "policies")
    shutil.rmtree(policies, ignore_errors=True)
    os.makedirs(policies)
    for name in os.listdir(os.path.join(ROOT, "Policies")):
        if name.endswith(".yaml") or name.endswith(".json"):
            shutil.copy(os.path.join(ROOT, "Policies", name), policies)
    source = open(os.path.join(ROOT, "Policies", "mda-zhz.yaml")).read()
    existing = len([n for n in os.listdir(policies) if n.endswith(".yaml") and n not in ("partners.yaml", "forbid.yaml")])
    for i in range(args.tables - existing):
        text = re.sub(r"^case_table: mda-zhz$", f"case_table: mda-zhz-copy-{i:03d}", source, flags=re.M)
        with open(os.path.join(policies, f"mda-zhz-copy-{i:03d}.yaml"), "w") as f:
            f.write(text)
    out = os.path.join(args.dir, "routemap.html")
    times = []
    for _ in range(3):
        start = time.monotonic()
        r = subprocess.run([args.bin, "routemap", "--policies", policies, "--db", db, "--out", out], capture_output=True, text=True)
        times.append(time.monotonic() - start)
        if r.returncode != 0:
            raise SystemExit(f"routemap failed: {r.stderr.strip()}")
    size = os.path.getsize(out)
    print(r.stdout.strip())
    print(f"route map over {args.entries} entries and {args.tables} case tables: median {statistics.median(times):.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in times)}), {size / 1e6:.1f} MB of HTML  (goal <= 5 s)")


if __name__ == "__main__":
    main()
