#!/usr/bin/env python3
"""Cedar (through the `cedarpy` package) on the policy equivalent to the benchmark of
`ketenpoort bench policy`: the MDA++ routes the benchmark's requests exercise (a local team to
Veilig Thuis for safety-assessment on consent; for meldcode-report under Wmo 5.2.6 with the
meldcode steps), the region's forbid rules as Cedar `forbid` policies, one copy per case table
(Cedar has no per-table index: a copy is scoped by `context.table`). Requests are evaluated in
one `is_authorized_batch` call; the figure is wall time divided by decisions.

Usage: python3 scripts/bench_cedar.py [--tables 1 100 1000] [--decisions 20000]
"""
import argparse, json, time

try:
    import cedarpy
except ImportError:
    raise SystemExit("cedarpy is not installed: pip install cedarpy")

ROUTE_TEMPLATE = '''
permit (principal in Kind::"local_team", action == Action::"safety-assessment", resource == Partner::"veilig-thuis-zhz")
when {{ context.table == "{table}" && context.ground == "consent" && context.consent_valid && context.consent_by_capable &&
        context.member_sender && context.member_recipient }};
permit (principal in Kind::"local_team", action == Action::"meldcode-report", resource == Partner::"veilig-thuis-zhz")
when {{ context.table == "{table}" && context.ground == "wmo-5.2.6" && context.meldcode_recorded && context.justification &&
        context.professional && context.member_sender && context.member_recipient }};
'''

FORBIDS = '''
forbid (principal, action, resource) when { context.case_closed };
forbid (principal, action, resource) when { !context.member_sender };
forbid (principal, action, resource) when { !context.member_recipient };
forbid (principal, action, resource) when { context.ground == "wmo-5.2.6" && !(resource in Kind::"veilig_thuis") };
forbid (principal, action, resource) when { context.ground == "bw-1.240" && !(resource in Kind::"child_protection_board") };
forbid (principal, action, resource) when { context.safety_exception && (!context.justification || !context.professional) };
forbid (principal, action, resource) when { context.safety_exception && context.subjects > 8 };
forbid (principal, action, resource in Kind::"police") when { context.categories.contains("health") };
forbid (principal, action, resource in Kind::"public_prosecution") when { context.categories.contains("health") };
forbid (principal, action, resource in Kind::"municipality") when { context.categories.containsAny(["health", "criminal", "concern_signal"]) };
forbid (principal, action, resource) when { context.categories.contains("location_protected") && context.kept_apart };
forbid (principal, action, resource) when { context.fields.contains("concern_signal.reporter") && context.bystander_without_consent };
forbid (principal in Kind::"veilig_thuis", action, resource) when { context.fields.contains("concern_signal.reporter") && context.reporter_protected };
'''

ENTITIES = [
    {"uid": {"type": "Kind", "id": "local_team"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Kind", "id": "veilig_thuis"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Kind", "id": "child_protection_board"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Kind", "id": "police"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Kind", "id": "public_prosecution"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Kind", "id": "municipality"}, "attrs": {}, "parents": []},
    {"uid": {"type": "Partner", "id": "wijkteam-dordrecht"}, "attrs": {}, "parents": [{"type": "Kind", "id": "local_team"}]},
    {"uid": {"type": "Partner", "id": "veilig-thuis-zhz"}, "attrs": {}, "parents": [{"type": "Kind", "id": "veilig_thuis"}]},
]


def request(i, tables):
    table = f"mda-zhz-{i % tables}"
    deny = i % 4 == 3
    context = {
        "table": table, "consent_valid": True, "consent_by_capable": True, "member_sender": True, "member_recipient": True,
        "case_closed": False, "subjects": 1, "kept_apart": False, "bystander_without_consent": False, "reporter_protected": False,
        "justification": True, "professional": True,
    }
    if deny:
        context.update({"ground": "wmo-5.2.6", "meldcode_recorded": False, "safety_exception": True,
                        "categories": ["identity", "concern_signal"], "fields": ["identity.bsn", "concern_signal.summary"]})
        action = "meldcode-report"
    else:
        context.update({"ground": "consent", "meldcode_recorded": False, "safety_exception": False,
                        "categories": ["identity", "household", "concern_signal"],
                        "fields": ["identity.bsn", "identity.name", "identity.birthDate", "household.members", "concern_signal.summary"]})
        action = "safety-assessment"
    return {"principal": 'Partner::"wijkteam-dordrecht"', "action": f'Action::"{action}"',
            "resource": 'Partner::"veilig-thuis-zhz"', "context": context}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for tables in args.tables:
        policies = FORBIDS + "".join(ROUTE_TEMPLATE.format(table=f"mda-zhz-{t}") for t in range(tables))
        count = args.decisions if tables < 1000 else max(2000, args.decisions // 10)
        requests = [request(i, tables) for i in range(count)]
        # Warm up (parsing and validation of the policy text happen per call in cedarpy).
        cedarpy.is_authorized_batch(requests[:10], policies, ENTITIES)
        start = time.perf_counter()
        results = cedarpy.is_authorized_batch(requests, policies, ENTITIES)
        elapsed = time.perf_counter() - start
        permits = sum(1 for r in results if r.allowed)
        per = elapsed / count * 1e9
        if args.json:
            print(json.dumps({"engine": "cedar", "case_tables": tables, "decisions": count, "ns_per_decision": round(per), "permits": permits}))
        else:
            print(f"cedar  case tables {tables:5d}  decisions {count:6d}  {per:10.0f} ns/decision  permits {permits}")


if __name__ == "__main__":
    main()
