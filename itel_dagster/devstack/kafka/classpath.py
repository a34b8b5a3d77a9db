"""The Kafka broker's Java classpath, resolved by Maven from the pom beside this file.

Maven caches the jars in its local repository (~/.m2); the resolved classpath is cached in the
state dir keyed by the pom's hash, so only the first start on a machine needs the network.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

POM = Path(__file__).with_name("pom.xml")


class KafkaSetupError(RuntimeError):
    """The broker cannot be set up on this machine (no Java, no Maven, resolution failed)."""


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def _cached_classpath(cache_file: Path) -> str | None:
    if not cache_file.exists():
        return None
    classpath = cache_file.read_text().strip()
    jars = classpath.split(":")
    return classpath if jars and all(Path(j).exists() for j in jars) else None


def resolve_classpath(cache_dir: Path) -> str:
    """Return the broker classpath, running `mvn dependency:build-classpath` when not cached.

    Safe from several processes at once (pytest workers each starting a broker on a fresh
    machine): one resolves under a file lock, the others wait and read its cache file."""
    cache_file = cache_dir / f"classpath-{_pom_digest()}.txt"
    cached = _cached_classpath(cache_file)
    if cached:
        return cached
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError("Maven (mvn) is not on PATH; install Maven 3.8+ to fetch Kafka")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "classpath.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        cached = _cached_classpath(cache_file)  # resolved while this process waited
        if cached:
            return cached
        out_file = cache_dir / f"classpath-{os.getpid()}.tmp"
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:build-classpath",
             f"-Dmdep.outputFile={out_file}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not out_file.exists():
            tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise KafkaSetupError("Maven could not resolve the Kafka jars:\n" + "\n".join(tail))
        out_file.replace(cache_file)
    return cache_file.read_text().strip()


def java_executable() -> str:
    """The `java` of JAVA_HOME, else of PATH; Kafka 4 brokers need Java 17+."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise KafkaSetupError("Java is not installed (no JAVA_HOME, no java on PATH); need JDK 17+")
    version = subprocess.run(
        [candidate, "-version"], capture_output=True, text=True, check=False
    ).stderr
    major = _java_major(version)
    if major is not None and major < 17:
        raise KafkaSetupError(f"Kafka 4 needs Java 17+, found Java {major} at {candidate}")
    return candidate


def _java_major(version_output: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    first = int(match.group(1))
    return int(match.group(2)) if first == 1 and match.group(2) else first
