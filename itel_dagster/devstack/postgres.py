"""A throwaway PostgreSQL server for tests and benches: Debian's binaries (initdb, pg_ctl) in a
directory of its own, on 127.0.0.1 and a free port, trust authentication. Never for production:
it has no password and lives only as long as its directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from itel_dagster.devstack.kafka.broker import free_port

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
                     "/usr/lib/postgresql/17/bin")
SUPERUSER = "postgres"


def postgres_bin() -> Path | None:
    """The folder holding initdb and pg_ctl (PG_BIN, else Debian's), or None."""
    for folder in (os.environ.get("PG_BIN"), *PG_BIN_CANDIDATES):
        if folder and (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


class LocalPostgres:
    """initdb + pg_ctl in `home`. initdb refuses root, so as root the server runs as the
    `postgres` system user (runuser): `home` is given to it, and every folder above `home` must
    let it through (pytest's tmp_path does not: use tempfile.mkdtemp())."""

    def __init__(self, home: Path, port: int = 0):
        self.home = home.resolve()
        self.port = port or free_port()
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "socket"
        self.log_file = self.home / "postgres.log"
        self.bin = postgres_bin()
        self.start_seconds: float | None = None

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SUPERUSER, "--", *command]
        return list(command)

    def start(self) -> "LocalPostgres":
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries not found (initdb, pg_ctl): "
                               "apt-get install postgresql, or set PG_BIN")
        started = time.monotonic()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, SUPERUSER)
            shutil.chown(self.socket_dir, SUPERUSER)
            # runuser keeps the caller's cwd; the postgres user must be able to stay there.
            self.home.chmod(0o755)
        self._run(str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                  "-o", options, "-w", "-t", "60", "start")
        self.start_seconds = time.monotonic() - started
        return self

    def _run(self, *command: str) -> None:
        done = subprocess.run(self._as_owner(*command), capture_output=True, text=True,
                              cwd=self.home)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-500:]}")

    def stop(self) -> None:
        if self.bin is None or not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data_dir),
                                      "-m", "fast", "-w", "stop"),
                       check=False, capture_output=True, cwd=self.home)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg2

        connection = psycopg2.connect(self.url())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def dagster_env(self, database: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables of deploy/dagster.postgres.yaml for `database`."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port),
                "DAGSTER_PG_USER": SUPERUSER, "DAGSTER_PG_PASSWORD": "",
                "DAGSTER_PG_DB": database}
