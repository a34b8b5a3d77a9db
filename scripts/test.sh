#!/usr/bin/env bash
# The test suite: installs what is missing, then runs pytest. The tests start their own Kafka
# broker and simulators on free loopback ports. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/ensure_venv.sh"
bash "$ROOT/scripts/ensure_browser.sh"
cd "$ROOT"
exec "$VENV_BIN/python" -m pytest "$@"
