"""The bench's own local stack: a Kafka broker (or KAFKA_BOOTSTRAP_SERVERS), the ClaimX and iTel
simulators each in a process of its own with added latency, and a private copy of config/ whose
topics and consumer groups carry a fresh suffix, so a bench never reads or commits anyone else's.

It never touches the repository's config, var/ or data/: everything lives in the work dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from itel_dagster.devstack.kafka.broker import LocalKafkaBroker, free_port
from itel_dagster.settings.kafka import ENV_SETTINGS
from itel_dagster.devstack.kafka.topics import ensure_topics, pipeline_topics
from itel_dagster.devstack.stack import CLAIMX_DEV_TOKEN, ITEL_DEV_TOKEN
from itel_dagster.settings.paths import PROJECT_ROOT
from itel_dagster.settings.workers import WORKERS_FILE, load_workers

PARTITIONS = 3


@dataclass(frozen=True)
class StackChoices:
    """What the bench may change in its config copy (the repository's files stay as they are)."""

    latency_ms: float = 20.0
    # The configured 20 requests/s per run process would make the bench measure the limit, not
    # the pipeline (100,000 events: 80 minutes); the figure used is written into the results.
    itel_rate_limit: float = 1000.0
    sensor_interval_seconds: int | None = None  # None: workers.yaml's
    send_round_size: int | None = None  # None: app.itel.yaml's
    # A broker of its own even when KAFKA_BOOTSTRAP_SERVERS names one: one it may kill.
    own_broker: bool = False
    # Its own broker with a SASL_SSL listener (SCRAM-SHA-512 over TLS); every client connects so.
    secure_broker: bool = False
    dagster_yaml: Path = PROJECT_ROOT / "dagster.yaml"


@dataclass
class BenchStack:
    work: Path
    choices: StackChoices
    bootstrap: str = ""
    claimx_url: str = ""
    itel_url: str = ""
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _broker: LocalKafkaBroker | None = None
    _broker_pid: int | None = None
    _simulators: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.work / "config"

    @property
    def delta_root(self) -> Path:
        return self.work / "delta"

    @property
    def state_dir(self) -> Path:
        return self.work / "var"

    def env(self) -> dict[str, str]:
        """The variables every part of the pipeline reads, pointing at this stack."""
        # Its own broker's listener decides the client's security settings (empty: unset, whatever
        # ran before); with KAFKA_BOOTSTRAP_SERVERS's cluster, the caller's KAFKA_* stay.
        secure = {} if self._broker is None else self._broker.client_env() if self._broker.secure \
            else {name: "" for name in ENV_SETTINGS}
        return {
            **secure,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CLAIMX_API_BASE_URL": self.claimx_url,
            "CLAIMX_API_TOKEN": CLAIMX_DEV_TOKEN,
            "ITEL_CABINET_API_BASE_URL": self.itel_url,
            "ITEL_CABINET_API_TOKEN": ITEL_DEV_TOKEN,
            "ITEL_CONFIG_DIR": str(self.config_dir),
            "ITEL_DELTA_ROOT": str(self.delta_root),
            "ITEL_STATE_DIR": str(self.state_dir),
        }

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        own = self.choices.own_broker or self.choices.secure_broker
        self.bootstrap = "" if own else os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if not self.bootstrap:
            self._broker = LocalKafkaBroker(self.work / "kafka", port=0, partitions=PARTITIONS,
                                            secure=self.choices.secure_broker)
            status = self._broker.start()
            self.bootstrap, self._broker_pid = status.bootstrap_servers, status.pid
        self.claimx_url = self._start_simulator("claimx")
        self.itel_url = self._start_simulator("itel")
        self._write_config()
        os.environ.update(self.env())  # the in-process phase and the checks read these
        ensure_topics(self.bootstrap, pipeline_topics(load_workers()), partitions=PARTITIONS)

    def _start_simulator(self, which: str) -> str:
        """`itel-dagster simulators run` in a process of its own: sharing the GIL with the bench
        or with the other simulator would slow it and distort the figures."""
        port = free_port()
        ports = {"claimx": str(port), "itel": "0"} if which == "claimx" else \
            {"claimx": "0", "itel": str(port)}
        process = subprocess.Popen(
            [sys.executable, "-m", "itel_dagster.cli", "simulators", "run",
             "--claimx-port", ports["claimx"], "--itel-port", ports["itel"]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._simulators[which] = process
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/_admin/health", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {which} simulator did not start") from None
                time.sleep(0.1)
        httpx.post(f"{url}/_admin/faults",
                   json={"latency_ms": self.choices.latency_ms}).raise_for_status()
        return url

    def _write_config(self) -> None:
        shutil.copytree(PROJECT_ROOT / "config", self.config_dir, dirs_exist_ok=True)
        itel = self.config_dir / "plugins/shared/connections/app.itel.yaml"
        connection = yaml.safe_load(itel.read_text())
        connection["itel_cabinet_api"]["rate_limit_per_second"] = self.choices.itel_rate_limit
        if self.choices.send_round_size:
            connection["itel_cabinet_api"]["send_round_size"] = self.choices.send_round_size
        itel.write_text(yaml.safe_dump(connection, sort_keys=False))
        path = self.config_dir / WORKERS_FILE
        data = yaml.safe_load(path.read_text())
        for worker in data["workers"].values():
            for key in ("input_topic", "success_topic", "error_topic", "consumer_group"):
                worker[key] = f"{worker[key]}.bench-{self.suffix}"
            worker["log_file"] = str(self.work / "logs" / Path(worker["log_file"]).name)
            if self.choices.sensor_interval_seconds:
                worker["sensor_interval_seconds"] = self.choices.sensor_interval_seconds
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def reset_simulators(self) -> None:
        """Forget accepted iTel requests (and their Idempotency-Keys) and both request counts."""
        httpx.delete(f"{self.itel_url}/_admin/requests", timeout=30).raise_for_status()
        for url in (self.claimx_url, self.itel_url):
            httpx.delete(f"{url}/_admin/stats", timeout=30).raise_for_status()

    def claimx_gets(self) -> int:
        stats = httpx.get(f"{self.claimx_url}/_admin/stats", timeout=30).json()
        return stats["routes"].get("GET /api/v1/tasks/{assignment_id}", {}).get("total", 0)

    def itel_requests(self) -> list[dict]:
        return httpx.get(f"{self.itel_url}/_admin/requests", timeout=120).json()

    def processes(self) -> dict[int, str]:
        """pid -> role of the stack's own processes: each simulator and the broker it started."""
        roles = {p.pid: f"{which}_simulator" for which, p in self._simulators.items()}
        if self._broker_pid is not None:
            roles[self._broker_pid] = "broker"
        return roles

    def restart_broker(self) -> None:
        """SIGKILL the broker it started and start it again on the same port and log dir."""
        if self._broker is None:
            raise RuntimeError("this stack uses a broker it did not start (KAFKA_BOOTSTRAP_SERVERS)")
        self._broker.kill()
        self._broker_pid = self._broker.start().pid

    def stop(self) -> None:
        for process in self._simulators.values():
            if process.poll() is None:
                process.terminate()
        for process in self._simulators.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._simulators.clear()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
