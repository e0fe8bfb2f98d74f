#!/usr/bin/env bash
# Startup kits for a FLIP server, hospital sites and an admin: a thin wrapper around `flip provision`,
# which writes project.yml (see provisioning/project.yml for two sites) and runs `nvflare provision`.
#   provisioning/provision.sh --sites hospital-a,hospital-b --out /secure/flip-kits
#   provisioning/provision.sh --add-site hospital-c --out /secure/flip-kits
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
flip="${FLIP:-$here/.venv/bin/flip}"
exec "$flip" provision "$@"
