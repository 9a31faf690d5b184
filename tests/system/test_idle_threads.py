"""No OpenMP team outlives the work that started it (`splitft.threads`).

Observed from outside the code: OpenMP workers are thread ids in /proc that a parallel region starts
and a release ends. The interceptor runs in a real gRPC server on loopback whose handler starts a
team; the edge's start (loading, memory profiles), its `Step` call and the SDK's stream reader are
checked on real `splitft edge serve` processes, with the policy on (`release`) and off (`keep`),
given the same work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import torch

from device_client import EdgeConnection
from edge_server.idle_threads import IdleThreadsInterceptor
from splitft.bench.common import torch_threads
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import make_batch, save_tiny_model
from splitft.threads import IDLE_THREADS_ENV, loaded_libgomp, release_idle_threads
from tests.support.split import split_llama

pytestmark = pytest.mark.skipif(loaded_libgomp() is None, reason="torch runs on another OpenMP runtime")
EDGE_THREADS = 4


def _tids(pid: int | str = "self") -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def _alive_after(tids: set[int], seconds: float = 2.0) -> set[int]:
    """`tids` still alive once an exit has had time to happen (a release ends them at once)."""
    deadline = time.monotonic() + seconds
    while tids & _tids() and time.monotonic() < deadline:
        time.sleep(0.01)
    return tids & _tids()


@contextmanager
def _server(interceptors: list[grpc.ServerInterceptor]) -> Iterator[tuple[grpc.Channel, list[set[int]]]]:
    """A loopback gRPC server whose one unary call starts an OpenMP team in its handler thread and
    reports that team's worker thread ids."""
    teams: list[set[int]] = []

    def start_team(request: bytes, context: grpc.ServicerContext) -> bytes:
        before = _tids()
        torch.ones(1 << 20).mul_(2.0)  # above torch's grain size: a parallel region
        teams.append(_tids() - before)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Teams", {"Start": grpc.unary_unary_rpc_method_handler(start_team)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, teams
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("interceptor", [True, False])
def test_the_interceptor_ends_the_team_a_call_started(interceptor: bool, monkeypatch) -> None:
    monkeypatch.setenv(IDLE_THREADS_ENV, "release")
    with torch_threads(3), _server([IdleThreadsInterceptor()] if interceptor else []) as (channel, teams):
        channel.unary_unary("/test.Teams/Start")(b"", timeout=30)
        assert len(teams[0]) == 2, "a handler thread's first parallel region starts 2 workers"
        left = _alive_after(teams[0])
        assert (left == set()) is interceptor


def _edge_threads(tmp_path: Path, policy: str, codec: str) -> tuple[int, int]:
    """(threads of the edge process, threads this process gained) after 3 steps with `codec`."""
    # hidden 256, 4 x 64 tokens: the trunk's ops, and int8's dequantisation, run as parallel regions
    tiny = save_tiny_model("llama", tmp_path / "llama", layers=3, hidden=256)
    batch = make_batch("llama", torch.Generator().manual_seed(0), 4, 64)
    edge = EdgeProcess([f"llama={tiny.path}"], threads=EDGE_THREADS, env={IDLE_THREADS_ENV: policy})
    with edge, EdgeConnection(edge.address, insecure=True) as conn, torch_threads(2):
        assert edge.process is not None
        torch.ones(1 << 20).mul_(2.0)  # this thread's own team exists before counting
        before = len(_tids())
        with split_llama(tiny, conn, codec=codec) as model:
            optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
            for _ in range(3):
                model(**batch).loss.backward()
                optimizer.step()  # the edge's Step call: the trunk optimizer, in a handler thread
                optimizer.zero_grad()
            time.sleep(0.5)  # every call's release has run
            gained = len(_tids()) - before
            return len(_tids(edge.process.pid)), gained


@pytest.mark.slow
@pytest.mark.e2e
def test_a_started_edge_holds_no_team_from_loading(tmp_path: Path) -> None:
    # loading and the memory profile's forwards run in the thread that starts the server
    tiny = save_tiny_model("llama", tmp_path / "llama", layers=3, hidden=256)
    counts = {}
    for policy in ("release", "keep"):
        edge = EdgeProcess([f"llama={tiny.path}"], threads=EDGE_THREADS, env={IDLE_THREADS_ENV: policy})
        with edge:
            assert edge.process is not None
            counts[policy] = len(_tids(edge.process.pid))
    assert counts["keep"] - counts["release"] >= EDGE_THREADS - 2


@pytest.mark.slow
@pytest.mark.e2e
def test_step_and_stream_reader_teams_do_not_stay(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(IDLE_THREADS_ENV, "release")
    release_idle_threads()
    edge_release, device_raw = _edge_threads(tmp_path / "release", "release", "raw")
    _, device_int8 = _edge_threads(tmp_path / "int8", "release", "int8")
    monkeypatch.setenv(IDLE_THREADS_ENV, "keep")
    edge_keep, device_int8_kept = _edge_threads(tmp_path / "keep", "keep", "int8")
    # the keeping edge still holds the Step handler's EDGE_THREADS - 1 workers (gRPC's own threads
    # may differ by one between two processes); both hold the Train stream's team
    assert edge_keep - edge_release >= EDGE_THREADS - 2
    # the SDK's stream reader decodes int8 answers with a team of its own, which it ends
    assert device_int8 == device_raw
    assert device_int8_kept == device_raw + 1
