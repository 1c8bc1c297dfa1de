#!/usr/bin/env bash
# Installs the models and the ONNX Runtime library into models/ (or $PANOPTES_MODELS):
#
#   models/install.sh [--only NAME ...] [--force]
#
# The Python packages the conversions need (numpy, onnx, onnxruntime; no torch) live in a
# virtual environment outside the checkout, made once. Everything already installed is skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/panoptes"
venv="${PANOPTES_VENV:-$cache/venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "models: preparing the Python environment in $venv (numpy, onnx, onnxruntime)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        --cache-dir "$cache/pip-cache" -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi
exec "$venv/bin/python" "$here/install.py" "$@"
