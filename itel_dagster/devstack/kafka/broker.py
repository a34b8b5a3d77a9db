"""A single-node Apache Kafka 4 broker in KRaft mode for development and tests.

It runs from the Maven Central jars with the machine's Java, keeps its data under one folder
(default <state dir>/kafka) and records its pid and address there. It never touches a cluster
named by KAFKA_BOOTSTRAP_SERVERS: callers check that first.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from itel_dagster.devstack.kafka.classpath import (
    KafkaSetupError,
    java_executable,
    resolve_classpath,
)
from itel_dagster.settings.paths import state_dir

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
PREFERRED_PORT = 9092
JVM_OPTIONS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]


def classpath_cache_dir() -> Path:
    """Shared by every broker home on the machine, so tests don't re-run Maven per session."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "itel-dagster" / "kafka"


def new_cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of 16 bytes). One starting with '-' is drawn
    again, as Kafka's own Uuid.randomUuid() does: kafka-storage would read it as an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class BrokerStatus:
    pid: int
    bootstrap_servers: str
    port: int
    controller_port: int
    home: str
    log_file: str
    started_at: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _server_properties(data_dir: Path, port: int, controller_port: int, partitions: int) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            f"num.partitions={partitions}",
            # Topics are created explicitly (ensure_topics): a typo must fail, not make a topic.
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=3",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # Without this every consumer-group join waits 3 s (NOTES.md).
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=168",
            "",
        ]
    )


class LocalKafkaBroker:
    """Start, stop and inspect the broker whose files live in `home`.

    port: None takes 9092 when free (else any free port), 0 any free port, N exactly N.
    """

    def __init__(self, home: Path | None = None, port: int | None = None, partitions: int = 3):
        self.home = (home or state_dir() / "kafka").resolve()
        self.requested_port = port
        self.partitions = partitions
        self.status_file = self.home / "broker.json"
        self.ports_file = self.home / "ports.json"
        self.properties_file = self.home / "server.properties"
        self.data_dir = self.home / "data"
        self.log_file = self.home / "broker.log"

    # -- inspection -------------------------------------------------------------------------
    def status(self) -> BrokerStatus | None:
        """The running broker, or None (a stale status file is removed)."""
        if not self.status_file.exists():
            return None
        status = BrokerStatus(**json.loads(self.status_file.read_text()))
        if _pid_alive(status.pid) and _answers(status.port):
            return status
        if not _pid_alive(status.pid):
            self.status_file.unlink(missing_ok=True)
        return None

    # -- lifecycle ----------------------------------------------------------------------------
    def _ports(self) -> tuple[int, int]:
        # KRaft records the controller endpoint when the log dir is formatted, so a formatted
        # broker keeps its ports across restarts.
        if self.ports_file.exists() and (self.data_dir / "meta.properties").exists():
            saved = json.loads(self.ports_file.read_text())
            return saved["port"], saved["controller_port"]
        if self.requested_port:
            port = self.requested_port
        elif self.requested_port is None and port_is_free(PREFERRED_PORT):
            port = PREFERRED_PORT
        else:
            port = free_port()
        controller_port = free_port()
        while controller_port == port:
            controller_port = free_port()
        self.ports_file.write_text(json.dumps({"port": port, "controller_port": controller_port}))
        return port, controller_port

    def _format(self, java: str, classpath: str) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", classpath,
             "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
             "-c", str(self.properties_file)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise KafkaSetupError(f"formatting the KRaft log dir failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout_seconds: float = 90.0) -> BrokerStatus:
        """Start the broker (or return the running one) and wait until it serves metadata."""
        running = self.status()
        if running:
            return running
        self.home.mkdir(parents=True, exist_ok=True)
        java = java_executable()
        classpath = resolve_classpath(classpath_cache_dir())
        port, controller_port = self._ports()
        for needed in (port, controller_port):
            if not port_is_free(needed):
                raise KafkaSetupError(
                    f"port {needed} of the broker in {self.home} is taken by another process"
                )
        self.properties_file.write_text(
            _server_properties(self.data_dir, port, controller_port, self.partitions)
        )
        self._format(java, classpath)
        started_at = time.time()
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [java, *JVM_OPTIONS, f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                 "-cp", classpath, "kafka.Kafka", str(self.properties_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal must not kill it mid-write
            )
        status = BrokerStatus(
            pid=process.pid,
            bootstrap_servers=f"127.0.0.1:{port}",
            port=port,
            controller_port=controller_port,
            home=str(self.home),
            log_file=str(self.log_file),
            started_at=started_at,
        )
        self.status_file.write_text(json.dumps(asdict(status)))
        try:
            self._wait_until_ready(process, status, timeout_seconds)
        except BaseException:
            self.stop()
            raise
        return status

    def _wait_until_ready(self, process: subprocess.Popen, status: BrokerStatus, timeout: float):
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = self.log_file.read_text(errors="replace").splitlines()[-20:]
                raise KafkaSetupError(
                    f"the broker exited with code {process.returncode}:\n" + "\n".join(tail)
                )
            if _answers(status.port):
                admin = AdminClient({"bootstrap.servers": status.bootstrap_servers})
                try:
                    metadata = admin.list_topics(timeout=5)
                    if metadata.brokers:
                        return
                except Exception:  # noqa: BLE001 - not ready yet; retried until the deadline
                    pass
            time.sleep(0.2)
        raise KafkaSetupError(f"the broker did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout_seconds: float = 30.0) -> bool:
        """Stop the broker; True when one was running."""
        if not self.status_file.exists():
            return False
        status = BrokerStatus(**json.loads(self.status_file.read_text()))
        was_running = _pid_alive(status.pid)
        if was_running:
            os.kill(status.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_seconds
            while _pid_alive(status.pid) and time.monotonic() < deadline:
                _reap(status.pid)
                time.sleep(0.1)
            if _pid_alive(status.pid):
                os.kill(status.pid, signal.SIGKILL)
                _reap(status.pid)
        self.status_file.unlink(missing_ok=True)
        return was_running

    def kill(self, timeout_seconds: float = 30.0) -> None:
        """SIGKILL the broker, as a lost node dies: no shutdown, no flush; start() brings it back
        on the same ports and log dir."""
        status = BrokerStatus(**json.loads(self.status_file.read_text()))
        os.kill(status.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_seconds
        while _pid_alive(status.pid):
            _reap(status.pid)
            if time.monotonic() > deadline:
                raise KafkaSetupError(f"broker pid {status.pid} still alive after SIGKILL")
            time.sleep(0.05)
        self.status_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie (seen as alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def local_bootstrap_servers() -> str:
    """The address of the running local broker (default home), or a clear error."""
    status = LocalKafkaBroker().status()
    if status is None:
        raise KafkaSetupError(
            "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or run `itel-dagster kafka start`"
        )
    return status.bootstrap_servers
