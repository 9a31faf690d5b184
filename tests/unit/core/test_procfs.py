"""The benchmarks' CPU clocks: this process's is fine-grained, another's comes from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

from splitft.bench.procfs import cpu_seconds, own_cpu_seconds, total_cpu_seconds


def _spin(seconds: float) -> None:
    start = own_cpu_seconds()
    while own_cpu_seconds() - start < seconds:
        pass


def test_own_clock_sees_a_few_milliseconds_of_work() -> None:
    # A plan step of a tiny model costs ~2 ms of device CPU: /proc's 10 ms ticks read it as 0.0
    # (CI's plan e2e failed on exactly that); the per-process clock must not.
    before = own_cpu_seconds()
    _spin(0.002)
    assert 0.002 <= own_cpu_seconds() - before < 1.0


def test_another_process_is_read_from_proc_and_summed() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine = cpu_seconds(os.getpid())
        theirs = cpu_seconds(child.pid)
        assert mine is not None and theirs is not None and mine >= 0 and theirs >= 0
        total = total_cpu_seconds([os.getpid(), child.pid])
        assert total is not None and total >= theirs
    finally:
        child.kill()
        child.wait()
    assert cpu_seconds(child.pid) is None  # reaped: nothing to read
    assert total_cpu_seconds([child.pid, os.getpid()]) is None
    assert cpu_seconds(None) is None
