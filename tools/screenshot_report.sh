#!/usr/bin/env bash
# Render a recon report (report.html) to a PNG with headless Chromium (Debian: apt-get install chromium).
# usage: tools/screenshot_report.sh REPORT.html OUT.png [WIDTH=1280] [HEIGHT=3000]
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 REPORT.html OUT.png [WIDTH] [HEIGHT]" >&2; exit 2; fi
html=$(realpath "$1"); out=$(realpath -m "$2"); width=${3:-1280}; height=${4:-3000}
[ -f "$html" ] || { echo "$0: $html: no such file" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "$0: chromium not found (apt-get install chromium)" >&2; exit 2; }
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
tmp="$(dirname "$out")/.$(basename "$out" .png).tmp.png"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$tmp" "file://$html" >/dev/null 2>&1
mv "$tmp" "$out"
echo "$out"
