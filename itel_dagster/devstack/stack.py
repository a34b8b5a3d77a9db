"""The whole local stack behind `itel-dagster up`: broker, both simulators, demo publisher and
`dagster dev`, wired by environment variables. Stopping it stops what it started, never a cluster
named by KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from itel_dagster.devstack.kafka.broker import LocalKafkaBroker, free_port, port_is_free
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.metrics.exporter import DEFAULT_PORT as DEFAULT_METRICS_PORT
from itel_dagster.settings.paths import PROJECT_ROOT, state_dir
from itel_dagster.settings.workers import load_workers

CLAIMX_DEV_TOKEN = "claimx-dev-token"
ITEL_DEV_TOKEN = "itel-dev-token"


def port_or_free(preferred: int) -> int:
    """`preferred` when it is free on loopback (0 means any), else a free port."""
    return preferred if preferred and port_is_free(preferred) else free_port()


@dataclass
class StackOptions:
    dagster_port: int = 3000
    claimx_port: int = 8081
    itel_port: int = 8082
    kafka_port: int | None = None
    partitions: int = 3
    demo_rate: float = 1.0
    demo_backlog: int = 300
    # Upstream ClaimX task events per second for the plugin trigger (0: none).
    upstream_rate: float = 1.0
    bad_fraction: float = 0.02
    run_dagster: bool = True
    stop_kafka_on_exit: bool = True
    # The Prometheus endpoint (`itel-dagster metrics serve`); a free port if taken.
    metrics_port: int = field(default_factory=lambda: int(os.environ.get("ITEL_METRICS_PORT")
                                                          or DEFAULT_METRICS_PORT))


@dataclass
class LocalStack:
    """Starts the parts in dependency order and stops them in reverse."""

    options: StackOptions
    env: dict[str, str] = field(default_factory=dict)
    _children: list[subprocess.Popen] = field(default_factory=list)
    _simulators: list = field(default_factory=list)
    _broker: LocalKafkaBroker | None = None

    def start(self, say=print) -> dict[str, str]:
        state = state_dir()
        state.mkdir(parents=True, exist_ok=True)
        bootstrap = self._start_kafka(state, say)
        claimx_url, itel_url = self._start_simulators(say)
        dagster_home = self._dagster_home(state)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CLAIMX_API_BASE_URL": claimx_url,
            "CLAIMX_API_TOKEN": CLAIMX_DEV_TOKEN,
            "ITEL_CABINET_API_BASE_URL": itel_url,
            "ITEL_CABINET_API_TOKEN": ITEL_DEV_TOKEN,
            "DAGSTER_HOME": str(dagster_home),
            "ITEL_STATE_DIR": str(state),
            "ITEL_DELTA_ROOT": os.environ.get("ITEL_DELTA_ROOT") or str(PROJECT_ROOT / "data/delta"),
        }
        self._start_publisher(say)
        self._start_metrics(say)
        if self.options.run_dagster:
            self._start_dagster(say)
        return self.env

    def _start_kafka(self, state: Path, say) -> str:
        existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if existing:
            say(f"kafka      {existing} (KAFKA_BOOTSTRAP_SERVERS; nothing started)")
            bootstrap = existing
        else:
            self._broker = LocalKafkaBroker(state / "kafka", port=self.options.kafka_port,
                                            partitions=self.options.partitions)
            bootstrap = self._broker.start().bootstrap_servers
            say(f"kafka      {bootstrap} (log {self._broker.log_file})")
        ensure_topics(bootstrap, pipeline_topics(load_workers()), partitions=self.options.partitions)
        return bootstrap

    def _start_simulators(self, say) -> tuple[str, str]:
        from itel_dagster.devstack.simulators.claimx import ClaimxSimulator
        from itel_dagster.devstack.simulators.itel import ItelSimulator

        claimx = ClaimxSimulator(port=port_or_free(self.options.claimx_port), token=CLAIMX_DEV_TOKEN)
        itel = ItelSimulator(port=port_or_free(self.options.itel_port), token=ITEL_DEV_TOKEN)
        for simulator in (claimx, itel):
            simulator.start()
            self._simulators.append(simulator)
        say(f"claimx     {claimx.url} (simulator; faults: itel-dagster simulators fault claimx)")
        say(f"itel       {itel.url} (simulator; accepted sends: itel-dagster simulators requests)")
        return claimx.url, itel.url

    @staticmethod
    def _dagster_home(state: Path) -> Path:
        home = state / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        link = home / "dagster.yaml"
        # A link, so the repository's dagster.yaml stays the one source of instance settings.
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(PROJECT_ROOT / "dagster.yaml")
        return home

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log_dir = Path(self.env["ITEL_STATE_DIR"]) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / log_name, "ab") as log:
            child = subprocess.Popen(
                args, env=self.env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._children.append(child)
        return child

    def _publish_args(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "itel_dagster.cli", "publish", "--no-progress",
                "--bad-fraction", str(self.options.bad_fraction), *extra]

    def _start_publisher(self, say) -> None:
        if self.options.demo_backlog:
            backlog = subprocess.run(
                self._publish_args("--count", str(self.options.demo_backlog), "--days", "3"),
                env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
            )
            if backlog.returncode != 0:
                raise RuntimeError(f"publishing the demo backlog failed:\n{backlog.stderr}")
            say(f"publisher  {self.options.demo_backlog} demo events over the last 3 days")
        if self.options.demo_rate > 0:
            self._spawn(self._publish_args("--continuous", "--rate", str(self.options.demo_rate)),
                        "publisher.log")
            say(f"publisher  {self.options.demo_rate} events/s, continuous (var/logs/publisher.log)")
        if self.options.upstream_rate > 0:
            self._spawn(self._publish_args("--upstream", "--continuous", "--rate",
                                           str(self.options.upstream_rate)), "upstream.log")
            say(f"upstream   {self.options.upstream_rate} ClaimX task events/s for the trigger, "
                "continuous (var/logs/upstream.log)")

    def _start_metrics(self, say) -> None:
        port = port_or_free(self.options.metrics_port)
        self._spawn([sys.executable, "-m", "itel_dagster.cli", "metrics", "serve",
                     "--host", "127.0.0.1", "--port", str(port)], "metrics.log")
        say(f"metrics    http://127.0.0.1:{port}/metrics (var/logs/metrics.log)")

    def _start_dagster(self, say) -> None:
        self._spawn(
            [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
             "-h", "127.0.0.1", "-p", str(self.options.dagster_port)],
            "dagster_dev.log",
        )
        say(f"dagster    http://localhost:{self.options.dagster_port} (var/logs/dagster_dev.log)")

    def wait(self) -> int:
        """Block until a child exits (or a signal arrives); return its exit code."""
        while True:
            for child in self._children:
                code = child.poll()
                if code is not None:
                    return code
            time.sleep(0.5)

    def stop(self) -> None:
        for child in reversed(self._children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in reversed(self._children):
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self._children.clear()
        for simulator in reversed(self._simulators):
            simulator.stop()
        self._simulators.clear()
        if self._broker is not None and self.options.stop_kafka_on_exit:
            self._broker.stop()
