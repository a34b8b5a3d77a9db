#!/usr/bin/env bash
# The whole local stack: Kafka, ClaimX and iTel simulators, demo events and `dagster dev`
# (UI on http://localhost:3000). Ctrl-C stops it. Extra arguments go to `itel-dagster up`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
cd "$ROOT"
exec "$VENV_BIN/itel-dagster" up "$@"
