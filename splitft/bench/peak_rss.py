"""Peak resident memory of this process, from Linux's /proc (getrusage where /proc is missing).

The benchmarks reset the kernel's peak mark (`VmHWM`) once libraries and data are loaded, so that
a peak measures the work after that point, not imports or setup.
"""

from __future__ import annotations

import ctypes
import gc
import re
import resource
from pathlib import Path


def status_kib(field_name: str) -> int | None:
    """A `kB` field of /proc/self/status (e.g. VmRSS, VmHWM), or None where it cannot be read."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def reset_peak() -> tuple[int, bool]:
    """Reset the kernel's peak-RSS mark to the current RSS; (current RSS in KiB, whether it reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    rss = status_kib("VmRSS")
    if rss is None:  # no /proc: getrusage's lifetime peak is the best there is
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss, reset


def peak_kib() -> int:
    """The peak RSS since the last `reset_peak` (or since the process started), in KiB."""
    peak = status_kib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def release_freed_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc), so one phase's garbage does
    not hide in the next phase's peak (RSS never shrinks by itself after a large transient)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
