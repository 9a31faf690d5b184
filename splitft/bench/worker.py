"""Benchmark workers: a fresh Python process per measurement, spec in as JSON, result out as JSON.

A fresh process per measurement keeps one measurement's memory, threads and caches out of the
next one's. The worker reads its spec from stdin and prints one line `<prefix><json>`; anything else
it prints (logs, warnings) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
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


def serve_worker(measure: Callable[[dict[str, Any]], dict[str, Any]], *, prefix: str) -> int:
    """The worker's side of `run_worker`: quiet logging, `measure` the spec on stdin, print the result."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    result = measure(json.loads(sys.stdin.read()))
    sys.stdout.write(prefix + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
