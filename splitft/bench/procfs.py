"""Another process's CPU time and resident memory, from Linux's /proc (None where it cannot be read).

`peak_rss.py` measures the process it runs in; these read a child (an edge, a device) from outside.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads, from the kernel's per-process
    clock (nanoseconds): /proc counts in clock ticks (10 ms), which rounds a short step to zero."""
    return time.process_time()


def total_cpu_seconds(pids: Sequence[int]) -> float | None:
    """The CPU seconds of all `pids` together; None if any cannot be read."""
    seconds = [cpu_seconds(pid) for pid in pids]
    return None if any(s is None for s in seconds) else sum(s for s in seconds if s is not None)


def status_kib(pid: int | None, field_name: str) -> int | None:
    """A `kB` field of /proc/PID/status: VmRSS (resident now), VmHWM (peak since start or reset)."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak(pid: int | None) -> bool:
    """Reset process `pid`'s peak-RSS mark (VmHWM) to its current RSS; whether the kernel allowed it."""
    if pid is None:
        return False
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
