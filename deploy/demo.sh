#!/usr/bin/env bash
# `make run`: replays the demo recordings on 127.0.0.1:8554 and runs Panoptes on the
# embedded defaults with config/panoptes.toml. Ctrl-C stops both.
set -euo pipefail
BIN=${1:?panoptes binary}
FIXTURES=${2:?fixtures directory}
LISTEN=${PANOPTES_REPLAY_LISTEN:-127.0.0.1:8554}

"$BIN" replay --listen "$LISTEN" "$FIXTURES/lobby.mp4" "$FIXTURES/photos.mp4" "$FIXTURES/lobby-h265.mkv" &
replay=$!
trap 'kill "$replay" 2>/dev/null; wait "$replay" 2>/dev/null || true' EXIT
echo "demo: replay server on rtsp://$LISTEN (pid $replay)"
echo "demo: API on http://127.0.0.1:8080  (try: curl -s http://127.0.0.1:8080/v1/cameras)"
"$BIN" run --config config/panoptes.toml
