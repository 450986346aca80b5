#!/usr/bin/env bash
# Browser test of `calico serve`'s web UI (docs/serve.md): headless Debian
# Chromium driven by playwright-core (from npm; no browser download) on a
# loopback port. Installs what it needs, builds `calico`, exits non-zero on
# any failure.
#
#   bash tools/browser/serve_ui_test.sh [OUT_DIR]     # default target/browser
#
# Writes OUT_DIR/serve_ui.png (a screenshot of the UI with overlays).
# Environment: CHROMIUM (default /usr/bin/chromium), CALICO_BIN (skip the build).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-target/browser}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
    echo "== installing Debian chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
"$chromium" --version

node_dir="target/browser-node"
pw_version="1.65.1"
if [ ! -f "$node_dir/node_modules/playwright-core/package.json" ] ||
    ! grep -q "\"version\": \"$pw_version\"" "$node_dir/node_modules/playwright-core/package.json"; then
    echo "== installing playwright-core $pw_version (npm, no browser download)"
    mkdir -p "$node_dir"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$node_dir" --no-audit --no-fund \
        --silent "playwright-core@$pw_version"
fi

if [ -z "${CALICO_BIN:-}" ]; then
    echo "== building calico"
    cargo build -q -p calico-cli
    CALICO_BIN="${CARGO_TARGET_DIR:-target}/debug/calico"
fi

echo "== browser test"
NODE_PATH="$PWD/$node_dir/node_modules" CHROMIUM="$chromium" CALICO_BIN="$CALICO_BIN" \
    node tools/browser/serve_ui_test.js "$out"
