"""The SDK and the edge release their idle OpenMP workers at each hand-off, unless told to keep them.

Observed from outside the code: OpenMP worker threads are thread ids in /proc that a parallel region
starts and a release ends. The device side runs against the in-process edge; the edge side is two
real `splitft edge serve` processes (release and keep) given the same work, whose thread counts
differ by the workers the keeping one still holds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from device_client import EdgeConnection
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import TinyModel, make_batch, save_tiny_model
from splitft.threads import IDLE_THREADS_ENV, loaded_libgomp, release_idle_threads
from tests.support.split import split_llama

pytestmark = pytest.mark.skipif(loaded_libgomp() is None, reason="torch runs on another OpenMP runtime")
EDGE_THREADS = 4


def _tids(pid: int | str = "self") -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def _start_workers() -> set[int]:
    release_idle_threads()
    before = _tids()
    torch.ones(1 << 20).mul_(2.0)  # a parallel region: this thread's team of workers
    return _tids() - before


def _settle(tids: set[int]) -> set[int]:
    """`tids` still alive after their exit has had time to happen (a release ends them at once)."""
    deadline = time.monotonic() + 5
    while tids & _tids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return tids & _tids()


@pytest.mark.parametrize("policy", ["release", "keep"])
def test_the_sdk_releases_its_workers_once_a_forward_is_sent(
    policy: str, tiny_models: dict[str, TinyModel], conn: EdgeConnection, monkeypatch
) -> None:
    monkeypatch.setenv(IDLE_THREADS_ENV, "release")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with split_llama(tiny_models["llama"], conn) as model:
            batch = make_batch("llama", torch.Generator().manual_seed(0), 2, 8)
            model(**batch)  # the stream is open and every first-call cost paid
            workers = _start_workers()
            assert workers, "a parallel region with 2 torch threads starts a worker"
            monkeypatch.setenv(IDLE_THREADS_ENV, policy)
            with torch.no_grad():
                model(**batch)  # the tiny model's own ops are below torch's grain: no new team
            left = _settle(workers) if policy == "release" else workers & _tids()
            assert (left == set()) is (policy == "release")
    finally:
        monkeypatch.setenv(IDLE_THREADS_ENV, "release")
        release_idle_threads()
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_edge_releases_its_workers_once_it_has_answered(tmp_path: Path) -> None:
    # hidden 256, 4 x 64 tokens: the trunk's ops are large enough to run as parallel regions
    tiny = save_tiny_model("llama", tmp_path / "llama", layers=3, hidden=256)
    batch = make_batch("llama", torch.Generator().manual_seed(0), 4, 64)
    counts = {}
    for policy in ("release", "keep"):
        edge = EdgeProcess([f"llama={tiny.path}"], threads=EDGE_THREADS, env={IDLE_THREADS_ENV: policy})
        with edge, EdgeConnection(edge.address, insecure=True) as conn:
            assert edge.process is not None
            with split_llama(tiny, conn) as model:
                for _ in range(3):
                    model(**batch).loss.backward()
                time.sleep(0.5)  # the last answer's release has run
                counts[policy] = len(_tids(edge.process.pid))
    # the keeping edge still holds its stream thread's EDGE_THREADS - 1 workers; gRPC's own threads
    # may differ by one between two processes
    assert counts["keep"] - counts["release"] >= EDGE_THREADS - 2
