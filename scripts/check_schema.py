#!/usr/bin/env python3
"""Validates every policy file against Policies/schema.json (what an editor checks), and checks
that the schema refuses a file with an unknown key. Part of `make test`."""
import datetime, glob, json, os, sys
import jsonschema, yaml

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Policies")
schema = json.load(open(os.path.join(root, "schema.json")))
jsonschema.Draft202012Validator.check_schema(schema)


def norm(x):
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    if isinstance(x, list):
        return [norm(v) for v in x]
    if isinstance(x, datetime.date):
        return x.isoformat()
    return x


failed = 0
files = sorted(glob.glob(os.path.join(root, "*.yaml")))
for path in files:
    try:
        jsonschema.validate(norm(yaml.safe_load(open(path))), schema)
    except jsonschema.ValidationError as error:
        failed += 1
        print(f"{os.path.basename(path)}: {error.message}")
broken = norm(yaml.safe_load(open(os.path.join(root, "mda-zhz.yaml"))))
broken["routes"][0]["lable"] = "typo"
try:
    jsonschema.validate(broken, schema)
    failed += 1
    print("the schema accepted a route with an unknown key")
except jsonschema.ValidationError:
    pass
print(f"schema: {len(files) + 1 - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
