"""A throwaway Azure Blob Storage emulator for tests and benches: Azurite from npm (installed by
scripts/ensure_azurite.sh into var/tools/azurite), blob service only, on 127.0.0.1 and a free port,
data in memory. Never for production: its account and key are Azurite's public development ones.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import subprocess
import time
from email.utils import formatdate
from pathlib import Path

import httpx

from itel_dagster.devstack.kafka.broker import free_port
from itel_dagster.settings.paths import PROJECT_ROOT

ACCOUNT = "devstoreaccount1"
# Azurite's documented development account key (public, the same in every Azurite).
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")
ENSURE_SCRIPT = PROJECT_ROOT / "scripts/ensure_azurite.sh"
AZURITE_BLOB = PROJECT_ROOT / "var/tools/azurite/node_modules/.bin/azurite-blob"


class AzuriteUnavailable(RuntimeError):
    """Azurite could not be installed or started; the message is one line."""


def ensure_azurite() -> Path:
    """The azurite-blob command, installed from npm when missing."""
    done = subprocess.run(["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True)
    if done.returncode != 0 or not AZURITE_BLOB.exists():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise AzuriteUnavailable(f"azurite not installed: {lines[-1] if lines else 'npm failed'}")
    return AZURITE_BLOB


class LocalAzurite:
    """azurite-blob in a process group of its own, stopped by `stop()`."""

    def __init__(self, home: Path, port: int = 0):
        self.home = home.resolve()
        self.port = port or free_port()
        self.log_file = self.home / "azurite.log"
        self.start_seconds: float | None = None
        self._process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def start(self, timeout: float = 60.0) -> "LocalAzurite":
        command = ensure_azurite()
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [str(command), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                 "--inMemoryPersistence", "--disableTelemetry",
                 "--skipApiVersionCheck", "--loose"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.home, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self._process.poll() is not None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-1:]
                raise AzuriteUnavailable(f"azurite exited ({self._process.returncode}): "
                                         f"{tail[0] if tail else 'no output'}")
            try:
                httpx.get(f"{self.endpoint}?comp=list", timeout=1.0)  # any answer: it listens
                self.start_seconds = time.monotonic() - started
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise AzuriteUnavailable(f"azurite did not answer on port {self.port} in {timeout:.0f} s")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        os.killpg(self._process.pid, signal.SIGTERM)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(10)

    def storage_options(self) -> dict[str, str]:
        """delta-rs (object_store) options for this emulator: the endpoint with the account in
        its path, over plain HTTP. (`azure_storage_use_emulator` would fix port 10000.)"""
        return {"azure_storage_account_name": ACCOUNT, "azure_storage_account_key": ACCOUNT_KEY,
                "azure_storage_endpoint": self.endpoint, "allow_http": "true"}

    def create_container(self, name: str) -> None:
        """Create Container with Shared Key authentication (delta-rs never creates one)."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        # Path-style URL: the account is both the signing account and the path's first segment.
        to_sign = ("PUT\n" + "\n" * 11 + canonical_headers
                   + f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container")
        signature = hmac.new(base64.b64decode(ACCOUNT_KEY), to_sign.encode(), hashlib.sha256)
        headers["Authorization"] = \
            f"SharedKey {ACCOUNT}:{base64.b64encode(signature.digest()).decode()}"
        response = httpx.put(f"{self.endpoint}/{name}", params={"restype": "container"},
                             headers=headers, timeout=10)
        if response.status_code not in (201, 409):  # 409: it exists already
            raise AzuriteUnavailable(f"create container {name}: HTTP {response.status_code} "
                                     f"{response.text[:200]}")
