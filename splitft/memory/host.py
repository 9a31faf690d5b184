"""Host memory free for new work: MemAvailable, bounded by the cgroup limit when there is one.

Torch-free, shared by the edge (its default session memory limit) and the placement planner (how
much a device map may put on the CPU).
"""

from __future__ import annotations

import os
from pathlib import Path


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under this process's cgroup memory limit (v2, then v1), if it has one."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's huge "unlimited"
            return max(0, int(limit) - usage)
    return None


def host_available() -> tuple[int, str]:
    """Bytes of host memory free now, and where the number comes from."""
    found = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    if found:
        return min(found), "available host memory (MemAvailable, and the cgroup limit if any)"
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages), "physical host memory"
