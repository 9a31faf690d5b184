"""`splitft bench generate --quick` runs end to end: both modes side by side, bytes per token."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from splitft.bench.generate import GenerateBenchConfig
from splitft.errors import InvalidArgument


def test_the_config_refuses_what_cannot_run() -> None:
    with pytest.raises(InvalidArgument, match="runs causal LMs"):
        GenerateBenchConfig(family="bert")
    with pytest.raises(InvalidArgument, match="new_tokens and rounds"):
        GenerateBenchConfig(new_tokens=0)


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_generate_quick_reports_both_modes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "splitft.cli", "bench", "generate", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["generated_tokens_per_run"] == 2 * 6
    for mode in ("cached", "uncached"):
        assert report[mode]["tokens_per_second"]["median"] > 0
    # Uncached steps send the whole sequence so far; cached ones one token's activations.
    cached, uncached = report["cached"]["bytes_up_per_token"], report["uncached"]["bytes_up_per_token"]
    assert cached["max"] < uncached["min"] / 2
    assert report["cached_speedup"]["median"] > 0
