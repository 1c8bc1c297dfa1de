#!/usr/bin/env bash
# Installs the servers the cluster tests start (an S3-compatible server from PyPI) into the
# Panoptes Python environment; nats-server comes from Debian (deploy/setup.sh). Skips what is
# up to date.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/panoptes"
venv="${PANOPTES_VENV:-$cache/venv}"
req="$here/requirements.txt"
stamp="$venv/.tests-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "test services: up to date"
    exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
echo "test services: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
