#!/usr/bin/env bash
# Installs what Panoptes needs to build and run on Debian 12, skipping what is present.
# Idempotent: safe to run before every `make run` / `make test`.
set -euo pipefail

APT_PACKAGES=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-x
  gstreamer1.0-plugins-base-apps
  espeak-ng ffmpeg python3-pip python3-venv curl
  nats-server chromium docker-compose
)

# The browser test drives Chromium with playwright-core, which needs Node.js 20 or newer.
if ! command -v node >/dev/null 2>&1; then
  APT_PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=600 "${missing[@]}"
else
  echo "setup: system packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Panoptes needs Rust 1.95 or newer (https://rustup.rs), then rerun." >&2
  exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 95 ]; then
  echo "setup: $(rustc --version) is too old; Panoptes needs Rust 1.95 or newer." >&2
  exit 1
fi
echo "setup: $(rustc --version)"
node_major=$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')
if [ "${node_major:-0}" -lt 20 ]; then
  echo "setup: Node.js $(node --version 2>/dev/null || echo missing) is older than 20; the browser test needs 20 or newer (e.g. from NodeSource)." >&2
fi
