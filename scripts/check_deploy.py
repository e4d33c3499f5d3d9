#!/usr/bin/env python3
"""Lints the deployment files in deploy/ (no container engine or cluster runs on the
development machines, so they are checked rather than run).

    python3 scripts/check_deploy.py              # check deploy/; exit 1 with `file: problem` lines
    python3 scripts/check_deploy.py --self-test  # show that each check fails on a broken copy

Groups: YAML parsing, example configurations (only documented keys), Kubernetes manifests,
kustomize (offline) and `kubectl apply --dry-run=client` (skipped when it needs a cluster),
the Containerfile, the systemd unit (and `systemd-analyze verify`/`security` when available),
the Prometheus rules, and a scan for secrets.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover
    print("check_deploy: PyYAML is missing (python3 -m pip install pyyaml)", file=sys.stderr)
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = "deploy"
K8S = "deploy/kubernetes"
CONTAINERFILE = "deploy/container/Containerfile"
UNIT = "deploy/systemd/ketenpoort.service"
ALERTS = "deploy/monitoring/alerts.yaml"
BINARY = "/usr/local/bin/ketenpoort"
STATE_DIR = "/var/lib/ketenpoort"
CREDENTIALS_DIR = "/run/credentials/ketenpoort.service"
# Being added with the PostgreSQL backend (not in docs/configuration.md yet).
EXTRA_CONFIG_KEYS = {"database_password_file"}
EXTRA_ENV = {"KETENPOORT_DATABASE_PASSWORD_FILE"}
# Templates that must never be applied with the kustomization.
NOT_IN_KUSTOMIZATION = {"secret.yaml", "policies.yaml"}


class Bundle:
    """Everything the checks look at, loaded once; the self-test mutates deep copies."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}        # every file under deploy/ (relative path -> text)
        self.yaml: dict[str, list] = {}        # YAML files -> documents (None if unparsable)
        self.yaml_errors: dict[str, str] = {}
        self.doc_keys: set[str] = set()        # documented configuration keys: `a` and `a.b`
        self.doc_env: set[str] = set()         # documented KETENPOORT_* variables
        self.doc_metrics: set[str] = set()     # documented metric names

    @classmethod
    def load(cls, root: Path) -> "Bundle":
        b = cls()
        for path in sorted((root / DEPLOY).rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            try:
                b.texts[rel] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                b.texts[rel] = ""
                b.yaml_errors[rel] = "not UTF-8 text"
        b.reparse()
        docs = (root / "docs/configuration.md").read_text(encoding="utf-8")
        for block in re.findall(r"```yaml\n(.*?)```", docs, re.S):
            try:
                data = yaml.safe_load(block)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict):
                for key, value in data.items():
                    b.doc_keys.add(key)
                    if isinstance(value, dict):
                        b.doc_keys.update(f"{key}.{sub}" for sub in value)
        b.doc_env = set(re.findall(r"`(KETENPOORT_[A-Z_]+)`", docs))
        metrics = docs.split("## Metrics", 1)[1] if "## Metrics" in docs else ""
        b.doc_metrics = set(re.findall(r"`(ketenpoort_[a-z_]+)`", metrics))
        return b

    def reparse(self) -> None:
        """Parses the YAML files from `texts` (after a mutation of a text)."""
        self.yaml = {}
        for rel, text in self.texts.items():
            if not rel.endswith((".yaml", ".yml")) or rel in self.yaml_errors:
                continue
            try:
                self.yaml[rel] = [d for d in yaml.safe_load_all(text)]
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f"line {mark.line + 1}: " if mark else ""
                self.yaml_errors[rel] = f"{where}not valid YAML ({getattr(error, 'problem', error)})"

    # Views -------------------------------------------------------------------------------
    def configs(self) -> dict[str, dict]:
        """Example gateway configurations: deploy/**/ketenpoort*.yaml."""
        out = {}
        for rel, docs in self.yaml.items():
            if re.fullmatch(r"ketenpoort.*\.ya?ml", Path(rel).name):
                out[rel] = docs[0] if len(docs) == 1 else docs
        return out

    def manifests(self) -> list[tuple[str, dict]]:
        out = []
        for rel, docs in self.yaml.items():
            if not rel.startswith(K8S + "/") or Path(rel).name.startswith("ketenpoort"):
                continue
            for doc in docs:
                if isinstance(doc, dict) and "kind" in doc and doc.get("kind") != "Kustomization":
                    out.append((rel, doc))
        return out

    def kustomization(self) -> dict | None:
        docs = self.yaml.get(K8S + "/kustomization.yaml")
        return docs[0] if docs else None

    def units(self) -> dict[str, str]:
        return {r: t for r, t in self.texts.items() if r.startswith("deploy/systemd/") and r.endswith((".service", ".conf"))}


class Report:
    def __init__(self) -> None:
        self.findings: list[tuple[str, str, str]] = []   # (group, file, message)
        self.notes: list[tuple[str, str]] = []   # (group, what an external tool said or why it was skipped)

    def note(self, group: str, text: str) -> None:
        self.notes.append((group, text))

    def fail(self, group: str, file: str, message: str) -> None:
        self.findings.append((group, file, message))


# ------------------------------------------------------------------------------------------
# YAML and example configurations
# ------------------------------------------------------------------------------------------
def check_yaml(b: Bundle, r: Report) -> None:
    for rel, error in b.yaml_errors.items():
        r.fail("yaml", rel, error)
    for rel, docs in b.yaml.items():
        if not any(d is not None for d in docs):
            r.fail("yaml", rel, "no YAML document")


POSTGRES_URL = re.compile(r"postgres(?:ql)?://[^\s\"']+")


def check_postgres_urls(b: Bundle, r: Report) -> None:
    for rel, text in b.texts.items():
        for url in POSTGRES_URL.findall(text):
            userinfo = url.split("://", 1)[1].split("@", 1)[0] if "@" in url else ""
            if ":" in userinfo:
                r.fail("configs", rel, f"a password in the PostgreSQL URL `{url}`: use database_password_file")
            elif "sslmode=verify-full" not in url:
                r.fail("configs", rel, f"PostgreSQL URL `{url}` without sslmode=verify-full")
            elif "sslrootcert=" not in url and "PGSSLROOTCERT" not in text:
                r.fail("configs", rel, f"PostgreSQL URL `{url}` without sslrootcert= (the service user has no ~/.postgresql/root.crt)")


def check_configs(b: Bundle, r: Report) -> None:
    allowed = b.doc_keys | EXTRA_CONFIG_KEYS
    configs = b.configs()
    if not configs:
        r.fail("configs", DEPLOY, "no example configuration (deploy/**/ketenpoort*.yaml)")
    for rel, cfg in configs.items():
        if not isinstance(cfg, dict):
            r.fail("configs", rel, "must be one YAML mapping")
            continue
        for key, value in cfg.items():
            if key not in allowed:
                r.fail("configs", rel, f"key `{key}` is not documented in docs/configuration.md")
            elif isinstance(value, dict):
                for sub in value:
                    if f"{key}.{sub}" not in allowed:
                        r.fail("configs", rel, f"key `{key}.{sub}` is not documented in docs/configuration.md")
        tls = cfg.get("tls") if isinstance(cfg.get("tls"), dict) else {}
        for required in ("certificate", "key", "client_ca"):
            if required not in tls:
                r.fail("configs", rel, f"`tls.{required}` is missing (the gateway requires it)")
        for text in _scalars(cfg):
            if "PRIVATE KEY" in text or "BEGIN " in text:
                r.fail("configs", rel, "PEM content inline: configurations name files, they never hold keys")
        if cfg.get("database_password_file") and not str(cfg.get("database", "")).startswith("postgres"):
            r.fail("configs", rel, "database_password_file without a PostgreSQL `database` URL")
    # The configuration embedded in configmap.yaml equals deploy/kubernetes/ketenpoort.yaml.
    for rel, doc in b.manifests():
        if doc.get("kind") == "ConfigMap" and "ketenpoort.yaml" in (doc.get("data") or {}):
            embedded = yaml.safe_load(doc["data"]["ketenpoort.yaml"])
            mine = configs.get(K8S + "/ketenpoort.yaml")
            if mine is None:
                r.fail("configs", K8S + "/ketenpoort.yaml", "missing (configmap.yaml embeds it)")
            elif embedded != mine:
                r.fail("configs", rel, f"ConfigMap {doc['metadata'].get('name')}: `ketenpoort.yaml` differs from {K8S}/ketenpoort.yaml")
            if embedded.get("ops_listen", "").split(":")[0] not in ("0.0.0.0", "[::]"):
                r.fail("configs", rel, "ops_listen must listen on the pod address (0.0.0.0:9443) for probes and Prometheus")
    # Environment variables used by the deployment files are documented.
    env_names = set()
    for rel, text in b.texts.items():
        env_names.update((rel, n) for n in re.findall(r"\bKETENPOORT_[A-Z_]+", text))
    for rel, name in sorted(env_names):
        if name not in b.doc_env | EXTRA_ENV:
            r.fail("configs", rel, f"environment variable {name} is not documented in docs/configuration.md")
    check_postgres_urls(b, r)


def _scalars(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _scalars(v)
    elif isinstance(node, list):
        for v in node:
            yield from _scalars(v)
    elif isinstance(node, str):
        yield node


# ------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------
def _subset(small: dict | None, big: dict | None) -> bool:
    return bool(small) and all((big or {}).get(k) == v for k, v in small.items())


def _name(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _pod_spec(doc: dict) -> tuple[dict, dict] | None:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = ((doc.get("spec") or {}).get("template") or {})
        return template.get("metadata") or {}, template.get("spec") or {}
    if kind == "CronJob":
        template = (((doc.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        return template.get("metadata") or {}, template.get("spec") or {}
    return None


def _probe_path(container: dict, probe: str) -> str | None:
    return (((container.get(probe) or {}).get("httpGet")) or {}).get("path")


def _port_refers(port, container: dict, number: int) -> bool:
    for p in container.get("ports") or []:
        if p.get("containerPort") == number and (port == number or port == p.get("name")):
            return True
    return False


def check_pod_security(rel: str, doc: dict, r: Report) -> None:
    g = "kubernetes"
    meta, spec = _pod_spec(doc)
    name = _name(doc)
    pod_sc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        r.fail(g, rel, f"{name}: automountServiceAccountToken must be false")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            r.fail(g, rel, f"{name}: {flag} must not be set")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_sc.get("runAsUser") == 0:
        r.fail(g, rel, f"{name}: runAsUser 0 (root)")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not containers:
        r.fail(g, rel, f"{name}: no containers")
    for c in containers:
        cn = f"{name} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            r.fail(g, rel, f"{cn}: runAsNonRoot must be true")
        if sc.get("runAsUser") == 0:
            r.fail(g, rel, f"{cn}: runAsUser 0 (root)")
        if sc.get("readOnlyRootFilesystem") is not True:
            r.fail(g, rel, f"{cn}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            r.fail(g, rel, f"{cn}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            r.fail(g, rel, f"{cn}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            r.fail(g, rel, f"{cn}: capabilities must drop ALL")
        if caps.get("add"):
            r.fail(g, rel, f"{cn}: adds capabilities {caps['add']}")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            r.fail(g, rel, f"{cn}: seccompProfile must be RuntimeDefault")
        res = c.get("resources") or {}
        if not res.get("requests") or not res.get("limits") or "memory" not in (res.get("limits") or {}):
            r.fail(g, rel, f"{cn}: resources need requests and limits (at least a memory limit)")
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m.get("name"))
            if vol is None:
                r.fail(g, rel, f"{cn}: volumeMount `{m.get('name')}` has no volume")
                continue
            if "secret" in vol and m.get("readOnly") is not True:
                r.fail(g, rel, f"{cn}: secret volume `{m.get('name')}` must be mounted readOnly")
    for vname, vol in volumes.items():
        if "secret" in vol:
            mode = (vol["secret"] or {}).get("defaultMode")
            if mode not in (0o400, 0o440):
                r.fail(g, rel, f"{name}: secret volume `{vname}` defaultMode must be 0400 or 0440 (the gateway refuses keys others can read)")
            elif mode == 0o440 and not pod_sc.get("fsGroup"):
                r.fail(g, rel, f"{name}: secret volume `{vname}` with mode 0440 needs a pod fsGroup")
            elif mode == 0o400 and pod_sc.get("runAsUser") not in (None, 0) and not pod_sc.get("fsGroup"):
                r.fail(g, rel, f"{name}: secret volume `{vname}`: mode 0400 files are root's; use 0440 with fsGroup")
        if "hostPath" in vol:
            r.fail(g, rel, f"{name}: hostPath volume `{vname}`")


def check_kubernetes(b: Bundle, r: Report) -> None:
    g = "kubernetes"
    manifests = b.manifests()
    if not manifests:
        r.fail(g, K8S, "no manifests")
        return
    by_kind: dict[str, list[tuple[str, dict]]] = {}
    for rel, doc in manifests:
        by_kind.setdefault(doc.get("kind"), []).append((rel, doc))
        if not (doc.get("metadata") or {}).get("name"):
            r.fail(g, rel, f"{doc.get('kind')} without metadata.name")
    namespaces = {(d.get("metadata") or {}).get("namespace") for _, d in manifests if d.get("kind") != "Namespace"} - {None}
    if len(namespaces) > 1:
        r.fail(g, K8S, f"manifests use several namespaces: {sorted(namespaces)}")
    defined = {(d.get("kind"), d["metadata"]["name"]) for _, d in manifests if (d.get("metadata") or {}).get("name")}

    # Secrets are templates: no values.
    if not by_kind.get("Secret"):
        r.fail(g, K8S, "no Secret template")
    for rel, doc in by_kind.get("Secret", []):
        for section in ("data", "stringData"):
            for key, value in (doc.get(section) or {}).items():
                if value not in (None, ""):
                    r.fail(g, rel, f"{_name(doc)}: {section}.{key} has a value; secret.yaml is a template, values stay empty")

    deployments = by_kind.get("Deployment", [])
    if not deployments:
        r.fail(g, K8S, "no Deployment")
    pod_labels_all = []
    for rel, doc in manifests:
        if _pod_spec(doc) is not None:
            check_pod_security(rel, doc, r)
            _check_references(rel, doc, defined, r)
    for rel, doc in deployments:
        name = _name(doc)
        spec = doc.get("spec") or {}
        meta, pod = _pod_spec(doc)
        labels = meta.get("labels") or {}
        pod_labels_all.append((rel, doc, labels))
        if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 2:
            r.fail(g, rel, f"{name}: replicas must be 2 or more (got {spec.get('replicas')})")
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not _subset(selector, labels):
            r.fail(g, rel, f"{name}: selector.matchLabels {selector} does not match the pod template labels {labels}")
        strategy = spec.get("strategy") or {}
        unavailable = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")
        if strategy.get("type", "RollingUpdate") != "RollingUpdate" or unavailable not in (0, 1):
            r.fail(g, rel, f"{name}: strategy must be RollingUpdate with maxUnavailable 0 or 1")
        notes = meta.get("annotations") or {}
        if notes.get("prometheus.io/scrape") != "true":
            r.fail(g, rel, f"{name}: pod annotation prometheus.io/scrape must be \"true\"")
        if notes.get("prometheus.io/port") != "9443":
            r.fail(g, rel, f"{name}: pod annotation prometheus.io/port must be \"9443\"")
        if notes.get("prometheus.io/path") != "/metrics":
            r.fail(g, rel, f"{name}: pod annotation prometheus.io/path must be /metrics")
        anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {})
        terms = anti.get("preferredDuringSchedulingIgnoredDuringExecution") or anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
        if not any(((t.get("podAffinityTerm") or t).get("topologyKey") == "kubernetes.io/hostname") for t in terms):
            r.fail(g, rel, f"{name}: no pod anti-affinity across nodes (topologyKey kubernetes.io/hostname)")
        for t in terms:
            sel = ((t.get("podAffinityTerm") or t).get("labelSelector") or {}).get("matchLabels")
            if not _subset(sel, labels):
                r.fail(g, rel, f"{name}: anti-affinity labelSelector {sel} does not select the pods")
        for c in pod.get("containers") or []:
            cn = f"{name} container {c.get('name')}"
            ports = {p.get("containerPort") for p in c.get("ports") or []}
            for needed in (8443, 9443):
                if needed not in ports:
                    r.fail(g, rel, f"{cn}: containerPort {needed} missing")
            if _probe_path(c, "readinessProbe") != "/health":
                r.fail(g, rel, f"{cn}: readinessProbe must be httpGet /health")
            elif not _port_refers(c["readinessProbe"]["httpGet"].get("port"), c, 9443):
                r.fail(g, rel, f"{cn}: readinessProbe must use the operations port 9443")
            if _probe_path(c, "livenessProbe") != "/health/live":
                r.fail(g, rel, f"{cn}: livenessProbe must be httpGet /health/live")
            elif not _port_refers(c["livenessProbe"]["httpGet"].get("port"), c, 9443):
                r.fail(g, rel, f"{cn}: livenessProbe must use the operations port 9443")
            database = next((e.get("value") for e in c.get("env") or [] if e.get("name") == "KETENPOORT_DATABASE"), None)
            if not str(database or "").startswith("postgresql://"):
                r.fail(g, rel, f"{cn}: env KETENPOORT_DATABASE must be a postgresql:// URL (several pods share one database)")
            if c.get("image", "").endswith(":latest") or ":" not in c.get("image", ""):
                r.fail(g, rel, f"{cn}: pin the image tag (not latest)")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < 15:
                r.fail(g, rel, f"{name}: terminationGracePeriodSeconds {grace} leaves no time for a graceful shutdown")

    def selects_gateway(sel):
        return any(_subset(sel, labels) for _, _, labels in pod_labels_all)

    pdbs = by_kind.get("PodDisruptionBudget", [])
    if not any(selects_gateway((d.get("spec") or {}).get("selector", {}).get("matchLabels")) for _, d in pdbs):
        r.fail(g, K8S, "no PodDisruptionBudget selects the Deployment's pods")
    for rel, doc in pdbs:
        spec = doc.get("spec") or {}
        if not selects_gateway((spec.get("selector") or {}).get("matchLabels")):
            r.fail(g, rel, f"{_name(doc)}: selector matches no pod template")
        if "minAvailable" not in spec and "maxUnavailable" not in spec:
            r.fail(g, rel, f"{_name(doc)}: needs minAvailable or maxUnavailable")
        minimum = spec.get("minAvailable")
        for _, dep, _ in pod_labels_all:
            replicas = (dep.get("spec") or {}).get("replicas", 1)
            if isinstance(minimum, int) and isinstance(replicas, int) and minimum >= replicas:
                r.fail(g, rel, f"{_name(doc)}: minAvailable {minimum} >= replicas {replicas} blocks every node drain")

    services = by_kind.get("Service", [])
    if not any(selects_gateway((d.get("spec") or {}).get("selector")) for _, d in services):
        r.fail(g, K8S, "no Service selects the Deployment's pods")
    ports_seen = set()
    for rel, doc in services:
        spec = doc.get("spec") or {}
        if not selects_gateway(spec.get("selector")):
            r.fail(g, rel, f"{_name(doc)}: selector {spec.get('selector')} matches no pod template")
            continue
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            matched = None
            for _, dep, _ in pod_labels_all:
                for c in _pod_spec(dep)[1].get("containers") or []:
                    for p in c.get("ports") or []:
                        if target in (p.get("name"), p.get("containerPort")):
                            matched = p.get("containerPort")
            if matched is None:
                r.fail(g, rel, f"{_name(doc)}: targetPort {target} is no container port")
            ports_seen.add((spec.get("type", "ClusterIP"), port.get("port"), matched))
            if matched == 9443 and spec.get("type", "ClusterIP") != "ClusterIP":
                r.fail(g, rel, f"{_name(doc)}: the operations port (plain HTTP) must stay on a ClusterIP Service")
    if not any(p == 443 and m == 8443 for _, p, m in ports_seen):
        r.fail(g, K8S, "no Service maps port 443 to the partners' port 8443")
    if not any(t == "ClusterIP" and m == 9443 for t, _, m in ports_seen):
        r.fail(g, K8S, "no ClusterIP Service for the operations port 9443")

    for rel, doc in by_kind.get("NetworkPolicy", []):
        sel = ((doc.get("spec") or {}).get("podSelector") or {}).get("matchLabels")
        if sel and not selects_gateway(sel):
            r.fail(g, rel, f"{_name(doc)}: podSelector {sel} matches no pod template")

    check_kustomization(b, r, defined)


def _check_references(rel: str, doc: dict, defined: set, r: Report) -> None:
    meta, spec = _pod_spec(doc)
    name = _name(doc)
    refs = []
    for v in spec.get("volumes") or []:
        if "configMap" in v:
            refs.append(("ConfigMap", (v["configMap"] or {}).get("name")))
        if "secret" in v:
            refs.append(("Secret", (v["secret"] or {}).get("secretName")))
        for src in ((v.get("projected") or {}).get("sources") or []):
            if "configMap" in src:
                refs.append(("ConfigMap", src["configMap"].get("name")))
            if "secret" in src:
                refs.append(("Secret", src["secret"].get("name")))
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for e in c.get("envFrom") or []:
            if "configMapRef" in e:
                refs.append(("ConfigMap", e["configMapRef"].get("name")))
            if "secretRef" in e:
                refs.append(("Secret", e["secretRef"].get("name")))
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "configMapKeyRef" in vf:
                refs.append(("ConfigMap", vf["configMapKeyRef"].get("name")))
            if "secretKeyRef" in vf:
                refs.append(("Secret", vf["secretKeyRef"].get("name")))
    sa = spec.get("serviceAccountName")
    if sa and sa != "default":
        refs.append(("ServiceAccount", sa))
    for kind, ref in refs:
        if (kind, ref) not in defined:
            r.fail("kubernetes", rel, f"{name} refers to {kind} `{ref}`, which no manifest in {K8S} defines")


def check_kustomization(b: Bundle, r: Report, defined: set) -> None:
    g = "kubernetes"
    rel = K8S + "/kustomization.yaml"
    k = b.kustomization()
    if k is None:
        r.fail(g, rel, "missing")
        return
    resources = k.get("resources") or []
    for res in resources:
        if (K8S + "/" + res) not in b.texts:
            r.fail(g, rel, f"resource `{res}` does not exist")
        if Path(res).name in NOT_IN_KUSTOMIZATION:
            r.fail(g, rel, f"`{res}` is a template; applying it would replace real Secrets or policies")
    listed = {K8S + "/" + x for x in resources}
    for name in ("deployment.yaml", "pdb.yaml", "service.yaml", "configmap.yaml"):
        if K8S + "/" + name not in listed:
            r.fail(g, rel, f"`{name}` is not in resources")


def _write_files(root: str, files: dict[str, str]) -> None:
    """Writes `files` (relative path -> text) below `root`, creating directories."""
    for rel, text in files.items():
        target = Path(root) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def run_kubectl(b: Bundle, r: Report) -> None:
    """`kubectl kustomize` works offline; `kubectl apply --dry-run=client` needs the API
    server's discovery, so it is skipped when no cluster answers. A throwaway kubeconfig keeps
    the check from ever reaching a real cluster."""
    g = "kubectl"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        r.note("kubectl", "not on PATH, skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, KUBECONFIG=os.path.join(tmp, "kubeconfig"), HOME=tmp)
        Path(env["KUBECONFIG"]).write_text("")
        _write_files(tmp, {rel: text for rel, text in b.texts.items() if rel.startswith(K8S + "/")})
        try:
            built = subprocess.run([kubectl, "kustomize", str(Path(tmp) / K8S)], capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            r.fail(g, K8S, "kubectl kustomize timed out")
            return
        if built.returncode != 0:
            last = (built.stderr.strip().splitlines() or ["no output"])[-1]
            r.fail(g, K8S + "/kustomization.yaml", f"kubectl kustomize failed: {last}")
            return
        kinds = [d.get("kind") for d in yaml.safe_load_all(built.stdout) if isinstance(d, dict)]
        for needed in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap"):
            if needed not in kinds:
                r.fail(g, K8S + "/kustomization.yaml", f"kubectl kustomize output has no {needed}")
        r.note("kubectl", f"kustomize renders {len(kinds)} objects")
        try:
            dry = subprocess.run(
                [kubectl, "apply", "--dry-run=client", "--validate=false", "-o", "name", "-f", "-", "--request-timeout=5s"],
                input=built.stdout, capture_output=True, text=True, timeout=60, env=env)
        except subprocess.TimeoutExpired:
            r.note("kubectl", "apply --dry-run=client timed out: skipped")
            return
        if dry.returncode == 0:
            r.note("kubectl", f"apply --dry-run=client accepts {len(dry.stdout.split())} objects")
        elif re.search(r"connection refused|couldn't get current server API|unable to recognize|dial tcp|no such host|i/o timeout", dry.stderr):
            r.note("kubectl", "apply --dry-run=client skipped: it needs an API server and none runs here")
        else:
            r.fail(g, K8S, f"kubectl apply --dry-run=client: {(dry.stderr.strip().splitlines() or ['failed'])[-1]}")


# ------------------------------------------------------------------------------------------
# Containerfile
# ------------------------------------------------------------------------------------------
def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


COMPILERS = {"gcc", "g++", "clang", "cc", "build-essential", "swiftlang", "swift", "make", "cmake", "binutils"}
SECRET_NAME = re.compile(r"(\.key|\.pem|\.p12|\.pfx|\.crt|master|credential|secret|\.demo|Certs)", re.I)


def check_containerfile(b: Bundle, r: Report) -> None:
    g = "containerfile"
    rel = CONTAINERFILE
    text = b.texts.get(rel)
    if text is None:
        r.fail(g, rel, "missing")
        return
    ins = _instructions(text)
    stages: list[list[tuple[int, str, str]]] = []
    for item in ins:
        if item[1] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    if len(stages) < 2:
        r.fail(g, rel, f"needs a build stage and a runtime stage ({len(stages)} FROM)")
    if not stages:
        return
    args = {}
    for _, word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
    final = stages[-1]
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), final[0][2].split()[0])
    if "swift" in base.split("/")[-1]:
        r.fail(g, rel, f"the final stage runs on the Swift toolchain image `{base}`")
    users = [rest for _, word, rest in final if word == "USER"]
    if not users:
        r.fail(g, rel, "the final stage sets no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0", ""):
            r.fail(g, rel, f"the final stage runs as root (USER {users[-1]})")
        elif not user.isdigit():
            r.fail(g, rel, f"USER {users[-1]}: use a numeric UID so that runAsNonRoot can verify it")
    for line, word, rest in final:
        if word == "RUN":
            for match in re.finditer(r"apt(?:-get)?\s+install\s+([^&;|]+)", rest):
                for pkg in match.group(1).split():
                    if pkg.startswith("-"):
                        continue
                    if pkg.endswith("-dev") or pkg.split("=")[0] in COMPILERS or re.fullmatch(r"(gcc|g\+\+|clang)(-\d+)?", pkg):
                        r.fail(g, rel, f"line {line}: the final stage installs `{pkg}` (build tools stay in the build stage)")
    for line, word, rest in ins:
        if word in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            if rest.startswith("["):
                parts = [p.strip(' "[]') for p in rest.split(",")]
            for src in parts[:-1]:
                if SECRET_NAME.search(src):
                    r.fail(g, rel, f"line {line}: {word} `{src}`: keys and certificates are mounted at run time, never built in")
            if word == "ADD" and any(p.startswith(("http://", "https://")) for p in parts):
                r.fail(g, rel, f"line {line}: ADD from a URL (unverified download)")
    entry = [rest for _, word, rest in final if word == "ENTRYPOINT"]
    if not entry:
        r.fail(g, rel, "no ENTRYPOINT in the final stage")
    else:
        try:
            value = json.loads(entry[-1])
        except ValueError:
            value = None
        if value != [BINARY]:
            r.fail(g, rel, f"ENTRYPOINT must be [\"{BINARY}\"] (exec form, the binary itself), not {entry[-1]}")
    if not any(word == "COPY" and "--from=" in rest and rest.split()[-1] == BINARY for _, word, rest in final):
        r.fail(g, rel, f"the final stage does not COPY --from the build stage to {BINARY}")
    expose = " ".join(rest for _, word, rest in final if word == "EXPOSE").split()
    for port in ("8443", "9443"):
        if port not in [p.split("/")[0] for p in expose]:
            r.fail(g, rel, f"EXPOSE {port} missing")
    build_runs = " ".join(rest for stage in stages[:-1] for _, word, rest in stage if word == "RUN")
    if "swift build" not in build_runs or "-c release" not in build_runs or "--static-swift-stdlib" not in build_runs:
        r.fail(g, rel, "the build stage must run `swift build -c release --static-swift-stdlib`")


# ------------------------------------------------------------------------------------------
# systemd
# ------------------------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current, buf = None, ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped[0] in "#;"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        stripped, buf = buf + stripped, ""
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped[1:-1]
            sections.setdefault(current, [])
        elif "=" in stripped and current:
            key, _, value = stripped.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def _values(unit: dict, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def _last(unit: dict, key: str, section: str = "Service") -> str | None:
    values = _values(unit, key, section)
    return values[-1] if values else None


def _seconds(value: str | None) -> float:
    if not value:
        return 90.0
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(min|ms|s|m|h)?", value):
        total += float(number) * {"ms": 0.001, "s": 1, "": 1, "min": 60, "m": 60, "h": 3600}[unit or ""]
    return total


YES = {"yes", "true", "1", "on"}


def check_systemd(b: Bundle, r: Report) -> None:
    g = "systemd"
    units = b.units()
    if UNIT not in units:
        r.fail(g, UNIT, "missing")
        return
    unit = parse_unit(units[UNIT])
    if "Service" not in unit:
        r.fail(g, UNIT, "no [Service] section")
        return
    want_yes = ["NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute"]
    for key in want_yes:
        if (_last(unit, key) or "").lower() not in YES:
            r.fail(g, UNIT, f"{key}=yes missing")
    if _last(unit, "ProtectSystem") != "strict":
        r.fail(g, UNIT, f"ProtectSystem=strict missing (got {_last(unit, 'ProtectSystem')})")
    if (_last(unit, "ProtectHome") or "").lower() not in YES | {"read-only", "tmpfs"}:
        r.fail(g, UNIT, "ProtectHome=yes missing")
    user = _last(unit, "User")
    if not user or user in ("root", "0"):
        r.fail(g, UNIT, f"User= must be a dedicated non-root user (got {user})")
    if (_last(unit, "DynamicUser") or "no").lower() in YES:
        r.fail(g, UNIT, "DynamicUser=yes: the audit log's owner must be stable")
    families = set(" ".join(_values(unit, "RestrictAddressFamilies")).split())
    if not families or families - {"AF_INET", "AF_INET6", "AF_UNIX"} or any(f.startswith("~") for f in families):
        r.fail(g, UNIT, f"RestrictAddressFamilies must be AF_INET AF_INET6 AF_UNIX (got {' '.join(sorted(families)) or 'nothing'})")
    filters = _values(unit, "SystemCallFilter")
    if not any("@system-service" in f and not f.startswith("~") for f in filters):
        r.fail(g, UNIT, "SystemCallFilter=@system-service missing")
    if _values(unit, "CapabilityBoundingSet") != [""] and _last(unit, "CapabilityBoundingSet") != "":
        r.fail(g, UNIT, "CapabilityBoundingSet= must be empty (no capability; the gateway listens above 1024)")
    if any(v for v in _values(unit, "AmbientCapabilities")):
        r.fail(g, UNIT, "AmbientCapabilities must be empty")
    if _last(unit, "UMask") not in ("0077", "077"):
        r.fail(g, UNIT, "UMask=0077 missing")
    writable = " ".join(_values(unit, "ReadWritePaths")).split()
    state = " ".join(_values(unit, "StateDirectory")).split()
    if not writable and not state:
        r.fail(g, UNIT, f"no writable state directory (StateDirectory=ketenpoort or ReadWritePaths={STATE_DIR})")
    for path in writable:
        if path.lstrip("-+") != STATE_DIR:
            r.fail(g, UNIT, f"ReadWritePaths={path}: only {STATE_DIR} may be writable")
    for name in state:
        if name != "ketenpoort":
            r.fail(g, UNIT, f"StateDirectory={name}: only ketenpoort ({STATE_DIR})")
    if state and _last(unit, "StateDirectoryMode") not in ("0700", "700"):
        r.fail(g, UNIT, "StateDirectoryMode=0700 missing")
    exec_start = _last(unit, "ExecStart") or ""
    if exec_start.split()[:2] != [BINARY, "serve"] or "--config" not in exec_start:
        r.fail(g, UNIT, f"ExecStart must be `{BINARY} serve --config FILE` (got `{exec_start}`)")
    if _last(unit, "Restart") not in ("on-failure", "always", "on-abnormal"):
        r.fail(g, UNIT, "Restart=on-failure missing")
    if _seconds(_last(unit, "TimeoutStopSec")) < 20:
        r.fail(g, UNIT, "TimeoutStopSec must leave time for limits.shutdown_grace_seconds (at least 20 s)")
    nofile = _last(unit, "LimitNOFILE") or ""
    if not nofile or (nofile.split(":")[0].isdigit() and int(nofile.split(":")[0]) < 8192):
        r.fail(g, UNIT, "LimitNOFILE must be at least 8192 (limits.max_connections is 4096 by default)")
    # Secrets through credentials; the configuration and environment refer to credential names.
    for rel, text in units.items():
        if rel == UNIT:
            continue
        drop = parse_unit(text)
        for key, value in drop.get("Service", []):
            bad = ((key == "ProtectSystem" and value != "strict") or (key == "User" and value in ("root", "0", ""))
                   or (key in want_yes and value.lower() not in YES) or (key == "CapabilityBoundingSet" and value)
                   or (key == "ReadWritePaths" and any(p.lstrip("-+") != STATE_DIR for p in value.split()))
                   or (key == "AmbientCapabilities" and value) or key == "DynamicUser" and value.lower() in YES)
            if bad:
                r.fail(g, rel, f"{key}={value} weakens the unit's sandbox")
    base_credentials = _credential_names(unit)
    keys_credentials = {m for v in _values(unit, "Environment") for m in re.findall(r"KETENPOORT_KEYS=%d/([\w.@-]+)", v)}
    if not ({"ketenpoort-master-key"} | keys_credentials) & base_credentials:
        r.fail(g, UNIT, "no LoadCredential for the master key (ketenpoort-master-key, or the one KETENPOORT_KEYS=%d/… names)")
    dropins = {rel: parse_unit(t) for rel, t in units.items() if rel != UNIT}
    all_credentials = set(base_credentials)
    for d in dropins.values():
        all_credentials |= _credential_names(d)
    for rel, u in [(UNIT, unit)] + list(dropins.items()):
        names = all_credentials if rel != UNIT else base_credentials
        for value in _values(u, "Environment"):
            for name in re.findall(r"%d/([\w.@-]+)", value):
                if name not in names:
                    r.fail(g, rel, f"Environment {value} refers to credential `{name}`, which no LoadCredential= loads")
            if re.search(r"(PASSWORD|SECRET|TOKEN)=(?!%d/)(?!/)", value, re.I):
                r.fail(g, rel, f"Environment {value}: a secret value in the unit; use LoadCredential=")
    tls_key = {m for v in _values(unit, "Environment") for m in re.findall(r"KETENPOORT_TLS_KEY=%d/([\w.@-]+)", v)}
    sqlite_config = (b.configs().get("deploy/systemd/ketenpoort.yaml") or {}).get("tls") or {}
    if str(sqlite_config.get("key", "")).startswith(CREDENTIALS_DIR + "/"):
        tls_key.add(str(sqlite_config["key"])[len(CREDENTIALS_DIR) + 1:])
    if not tls_key & base_credentials:
        r.fail(g, UNIT, "no LoadCredential for the TLS private key")
    for rel, cfg in b.configs().items():
        if not rel.startswith("deploy/systemd/") or not isinstance(cfg, dict):
            continue
        names = base_credentials if "postgres" not in rel else all_credentials
        for value in _scalars(cfg):
            if value.startswith(CREDENTIALS_DIR + "/"):
                name = value[len(CREDENTIALS_DIR) + 1:]
                if name not in names:
                    r.fail(g, rel, f"`{value}`: no LoadCredential={name}: in the unit{' or its drop-in' if names is all_credentials else ''}")
            elif re.search(r"\.key$|password", value) and not value.startswith(CREDENTIALS_DIR):
                r.fail(g, rel, f"`{value}`: private keys and passwords come from the credentials directory under this unit")
        database = str(cfg.get("database", ""))
        if not database.startswith("postgres") and not database.startswith(STATE_DIR + "/"):
            r.fail(g, rel, f"database `{database}` is outside the unit's only writable directory {STATE_DIR}")
        if database.startswith("postgres") and "database-password" not in all_credentials:
            r.fail(g, rel, "a PostgreSQL database but no database-password credential")


def _credential_names(unit: dict) -> set[str]:
    return {v.split(":", 1)[0] for v in _values(unit, "LoadCredential") + _values(unit, "LoadCredentialEncrypted")}


def run_systemd_analyze(b: Bundle, r: Report) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart is /bin/true (the binary is not
    installed here); every message about the copied unit or its drop-ins is a failure."""
    g = "systemd"
    tool = shutil.which("systemd-analyze")
    if not tool:
        r.note("systemd", "systemd-analyze not on PATH: skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        units = {str(Path(rel).relative_to("deploy/systemd")): text for rel, text in b.units().items()}
        unit_name = str(Path(UNIT).relative_to("deploy/systemd"))
        units[unit_name] = re.sub(r"^(ExecStart=)\S+", r"\1/bin/true", units[unit_name], flags=re.M)
        _write_files(tmp, units)
        unit_path = str(Path(tmp) / Path(UNIT).name)
        try:
            result = subprocess.run([tool, "verify", "--man=no", unit_path], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            r.note("systemd", "systemd-analyze verify timed out: skipped")
            return
        ours = [line for line in (result.stdout + result.stderr).splitlines() if tmp in line or "ketenpoort" in line]
        # systemd prints each message twice (once while loading, once in the summary).
        for line in dict.fromkeys(ours):
            r.fail(g, UNIT, "systemd-analyze verify: " + line.replace(tmp + "/", ""))
        if not ours:
            r.note("systemd", "systemd-analyze verify clean, ExecStart pointed at /bin/true")
        try:
            sec = subprocess.run([tool, "security", "--offline=yes", unit_path], capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return
        match = re.search(r"Overall exposure level for \S+: ([\d.]+)", sec.stdout)
        if match:
            level = float(match.group(1))
            if level > 2.0:
                r.fail(g, UNIT, f"systemd-analyze security: exposure {level} (at most 2.0)")
            else:
                r.note("systemd", f"systemd-analyze security exposure {level}")


# ------------------------------------------------------------------------------------------
# Prometheus rules
# ------------------------------------------------------------------------------------------
def check_alerts(b: Bundle, r: Report) -> None:
    g = "monitoring"
    docs = b.yaml.get(ALERTS)
    if not docs:
        r.fail(g, ALERTS, "missing")
        return
    data = docs[0]
    groups = (data or {}).get("groups") if isinstance(data, dict) else None
    if not groups:
        r.fail(g, ALERTS, "no `groups:` (a Prometheus rules file)")
        return
    names = set()
    used_metrics = set()
    for group in groups:
        if not group.get("name") or not group.get("rules"):
            r.fail(g, ALERTS, f"group {group.get('name')} needs a name and rules")
            continue
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            if not name:
                r.fail(g, ALERTS, f"group {group['name']}: a rule without alert or record")
                continue
            if name in names:
                r.fail(g, ALERTS, f"{name}: defined twice")
            names.add(name)
            expr = str(rule.get("expr") or "")
            if not expr.strip():
                r.fail(g, ALERTS, f"{name}: no expr")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                r.fail(g, ALERTS, f"{name}: unbalanced brackets in expr")
            if "alert" in rule:
                if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    r.fail(g, ALERTS, f"{name}: labels.severity must be critical, warning or info")
                if not (rule.get("annotations") or {}).get("summary"):
                    r.fail(g, ALERTS, f"{name}: annotations.summary missing")
                if "for" in rule and not re.fullmatch(r"\d+[smhd]", str(rule["for"])):
                    r.fail(g, ALERTS, f"{name}: `for: {rule['for']}` is not a duration")
            for metric in re.findall(r"\bketenpoort_[a-z_]+", expr):
                used_metrics.add(metric)
                if metric not in b.doc_metrics:
                    r.fail(g, ALERTS, f"{name}: metric {metric} is not in docs/configuration.md (Metrics)")
    if "ketenpoort_audit_write_failures_total" not in used_metrics:
        r.fail(g, ALERTS, "no alert on ketenpoort_audit_write_failures_total")
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "rules", str(ROOT / ALERTS)], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            r.fail(g, ALERTS, "promtool check rules: " + (result.stderr or result.stdout).strip().replace("\n", " | "))
        else:
            r.note("monitoring", "promtool check rules clean")


# ------------------------------------------------------------------------------------------
# Secrets anywhere in deploy/
# ------------------------------------------------------------------------------------------
def check_secrets(b: Bundle, r: Report) -> None:
    g = "secrets"
    for rel, text in b.texts.items():
        if re.search(r"\.(key|pem|p12|pfx|crt|der)$", rel):
            r.fail(g, rel, "a key or certificate file in deploy/: they never live in the repository")
        if re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
            r.fail(g, rel, "a PEM private key")
        if re.search(r"^k\d+ current [A-Za-z0-9+/=]{40,}", text, re.M):
            r.fail(g, rel, "a master key line")


CHECKS = [
    ("yaml", check_yaml),
    ("configs", check_configs),
    ("kubernetes", check_kubernetes),
    ("containerfile", check_containerfile),
    ("systemd", check_systemd),
    ("monitoring", check_alerts),
    ("secrets", check_secrets),
]


def run_checks(b: Bundle, external: bool) -> Report:
    r = Report()
    for _, check in CHECKS:
        try:
            check(b, r)
        except Exception as error:  # a malformed file must be a finding, not a crash
            r.fail(check.__name__.replace("check_", ""), DEPLOY, f"check crashed: {type(error).__name__}: {error}")
    if external:
        run_kubectl(b, r)
        run_systemd_analyze(b, r)
    else:
        r.note("kubectl", "skipped: --offline")
        r.note("systemd", "systemd-analyze skipped: --offline")
    return r


# ------------------------------------------------------------------------------------------
# Self-test: every mutation must be caught
# ------------------------------------------------------------------------------------------
def _doc(b: Bundle, kind: str, name: str | None = None) -> dict:
    for rel, docs in b.yaml.items():
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == kind and (name is None or d["metadata"]["name"] == name) and rel.startswith(K8S):
                return d
    raise LookupError(f"{kind} {name} not found")


def _container(b: Bundle) -> dict:
    return _doc(b, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _text(rel: str, old: str, new: str, regex: bool = False):
    def mutate(b: Bundle) -> None:
        text = b.texts[rel]
        changed = re.sub(old, new, text, count=1, flags=re.M) if regex else text.replace(old, new, 1)
        if changed == text:
            raise AssertionError(f"self-test mutation found nothing to change in {rel}: {old!r}")
        b.texts[rel] = changed
        b.reparse()
    return mutate


MUTATIONS = [
    ("replicas 1", lambda b: _doc(b, "Deployment")["spec"].__setitem__("replicas", 1), "replicas must be 2"),
    ("no readinessProbe", lambda b: _container(b).pop("readinessProbe"), "readinessProbe must be httpGet /health"),
    ("liveness on /health", lambda b: _container(b)["livenessProbe"]["httpGet"].__setitem__("path", "/health"), "livenessProbe must be httpGet /health/live"),
    ("readiness on the partners port", lambda b: _container(b)["readinessProbe"]["httpGet"].__setitem__("port", "partners"), "readinessProbe must use the operations port"),
    ("no prometheus scrape annotation", lambda b: _doc(b, "Deployment")["spec"]["template"]["metadata"]["annotations"].pop("prometheus.io/scrape"), "prometheus.io/scrape"),
    ("runAsNonRoot false", lambda b: (_doc(b, "Deployment")["spec"]["template"]["spec"]["securityContext"].__setitem__("runAsNonRoot", False), _container(b)["securityContext"].pop("runAsNonRoot")), "runAsNonRoot must be true"),
    ("writable root filesystem", lambda b: _container(b)["securityContext"].__setitem__("readOnlyRootFilesystem", False), "readOnlyRootFilesystem must be true"),
    ("privilege escalation", lambda b: _container(b)["securityContext"].__setitem__("allowPrivilegeEscalation", True), "allowPrivilegeEscalation must be false"),
    ("capabilities kept", lambda b: _container(b)["securityContext"].pop("capabilities"), "capabilities must drop ALL"),
    ("a secret with a value", lambda b: _doc(b, "Secret", "ketenpoort-keys")["data"].__setitem__("master.key", "a2V0ZW5wb29ydA=="), "has a value"),
    ("secret mounted writable", lambda b: next(m for m in _container(b)["volumeMounts"] if m["name"] == "keys").__setitem__("readOnly", False), "must be mounted readOnly"),
    ("secret mode 0644", lambda b: next(v for v in _doc(b, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")["secret"].__setitem__("defaultMode", 0o644), "defaultMode must be 0400 or 0440"),
    ("undefined ConfigMap", lambda b: next(v for v in _doc(b, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")["configMap"].__setitem__("name", "ketenpoort-missing"), "which no manifest"),
    ("undefined Secret", lambda b: next(v for v in _doc(b, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")["secret"].__setitem__("secretName", "ketenpoort-missing"), "which no manifest"),
    ("PDB selects nothing", lambda b: _doc(b, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].__setitem__("app.kubernetes.io/component", "other"), "PodDisruptionBudget"),
    ("Service selects nothing", lambda b: _doc(b, "Service", "ketenpoort")["spec"]["selector"].__setitem__("app.kubernetes.io/name", "other"), "matches no pod template"),
    ("Deployment selector mismatch", lambda b: _doc(b, "Deployment")["spec"]["selector"]["matchLabels"].__setitem__("tier", "x"), "does not match the pod template labels"),
    ("token automounted", lambda b: _doc(b, "Deployment")["spec"]["template"]["spec"].pop("automountServiceAccountToken"), "automountServiceAccountToken"),
    ("no PodDisruptionBudget", _text(K8S + "/pdb.yaml", "kind: PodDisruptionBudget", "kind: ConfigMap"), "no PodDisruptionBudget"),
    ("secret.yaml in kustomization", _text(K8S + "/kustomization.yaml", "  - namespace.yaml", "  - namespace.yaml\n  - secret.yaml"), "is a template"),
    ("configmap drifts from ketenpoort.yaml", _text(K8S + "/configmap.yaml", "log_level: info", "log_level: debug"), "differs from"),
    ("undocumented config key", _text("deploy/systemd/ketenpoort.yaml", "log_level: info", "log_level: info\nlog_format: json"), "`log_format` is not documented"),
    ("undocumented nested key", _text("deploy/container/ketenpoort.yaml", "  min_version: \"1.2\"", "  min_version: \"1.2\"\n  ciphers: ALL"), "`tls.ciphers` is not documented"),
    ("password in the PostgreSQL URL", _text("deploy/systemd/ketenpoort-postgres.yaml", "postgresql://ketenpoort@", "postgresql://ketenpoort:hunter2@"), "a password in the PostgreSQL URL"),
    ("PostgreSQL URL without sslrootcert", _text("deploy/systemd/ketenpoort-postgres.yaml", "&sslrootcert=/etc/ketenpoort/tls/postgresql-root.pem", ""), "without sslrootcert="),
    ("ops listener on loopback in the pods", _text(K8S + "/configmap.yaml", "ops_listen: 0.0.0.0:9443", "ops_listen: 127.0.0.1:9443"), "ops_listen must listen on the pod address"),
    ("invalid YAML", _text("deploy/monitoring/alerts.yaml", "groups:", "groups: [", ), "not valid YAML"),
    ("unknown metric in a rule", _text(ALERTS, "ketenpoort_audit_write_failures_total[5m]", "ketenpoort_audit_failures_total[5m]"), "is not in docs/configuration.md"),
    ("Containerfile USER root", _text(CONTAINERFILE, "USER 10001:10001", "USER root"), "runs as root"),
    ("Containerfile no USER", _text(CONTAINERFILE, "USER 10001:10001\n", ""), "sets no USER"),
    ("Containerfile one stage", _text(CONTAINERFILE, r"^FROM \$\{RUNTIME_IMAGE\}\n", "", regex=True), "build stage and a runtime stage"),
    ("Containerfile -dev in runtime", _text(CONTAINERFILE, "libssl3 libsqlite3-0", "libssl-dev libsqlite3-0"), "installs `libssl-dev`"),
    ("Containerfile compiler in runtime", _text(CONTAINERFILE, "libpq5 libstdc++6", "libpq5 libstdc++6 gcc"), "installs `gcc`"),
    ("Containerfile copies a key", _text(CONTAINERFILE, "COPY --from=build", "COPY deploy/server.key /etc/ketenpoort/tls/server.key\nCOPY --from=build"), "never built in"),
    ("Containerfile ENTRYPOINT shell", _text(CONTAINERFILE, 'ENTRYPOINT ["/usr/local/bin/ketenpoort"]', 'ENTRYPOINT ["/bin/sh", "-c"]'), "ENTRYPOINT must be"),
    ("unit without ProtectSystem", _text(UNIT, "ProtectSystem=strict\n", ""), "ProtectSystem=strict missing"),
    ("unit ProtectSystem=full", _text(UNIT, "ProtectSystem=strict", "ProtectSystem=full"), "ProtectSystem=strict missing"),
    ("unit as root", _text(UNIT, "User=ketenpoort", "User=root"), "non-root user"),
    ("unit NoNewPrivileges=no", _text(UNIT, "NoNewPrivileges=yes", "NoNewPrivileges=no"), "NoNewPrivileges=yes missing"),
    ("unit writes /etc", _text(UNIT, "ReadWritePaths=/var/lib/ketenpoort", "ReadWritePaths=/var/lib/ketenpoort /etc"), "only /var/lib/ketenpoort may be writable"),
    ("unit without master key credential", _text(UNIT, r"^LoadCredential=ketenpoort-master-key:.*\n", "", regex=True), "master key"),
    ("unit with a capability", _text(UNIT, "CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"), "CapabilityBoundingSet= must be empty"),
    ("unit with AF_NETLINK", _text(UNIT, "AF_INET AF_INET6 AF_UNIX", "AF_INET AF_INET6 AF_UNIX AF_NETLINK"), "RestrictAddressFamilies"),
    ("drop-in weakens the sandbox", _text("deploy/systemd/ketenpoort.service.d/postgresql.conf", "[Service]\n", "[Service]\nProtectSystem=full\n"), "weakens the unit's sandbox"),
    ("config key outside credentials", _text("deploy/systemd/ketenpoort.yaml", "/run/credentials/ketenpoort.service/client.key", "/etc/ketenpoort/tls/client.key"), "credentials directory"),
    ("private key in deploy/", lambda b: (b.texts.__setitem__("deploy/container/notes.txt", "-----BEGIN " + "PRIVATE KEY-----\n")), "a PEM private key"),
]


EXTERNAL_MUTATIONS = [
    ("systemd-analyze: a misspelt directive", "systemd-analyze",
     _text(UNIT, "ProtectKernelLogs=yes", "ProtectKernelLog=yes"), "Unknown key", lambda b, r: run_systemd_analyze(b, r)),
    ("kubectl kustomize: a missing resource file", "kubectl",
     lambda b: b.texts.pop(K8S + "/pdb.yaml"), "kubectl kustomize failed", lambda b, r: run_kubectl(b, r)),
]


def self_test() -> int:
    base = Bundle.load(ROOT)
    baseline = run_checks(copy.deepcopy(base), external=False)
    failures = 0
    if baseline.findings:
        print("self-test: the unmodified files already fail; fix them first:")
        for _, file, message in baseline.findings:
            print(f"  {file}: {message}")
        return 1
    for label, mutate, expected in MUTATIONS:
        b = copy.deepcopy(base)
        try:
            mutate(b)
        except (AssertionError, LookupError, KeyError, StopIteration) as error:
            print(f"self-test: FAIL {label}: the mutation could not be applied ({error})")
            failures += 1
            continue
        report = run_checks(b, external=False)
        caught = [f"{file}: {message}" for _, file, message in report.findings if expected in message]
        if caught:
            print(f"self-test: caught  {label}  -> {caught[0]}")
        else:
            failures += 1
            got = "; ".join(f"{f}: {m}" for _, f, m in report.findings) or "no finding"
            print(f"self-test: MISSED {label} (expected “{expected}”, got: {got})")
    total = len(MUTATIONS)
    for label, tool, mutate, expected, runner in EXTERNAL_MUTATIONS:
        if not shutil.which(tool):
            print(f"self-test: skipped {label} ({tool} not on PATH)")
            continue
        total += 1
        b = copy.deepcopy(base)
        mutate(b)
        report = Report()
        runner(b, report)
        caught = [f"{file}: {message}" for _, file, message in report.findings if expected in message]
        if caught:
            print(f"self-test: caught  {label}  -> {caught[0]}")
        else:
            failures += 1
            got = "; ".join(f"{f}: {m}" for _, f, m in report.findings) or "; ".join(t for _, t in report.notes) or "no finding"
            print(f"self-test: MISSED {label} (expected “{expected}”, got: {got})")
    print(f"self-test: {total - failures} of {total} mutations caught")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-test", action="store_true", help="mutate copies of the files and check every mutation is caught")
    parser.add_argument("--offline", action="store_true", help="do not run kubectl, systemd-analyze or promtool")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    bundle = Bundle.load(ROOT)
    report = run_checks(bundle, external=not args.offline)
    groups = [name for name, _ in CHECKS] + ["kubectl"]
    for group in groups:
        count = sum(1 for g, _, _ in report.findings if g == group)
        notes = "; ".join(text for g, text in report.notes if g == group)
        status = "ok" if count == 0 else f"{count} problem(s)"
        print(f"check_deploy: {group:<13} {status}{' (' + notes + ')' if notes else ''}")
    for _, file, message in report.findings:
        print(f"{file}: {message}")
    if report.findings:
        print(f"check_deploy: {len(report.findings)} problem(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
