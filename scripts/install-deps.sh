#!/usr/bin/env bash
# Installs the Debian packages given as arguments that are not installed yet.
# Non-interactive, no sudo (the machines run as root), and services are not started by the
# package scripts (nginx and PostgreSQL are started by the tests themselves on free ports).
set -euo pipefail
missing=()
for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "install ok installed" ]]; then missing+=("$pkg"); fi
done
if (( ${#missing[@]} == 0 )); then exit 0; fi
echo "installing: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages ${missing[*]}; run as root or install them first" >&2
    exit 2
fi
# Keep package scripts from starting services (nginx would take port 80).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created_policy=1
fi
trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
