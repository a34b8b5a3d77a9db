"""Peak resident memory of a process (the kernel's VmHWM), read from /proc on Linux.

A run reports its own peak in its metadata, so the runs near the memory budget are visible in the
UI; the bench reads every process's peak the same way.
"""

from __future__ import annotations

from pathlib import Path


def peak_rss_kb(pid: int | str = "self") -> int | None:
    """VmHWM of `pid` in kB; None when the process is gone or there is no /proc (not Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float | None:
    """This process's peak RSS in MB (one decimal)."""
    kb = peak_rss_kb()
    return None if kb is None else round(kb / 1024, 1)


def reset_peak_rss() -> bool:
    """Start this process's peak afresh from its current RSS (Linux clear_refs), so a later
    peak_rss_mb() measures what came after (the bench: a run, not the publishing before it).
    False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
