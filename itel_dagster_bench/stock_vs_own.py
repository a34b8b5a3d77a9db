"""Drain time of a backlog with Dagster's stock run launcher, event-log storage and compute logs
against the project's dagster.yaml, each on a CrashStack of its own (broker, simulators, code
server, `dagster-daemon run`). The stock YAML is dagster.yaml without its three optional blocks,
so it follows every other change of that file. Prints both figures and the invariants; exits 1
when either drain lost or doubled something.

    python -m itel_dagster_bench.stock_vs_own [--events 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

from itel_dagster_bench.crash_stack import CrashStack
from itel_dagster.settings.paths import PROJECT_ROOT

PROJECT_DAGSTER_YAML = PROJECT_ROOT / "dagster.yaml"
# Ours, each with a stock default behind it: the warm-fork launcher, the pooled SQLite event log
# and the no-op compute logs. Run coordinator, run monitoring and retries stay.
OPTIONAL_BLOCKS = ("run_launcher", "event_log_storage", "compute_logs")
WARM_UP_EVENTS = 10  # drained first, so the figure leaves out the daemon's first ticks


def write_stock_dagster_yaml(directory: Path, source: Path = PROJECT_DAGSTER_YAML) -> Path:
    """`source` without OPTIONAL_BLOCKS, written as `directory`/dagster.yaml; its path."""
    config = yaml.safe_load(source.read_text())
    missing = [key for key in OPTIONAL_BLOCKS if key not in config]
    if missing:  # the leg would compare the stock instance with itself
        raise ValueError(f"{source} has no {', '.join(missing)} block: update OPTIONAL_BLOCKS")
    stock = {key: value for key, value in config.items() if key not in OPTIONAL_BLOCKS}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dagster.yaml"
    path.write_text(yaml.safe_dump(stock, sort_keys=False))
    return path


def drain_seconds(work: Path, dagster_yaml: Path, events: int) -> tuple[float, list[str]]:
    """Seconds from publishing `events` to both groups having committed them, on a warmed-up
    stack; and the broken invariants ([] when none)."""
    with CrashStack(work, dagster_yaml=dagster_yaml) as stack:
        stack.wait_drained(stack.publish(WARM_UP_EVENTS))
        batch = stack.publish(events)
        drained = stack.wait_drained(batch, timeout=600)
        return drained - batch.published_at, stack.check(batch).failures(max_re_posts=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600)
    args = parser.parse_args()
    broken = False
    with tempfile.TemporaryDirectory(prefix="stock-vs-own-") as tmp:
        work = Path(tmp)
        for label, dagster_yaml in (("stock", write_stock_dagster_yaml(work / "stock-yaml")),
                                    ("own", PROJECT_DAGSTER_YAML)):
            started = time.monotonic()
            seconds, failures = drain_seconds(work / label, dagster_yaml, args.events)
            broken |= bool(failures)
            print(f"{label}: {args.events} events drained in {seconds:.1f} s "
                  f"({'; '.join(failures) or 'nothing lost or doubled'}; "
                  f"stack up and down included: {time.monotonic() - started:.0f} s)", flush=True)
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
