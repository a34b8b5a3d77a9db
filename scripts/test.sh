#!/usr/bin/env bash
# The test suite: installs what is missing, then runs pytest. The tests start their own Kafka
# broker and simulators on free loopback ports. Extra arguments go to pytest.
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Azurite for the object-storage Delta tests; where npm cannot install it, they skip with the
# reason. npm installs it while pip installs the venv (on a fresh clone about 30 s and 50 s).
bash "$SCRIPTS/ensure_azurite.sh" & AZURITE=$!
source "$SCRIPTS/ensure_venv.sh"
bash "$SCRIPTS/ensure_browser.sh"
wait "$AZURITE" || echo "warning: azurite not installed" >&2
cd "$ROOT"
# Four pytest workers (pytest-xdist) on two cores: many tests wait on daemons, runs and real
# time. The workers share one broker (fixtures/kafka_fixtures.py) and take whole files (module
# fixtures such as the crash matrix's stack stay in one process), the files with slow and
# browser tests first (fixtures/lanes.py; --no-loadscope-reorder keeps that order: xdist's
# default hands out the files with the most tests first). ITEL_TEST_WORKERS=0: one process.
exec "$VENV_BIN/python" -m pytest -n "${ITEL_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder \
  --durations=15 "$@"
