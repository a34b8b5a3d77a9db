"""A process's peak RSS (VmHWM), as runs report it in their metadata and the bench reads it."""

import subprocess
import sys

import pytest

from itel_dagster.metrics.process_memory import peak_rss_kb

pytestmark = pytest.mark.slow  # each test measures processes it starts

PEAK_AFTER_FREEING = """
from itel_dagster.metrics.process_memory import peak_rss_kb, peak_rss_mb
before = peak_rss_kb()
block = bytearray(120 * 1024 * 1024)  # touched: bytearray zero-fills it
del block
print(before, peak_rss_kb(), peak_rss_mb())
"""


def test_the_peak_stays_after_the_memory_is_freed():
    # In a fresh process: this one's earlier peak (other tests) could hide the new one.
    out = subprocess.run([sys.executable, "-c", PEAK_AFTER_FREEING], capture_output=True,
                         text=True, check=True).stdout.split()
    before, after, after_mb = int(out[0]), int(out[1]), float(out[2])

    assert after - before > 100 * 1024
    assert after_mb == round(after / 1024, 1)


def test_another_process_and_a_gone_one():
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"up\n"  # the interpreter is loaded
        assert peak_rss_kb(child.pid) > 1024
    finally:
        child.communicate(b"")
    assert peak_rss_kb(child.pid) is None


PEAK_AFTER_A_RESET = """
from itel_dagster.metrics.process_memory import peak_rss_kb, reset_peak_rss
block = bytearray(120 * 1024 * 1024)
del block
high = peak_rss_kb()
assert reset_peak_rss()
print(high, peak_rss_kb())
"""


def test_a_reset_starts_the_peak_afresh_from_the_current_size():
    # The bench resets it after publishing, so the peak it prints is the run's alone.
    out = subprocess.run([sys.executable, "-c", PEAK_AFTER_A_RESET], capture_output=True,
                         text=True, check=True).stdout.split()
    high, after = int(out[0]), int(out[1])
    assert high - after > 100 * 1024
