#!/usr/bin/env bash
# Installs the test-only Python tools into the Panoptes Python environment: the servers the
# cluster tests start (an S3-compatible server from PyPI; nats-server comes from Debian,
# deploy/setup.sh) and schemathesis, which fuzzes the HTTP API in tests/fuzz_api.rs.
# Skips what is up to date.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/panoptes"
venv="${PANOPTES_VENV:-$cache/venv}"
req="$here/requirements.txt"
stamp="$venv/.tests-requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
# Pinned: the CLI options tests/fuzz_api.rs passes are those of this version.
schemathesis="schemathesis==4.32.5"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
pip() {
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
}

if [[ -x "$venv/bin/moto_server" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "test services: up to date"
else
    echo "test services: installing $(grep -v '^#' "$req" | tr '\n' ' ')into $venv" >&2
    pip -r "$req"
    echo "$want" > "$stamp"
fi

have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)"
if [[ -x "$venv/bin/st" && "schemathesis==$have" == "$schemathesis" ]]; then
    echo "schemathesis: up to date ($have)"
else
    echo "schemathesis: installing $schemathesis into $venv" >&2
    pip "$schemathesis"
fi
