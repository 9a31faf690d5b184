"""Benchmark workers: a fresh Python process per measurement, spec in as JSON, result out as JSON.

A fresh process per measurement keeps one measurement's memory, threads and caches out of the
next one's. The worker reads its spec from stdin and prints one line `<prefix><json>`; anything else
it prints (logs, warnings) is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_worker(
    module: str,
    spec: dict[str, Any],
    *,
    prefix: str,
    label: str,
    timeout: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `python -m <module> --worker` on `spec`; its result, or RuntimeError with its output's tail."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--worker"],
        input=json.dumps(spec),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-4000:]
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(prefix) :])
    return result
