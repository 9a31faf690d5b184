"""Idle OpenMP threads at hand-offs (`splitft.threads`): the policy, and that a release really ends
the calling thread's OpenMP workers, and only its own (observed as thread ids in /proc)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from splitft.errors import InvalidArgument
from splitft.threads import IDLE_THREADS_ENV, loaded_libgomp, release_idle_threads, releases_idle_threads

needs_libgomp = pytest.mark.skipif(loaded_libgomp() is None, reason="torch runs on another OpenMP runtime")


@pytest.mark.parametrize(
    ("environ", "releases"),
    [
        ({}, True),
        ({IDLE_THREADS_ENV: "release"}, True),
        ({IDLE_THREADS_ENV: " Keep "}, False),
        ({IDLE_THREADS_ENV: ""}, True),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, False),  # the user chose how threads wait: splitft keeps out
        ({"OMP_WAIT_POLICY": "active", IDLE_THREADS_ENV: "release"}, False),
        ({"GOMP_SPINCOUNT": "10000"}, False),
        ({"KMP_BLOCKTIME": "0"}, False),
        ({"OMP_WAIT_POLICY": ""}, True),  # set but empty is not a choice
    ],
)
def test_policy_follows_the_environment(environ: dict[str, str], releases: bool) -> None:
    assert releases_idle_threads(environ) is releases


def test_a_bad_policy_value_is_refused_precisely() -> None:
    with pytest.raises(InvalidArgument, match="SPLITFT_IDLE_THREADS must be 'release' or 'keep'"):
        releases_idle_threads({IDLE_THREADS_ENV: "spin"})


def test_libgomp_is_found_in_a_maps_listing() -> None:
    maps = (
        "7f00-7f01 r-xp 00000000 fd:01 1234 /usr/lib/libc.so.6\n"
        "7f02-7f03 r--p 00000000 00:00 0 \n"
        "7f04-7f05 r-xp 00001000 fd:01 99 /venv/torch/lib/libgomp-a34b3233.so.1\n"
    )
    assert loaded_libgomp(maps) == "/venv/torch/lib/libgomp-a34b3233.so.1"
    assert loaded_libgomp("7f00-7f01 r-xp 00000000 fd:01 1234 /usr/lib/libiomp5.so\n") is None


def _tids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _workers_of_a_parallel_op() -> set[int]:
    """Run a parallel op in this thread; the OpenMP worker threads it started (none if already up)."""
    before = _tids()
    torch.ones(1 << 20).mul_(2.0)  # well above torch's grain size: runs as a parallel region
    return _tids() - before


def _gone(tids: set[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while tids & _tids():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@needs_libgomp
def test_release_ends_this_threads_workers_and_the_next_region_starts_new_ones(monkeypatch) -> None:
    monkeypatch.delenv(IDLE_THREADS_ENV, raising=False)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    with _torch_threads(3):
        release_idle_threads()  # start from no pool, so the op below shows its workers
        workers = _workers_of_a_parallel_op()
        assert len(workers) == 2
        assert release_idle_threads() is True
        assert _gone(workers)
        assert len(_workers_of_a_parallel_op()) == 2  # a new team, the same size
        release_idle_threads()


@needs_libgomp
def test_keep_leaves_the_workers_alone(monkeypatch) -> None:
    with _torch_threads(3):
        monkeypatch.delenv(IDLE_THREADS_ENV, raising=False)
        release_idle_threads()
        workers = _workers_of_a_parallel_op()
        monkeypatch.setenv(IDLE_THREADS_ENV, "keep")
        assert release_idle_threads() is False
        assert not _gone(workers, timeout=0.2) and workers <= _tids()
        monkeypatch.delenv(IDLE_THREADS_ENV)
        assert release_idle_threads() is True and _gone(workers)


@needs_libgomp
def test_release_in_one_thread_leaves_another_threads_team_alone(monkeypatch) -> None:
    monkeypatch.delenv(IDLE_THREADS_ENV, raising=False)
    with _torch_threads(3):
        release_idle_threads()
        mine = _workers_of_a_parallel_op()
        released: list[bool] = []

        def other() -> None:
            torch.ones(1 << 20).mul_(2.0)  # this thread's own team
            released.append(release_idle_threads())

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert released == [True]
        assert mine <= _tids()  # this thread's workers are still there
        assert release_idle_threads() is True and _gone(mine)
