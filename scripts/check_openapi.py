#!/usr/bin/env python3
"""Checks openapi.yaml against the server's code (part of `make test`): the document parses,
every $ref resolves, every route the server answers is described, every problem code the server
can send is in the Problem schema's enum, every operation describes the HTTP answers any route
can give (400, 403, 405 with Allow, 408, 413, 417, 431; 415 where the server reads a JSON body),
the exchange request schema accepts the contract's example and refuses an unknown member, and
its `data` lists the field catalogue and refuses other names (the server does the same; see
ExchangeTests), and the consent recipients `kind:<kind>` are the partner kinds of the registry."""
import glob, json, os, re, sys
import jsonschema, yaml

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
doc = yaml.safe_load(open(os.path.join(root, "openapi.yaml")))
failed = []


def resolve(ref):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def walk(node, where):
    if isinstance(node, dict):
        if "$ref" in node:
            try:
                resolve(node["$ref"])
            except KeyError:
                failed.append(f"{where}: unresolved $ref {node['$ref']}")
        for k, v in node.items():
            walk(v, f"{where}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{where}/{i}")


walk(doc, "#")

# Routes the server answers (route templates in the Swift sources).
sources = "".join(open(p).read() for p in glob.glob(os.path.join(root, "Sources", "KetenpoortServer", "*.swift")))
expected = {
    "/v1/whoami", "/v1/exchanges", "/v1/exchanges/{id}", "/v1/consents", "/v1/consents/{id}/withdraw", "/v1/facts", "/v1/inbox",
    "/v1/inbox/{id}/ack", "/v1/reviews", "/v1/reviews/{id}", "/v1/reidentifications", "/v1/audit/checkpoint", "/v1/audit/public-key",
    "/v1/audit/consistency", "/v1/audit/entries", "/v1/audit/entries/{sequence}/proof", "/console/", "/health", "/health/live", "/metrics",
}
for path in sorted(expected - set(doc["paths"])):
    failed.append(f"route {path} is served but not described")
for path in sorted(set(doc["paths"]) - expected):
    failed.append(f"route {path} is described but not in this check's list of served routes")

# Problem codes: every KetenpoortError.Code the HTTP layer maps, and those defined in the server.
codes = set(doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
mapped = set(re.findall(r"case \.(\w+): return \(\.", sources))
core = open(os.path.join(root, "Sources", "KetenpoortCore", "KetenpoortError.swift")).read()
names = dict(re.findall(r'static let (\w+) = Code\("([a-z_]+)"\)', core))
names.update(dict(re.findall(r'static let (\w+) = KetenpoortError\.Code\("([a-z_]+)"\)', sources)))
for name in sorted(mapped):
    if name in names and names[name] not in codes:
        failed.append(f"problem code {names[name]} can be sent but is not in the Problem enum")

# HTTP answers every route can give (the connection handler and the identification run before
# any route's own code), and 415 wherever a JSON body is read.
operations = lambda: ((path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items() if method != "servers")
operations_listener = {"/health", "/health/live", "/metrics"}
json_routes = set(re.findall(r'"([^"]+)"', re.search(r"jsonBodyRoutes: Set<String> = \[([^\]]*)\]", sources).group(1)))
for path, method, op in operations():
    codes_here = set(op.get("responses", {}))
    needed = {"400"} if path in operations_listener else {"400", "403", "405", "408", "413", "417", "431"}
    if "requestBody" in op:
        needed.add("415")
    for status in sorted(needed - codes_here):
        failed.append(f"{method.upper()} {path} does not describe {status}, which it can answer")
    if "405" in codes_here:
        answer = op["responses"]["405"]
        answer = resolve(answer["$ref"]) if "$ref" in answer else answer
        if "Allow" not in answer.get("headers", {}):
            failed.append(f"{method.upper()} {path}: 405 without the Allow header")
    if method == "post" and ("requestBody" in op) != (path in json_routes):
        failed.append(f"POST {path}: the server {'reads' if path in json_routes else 'does not read'} a JSON body, openapi.yaml says otherwise")

# The exchange request schema: the contract's example passes, an unknown member does not.
schema = dict(doc["components"]["schemas"]["ExchangeRequest"])
example = {
    "caseTable": "mda-zhz", "purpose": "safety-assessment", "recipient": "veilig-thuis-zhz", "caseRef": "x",
    "basis": {"type": "consent", "consentIds": ["c-1"]}, "subjects": [{"bsn": "999990019", "role": "child"}],
    "data": {"identity": {"bsn": "999990019", "name": "n", "birthDate": "2015-04-01"}, "concern_signal": {"summary": "s"}},
}
jsonschema.validate(example, schema)
try:
    jsonschema.validate(dict(example, colour="blue"), schema)
    failed.append("ExchangeRequest accepts an unknown member")
except jsonschema.ValidationError:
    pass

# `data`: the field catalogue (Vocabulary.fields), category by category; any other name is refused.
vocabulary = open(os.path.join(root, "Sources", "KetenpoortPolicy", "Vocabulary.swift")).read()
block = vocabulary[vocabulary.index("public static let fields"):]
block = block[:block.index("\n    ]\n")]
catalogue = {c: set(re.findall(r'"(\w+)"', f)) for c, f in re.findall(r'"(\w+)": \[([^\]]*)\]', block)}
described = {c: set((s.get("properties") or {}).keys()) for c, s in schema["properties"]["data"]["properties"].items()}
if not catalogue:
    failed.append("the field catalogue (Vocabulary.fields) was not found in Vocabulary.swift")
for c, category in schema["properties"]["data"]["properties"].items():
    if category.get("additionalProperties") is not False:
        failed.append(f"ExchangeRequest.data.{c} accepts fields outside the catalogue")
for c in sorted(set(described) | set(catalogue)):
    if described.get(c) != catalogue.get(c):
        failed.append(f"ExchangeRequest.data.{c} lists {sorted(described.get(c, []))}, the field catalogue {sorted(catalogue.get(c, []))}")
for name, data in [("category", dict(example["data"], notes={"x": "y"})), ("field", dict(example["data"], identity={"nickname": "n"}))]:
    try:
        jsonschema.validate(dict(example, data=data), schema)
        failed.append(f"ExchangeRequest accepts an unknown data {name}")
    except jsonschema.ValidationError:
        pass

# Consent recipients of the form `kind:<kind>`: exactly the partner kinds of the registry.
registry = open(os.path.join(root, "Sources", "KetenpoortPolicy", "PartnerRegistry.swift")).read()
kinds = set(re.findall(r'"([a-z_]+)"', re.search(r"partnerKinds: Set<String> = \[(.*?)\]", registry, re.S).group(1)))
consent = doc["paths"]["/v1/consents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
described = {k[len("kind:"):] for k in consent["properties"]["recipients"]["items"]["anyOf"][1]["enum"]}
if described != kinds:
    failed.append(f"consent recipients `kind:<kind>` differ from partnerKinds: {sorted(described ^ kinds)}")

for f in failed:
    print(f"openapi.yaml: {f}")
if failed:
    sys.exit(1)
print(f"openapi.yaml: {len(doc['paths'])} paths, every $ref resolves, routes and problem codes match the server")
