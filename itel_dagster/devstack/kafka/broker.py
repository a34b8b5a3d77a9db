"""A single-node Apache Kafka 4 broker in KRaft mode for development and tests.

It runs from the Maven Central jars with the machine's Java, keeps its data under one folder
(default <state dir>/kafka) and records its pid and address there. It never touches a cluster
named by KAFKA_BOOTSTRAP_SERVERS: callers check that first.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
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
from itel_dagster.settings.kafka import env_security_settings
from itel_dagster.settings.paths import state_dir

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
PREFERRED_PORT = 9092
JVM_OPTIONS = ["-Xms256m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
# More JVM options, appended (later ones win), e.g. the test suite's
# "-XX:TieredStopAtLevel=1": less CPU to start and idle, less peak throughput. A second GC
# option fails the start ("Multiple garbage collectors selected").
JVM_OPTIONS_ENV = "ITEL_KAFKA_JVM_OPTIONS"


def jvm_options() -> list[str]:
    return [*JVM_OPTIONS, *os.environ.get(JVM_OPTIONS_ENV, "").split()]


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
    # Secure mode: the client settings to export (KAFKA_SECURITY_PROTOCOL, ...) but the password,
    # which stays in LocalKafkaBroker.password_file; None: plaintext.
    client_env: dict[str, str] | None = None


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


@dataclass(frozen=True)
class SecureListener:
    """Secure mode: clients connect over SASL_SSL (SCRAM-SHA-512 over TLS) with this user; the
    broker's own traffic keeps a loopback PLAINTEXT listener (`internal_port`)."""

    username: str
    password: str
    keystore: Path
    keystore_password: str
    ca_file: Path
    internal_port: int

    def client_env(self) -> dict[str, str]:
        return {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": self.username, "KAFKA_SASL_PASSWORD": self.password,
                "KAFKA_SSL_CA_LOCATION": str(self.ca_file)}


def make_certificate(home: Path, password: str) -> tuple[Path, Path]:
    """A self-signed PKCS12 keystore for localhost / 127.0.0.1 (librdkafka checks the host name)
    made with the JDK's keytool, and its certificate as PEM for the clients' ssl.ca.location."""
    keystore, ca_file = home / "broker.p12", home / "ca.pem"
    if keystore.exists() and ca_file.exists():
        return keystore, ca_file
    keytool = str(Path(java_executable()).with_name("keytool"))
    keystore.unlink(missing_ok=True)
    for args in (
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", "3650", "-dname", "CN=localhost", "-ext", "SAN=dns:localhost,ip:127.0.0.1",
         "-storetype", "PKCS12", "-keystore", str(keystore), "-storepass", password,
         "-keypass", password],
        ["-exportcert", "-rfc", "-alias", "broker", "-keystore", str(keystore),
         "-storepass", password, "-file", str(ca_file)],
    ):
        result = subprocess.run([keytool, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KafkaSetupError(f"keytool {args[0]} failed:\n{result.stdout}{result.stderr}")
    return keystore, ca_file


def _listener_properties(port: int, controller_port: int,
                         secure: SecureListener | None) -> list[str]:
    controller = f"CONTROLLER://127.0.0.1:{controller_port}"
    if secure is None:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{port},{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},{controller}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]
    internal = f"PLAINTEXT://127.0.0.1:{secure.internal_port}"
    return [
        f"listeners=SASL_SSL://127.0.0.1:{port},{internal},{controller}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{port},{internal},{controller}",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={secure.keystore}",
        f"ssl.keystore.password={secure.keystore_password}",
        f"ssl.key.password={secure.keystore_password}",
    ]


def _server_properties(data_dir: Path, port: int, controller_port: int, partitions: int,
                       secure: SecureListener | None = None) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            *_listener_properties(port, controller_port, secure),
            "controller.listener.names=CONTROLLER",
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
    secure: the clients' listener is SASL_SSL (SCRAM-SHA-512 over TLS) with one user
    (`username`, password `secure_password` or a random one kept in the home), its certificate
    made at the first start; `status().client_env` holds the settings clients need.
    """

    def __init__(self, home: Path | None = None, port: int | None = None, partitions: int = 3,
                 secure: bool = False, username: str = "itel",
                 secure_password: str | None = None):
        self.home = (home or state_dir() / "kafka").resolve()
        self.secure = secure
        self.username = username
        self._secure_password = secure_password
        self.requested_port = port
        self.partitions = partitions
        self.status_file = self.home / "broker.json"
        self.ports_file = self.home / "ports.json"
        self.properties_file = self.home / "server.properties"
        self.data_dir = self.home / "data"
        self.log_file = self.home / "broker.log"
        self.password_file = self.home / "sasl.password"  # secure mode: the SCRAM user's, 0600

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

    def client_env(self) -> dict[str, str]:
        """The KAFKA_* variables a client of the running secure broker needs, password included
        (read from password_file); {} for a plaintext broker."""
        status = self.status()
        if status is None or not status.client_env:
            return {}
        return {**status.client_env, "KAFKA_SASL_PASSWORD": self.password_file.read_text()}

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

    def _secure_listener(self) -> SecureListener | None:
        """The secure mode's user, certificate and internal port, kept in the home across
        restarts (the SCRAM user is written into the log dir when it is formatted)."""
        if not self.secure:
            return None
        saved_file = self.home / "secure.json"
        if saved_file.exists() and (self.data_dir / "meta.properties").exists():
            saved = json.loads(saved_file.read_text())
        else:
            saved = {"username": self.username,
                     "keystore_password": secrets.token_urlsafe(18), "internal_port": free_port()}
            self.password_file.write_text(self._secure_password or secrets.token_urlsafe(18))
            saved_file.write_text(json.dumps(saved))
            self.password_file.chmod(0o600)
        keystore, ca_file = make_certificate(self.home, saved["keystore_password"])
        password = self.password_file.read_text()
        return SecureListener(username=saved["username"], password=password,
                              keystore=keystore, keystore_password=saved["keystore_password"],
                              ca_file=ca_file, internal_port=saved["internal_port"])

    def _format(self, java: str, classpath: str, secure: SecureListener | None = None) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        scram = ["--add-scram", f"SCRAM-SHA-512=[name={secure.username},password={secure.password}]"
                 ] if secure else []
        result = subprocess.run(
            [java, *jvm_options(), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}", "-cp", classpath,
             "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
             "-c", str(self.properties_file), *scram],
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
        secure = self._secure_listener()
        for needed in (port, controller_port, *([secure.internal_port] if secure else [])):
            if not port_is_free(needed):
                raise KafkaSetupError(
                    f"port {needed} of the broker in {self.home} is taken by another process"
                )
        self.properties_file.write_text(
            _server_properties(self.data_dir, port, controller_port, self.partitions, secure)
        )
        self._format(java, classpath, secure)
        started_at = time.time()
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [java, *jvm_options(), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
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
            client_env={k: v for k, v in secure.client_env().items()
                        if k != "KAFKA_SASL_PASSWORD"} if secure else None,
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
                admin = AdminClient({"bootstrap.servers": status.bootstrap_servers,
                                     **env_security_settings(self.client_env())})
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


def configured_or_local_bootstrap_servers() -> str:
    """For the developer commands (publish, topics, skip, replay): KAFKA_BOOTSTRAP_SERVERS, else
    the running local broker. The pipeline itself only takes the variable."""
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or local_bootstrap_servers()


def local_bootstrap_servers() -> str:
    """The address of the running local broker (default home), or a clear error."""
    status = LocalKafkaBroker().status()
    if status is None:
        raise KafkaSetupError(
            "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or run `itel-dagster kafka start`"
        )
    return status.bootstrap_servers
