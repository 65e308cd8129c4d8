#!/usr/bin/env bash
# Set up recon in ./.venv on a fresh machine (Python >= 3.10). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d (metrics) needs libusb at import time.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=".venv/bin/python -m pip"
# torch first and pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
$PIP install -q -e ".[metrics,test,ray]"  # ray: the sweep's Ray executor, and its tests

# Optional: headless Chromium for tools/screenshot_report.sh (and its test): RECON_CHROMIUM=1 bash tools/setup.sh
if [ "${RECON_CHROMIUM:-0}" = "1" ] && ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: chromium could not be installed; the report screenshot test will skip" >&2
fi
echo "recon is set up in .venv (run: .venv/bin/recon --help)"
