#!/usr/bin/env bash
# Sourced by scripts/up.sh and scripts/test.sh: checks the prerequisites (Python 3.11+, Java 17+,
# Maven) and installs the project with its locked dependencies into .venv, once per change of
# pyproject.toml or requirements.lock. Exports VENV_BIN.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ITEL_VENV:-$ROOT/.venv}"

find_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

PY="$(find_python)" || { echo "error: Python 3.11+ is needed (set PYTHON=...)" >&2; exit 1; }
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] ||
  { echo "error: Java 17+ is needed for the local Kafka broker" >&2; exit 1; }
command -v mvn >/dev/null 2>&1 ||
  { echo "error: Maven is needed to fetch the Kafka jars from Maven Central" >&2; exit 1; }

STAMP="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/requirements.lock" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  echo "installing itel-dagster into $VENV (first run, or dependencies changed)..." >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$ROOT/requirements.lock" -e "$ROOT[dev]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
export VENV_BIN="$VENV/bin"
export PATH="$VENV_BIN:$PATH"
