#!/usr/bin/env python3
"""Policy decisions: `ketenpoort bench policy` and Cedar (cedarpy) in one run, with ratios."""
import json, os, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".build/release/ketenpoort")
ours = [json.loads(line) for line in subprocess.run([binary, "bench", "policy", "--policies", os.path.join(root, "Policies"), "--json"],
                                                     check=True, capture_output=True, text=True).stdout.splitlines()]
cedar = [json.loads(line) for line in subprocess.run([sys.executable, os.path.join(root, "scripts/bench_cedar.py"), "--json", "--decisions", "4000"],
                                                     check=True, capture_output=True, text=True).stdout.splitlines()]
print(f"{'case tables':>11}  {'ketenpoort/s':>12}  {'median ns':>9}  {'cedar ns':>10}  {'ratio':>7}")
for o in ours:
    c = next(x for x in cedar if x["case_tables"] == o["case_tables"])
    print(f"{o['case_tables']:>11}  {o['decisions_per_second']:>12.0f}  {o['median_ns']:>9.0f}  {c['ns_per_decision']:>10.0f}  {c['ns_per_decision'] / o['median_ns']:>6.1f}x")
