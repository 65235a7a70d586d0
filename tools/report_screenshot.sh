#!/usr/bin/env bash
# A screenshot of an output folder's report.html in headless Chromium (Debian's
# `chromium` package), as docs/report.png was made:
#     bash tools/report_screenshot.sh OUTPUT_DIR docs/report.png
set -euo pipefail
folder=$(realpath "$1")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1000,1250 \
    --screenshot="$(realpath "$2")" "file://$folder/report.html" 2>&1 | grep -v dbus || true
