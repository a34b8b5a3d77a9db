#!/usr/bin/env bash
# The Azure Storage emulator for the object-storage Delta tests (itel_dagster_tests/
# test_delta_object_store.py): Azurite from npm into var/tools/azurite (git-ignored). 3.37.0 or
# later: older versions ignore List Blobs' startFrom, which breaks delta-rs from a table's second
# commit. Prints nothing and exits 0 when it is installed; exits 1 when npm cannot install it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${ITEL_AZURITE_VERSION:-3.37.0}"
DIR="$ROOT/var/tools/azurite"
BIN="$DIR/node_modules/.bin/azurite-blob"
installed() {
  [ -x "$BIN" ] && [ "$(node -p "require('$DIR/node_modules/azurite/package.json').version" \
    2>/dev/null)" = "$VERSION" ]
}
installed && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found: cannot install azurite@$VERSION" >&2
  exit 1
fi
mkdir -p "$DIR"
# One installer at a time (two pytest workers may both ask).
exec 9>"$DIR.lock"
command -v flock >/dev/null 2>&1 && flock 9
installed && exit 0
echo "installing azurite@$VERSION from npm into $DIR..." >&2
[ -f "$DIR/package.json" ] || echo '{"private": true}' > "$DIR/package.json"
npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error "azurite@$VERSION" >&2
installed
