"""SIGTERM to a command that started an edge process stops the edge too: a killed benchmark used to
leave its `splitft edge serve` child serving (the cleanup ran only when the `with` block exited)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads children from Linux's /proc")
def test_sigterm_to_a_bench_stops_its_edge_child(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "splitft.cli",
        "bench",
        "federated",
        "--quick",
        "--json",
        str(tmp_path / "r.json"),
    ]
    bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    edge = None
    try:
        deadline = time.monotonic() + 240
        while edge is None and time.monotonic() < deadline and bench.poll() is None:
            edge = next((c for c in _children(bench.pid) if "edge serve" in _cmdline(c)), None)
            time.sleep(0.2)
        assert edge is not None, "the bench never started its edge process"
        time.sleep(1.0)  # let it get past the health check into its work
        bench.send_signal(signal.SIGTERM)
        _, stderr = bench.communicate(timeout=60)
        assert bench.returncode == 143, stderr.decode()[-2000:]
        assert b"terminated (SIGTERM)" in stderr
        deadline = time.monotonic() + 10
        while _alive(edge) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(edge), f"edge {edge} outlived its bench"
    finally:
        if bench.poll() is None:
            bench.kill()
        if edge is not None and _alive(edge):
            os.kill(edge, signal.SIGKILL)
