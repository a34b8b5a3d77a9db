#!/usr/bin/env bash
# Run by scripts/test.sh: the browser test (itel_dagster_tests/test_ui_browser.py) drives Debian's
# Chromium at /usr/bin/chromium through Playwright. Installs the `chromium` package with apt-get
# when it is missing; never downloads Playwright's own browser builds.
set -euo pipefail
CHROMIUM="${ITEL_CHROMIUM_PATH:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: $CHROMIUM is missing and apt-get is not available; install Chromium and set" \
       "ITEL_CHROMIUM_PATH, or the browser test fails" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian's chromium for the browser test..." >&2
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
