"""The split on a CUDA GPU: the equivalence suite with both sides and the reference there (fp32),
a bfloat16 trunk, cross-session batching and dropout on the GPU, and a device map over it.

The edge runs in its own process (`splitft edge serve --device cuda`), as deployed: torch's autograd
runs every CUDA backward on one worker thread per device and process, so a device span's trunk
call, which waits in that thread for the edge, would wait forever for an edge whose backward
queues behind it in the same process (`splitft.model.placement.claim_cuda_autograd` refuses that).

Skipped where no GPU is visible (this project's CI machine has none); run on a GPU machine by
`tests/gpu/run.sh`, whose figures docs/benchmarks.md records. On the CPU the same code paths are
covered by tests/system/test_placement.py.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest
import torch

from device_client import EdgeConnection
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import FAMILY_NAMES, TinyModel, make_batch, save_tiny_model
from tests.support.equivalence import EquivalenceRun, run_equivalence
from tests.support.split import split_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible here)")

# fp32 on CUDA: the split and the one-process model launch the same kernels on the same shapes, but
# cuBLAS may pick another algorithm for another leading dimension; measured differences are printed.
CUDA_TOL = 1e-4


def _edge(models: dict[str, TinyModel], *options: str) -> EdgeProcess:
    """A started `splitft edge serve --device cuda ...` serving `models` over loopback."""
    dirs = [f"{name}={m.path}" for name, m in models.items()]
    return EdgeProcess(dirs, extra_args=["--device", "cuda", *options]).start()


@pytest.fixture(scope="module")
def cuda_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeProcess]:
    server = _edge(tiny_models)
    yield server
    server.stop()


def _max_difference(run: EquivalenceRun) -> tuple[float, float]:
    losses = max(abs(a - b) for a, b in zip(run.split_losses, run.reference_losses, strict=True))
    adapter = max((run.split_adapter[k] - v).abs().max().item() for k, v in run.reference_adapter.items())
    return losses, adapter


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_split_training_on_cuda_matches_local_peft_on_cuda(family, tiny_models, cuda_edge, tmp_path) -> None:
    with EdgeConnection(cuda_edge.address, insecure=True) as conn:
        run = run_equivalence(tiny_models[family], conn, tmp_path, model_name=family, device="cuda")
    losses, adapter = _max_difference(run)
    print(f"cuda equivalence {family}: max |loss diff| {losses:.2e}, max |adapter diff| {adapter:.2e}")
    assert losses <= CUDA_TOL and adapter <= CUDA_TOL
    assert sum(run.split_losses[-4:]) < sum(run.split_losses[:4])
    assert set(run.split_adapter) == set(run.reference_adapter)


def test_a_bfloat16_trunk_on_cuda_trains_a_bfloat16_device_on_cuda(tiny_models) -> None:
    tiny = tiny_models["llama"]
    server = _edge({"llama": tiny}, "--dtype", "bfloat16")
    try:
        with EdgeConnection(server.address, insecure=True) as conn:
            model = split_llama(tiny, conn, seed=0, device="cuda", dtype="bfloat16")
            optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
            batch = {k: v.cuda() for k, v in make_batch("llama", torch.Generator().manual_seed(1)).items()}
            losses = []
            for _ in range(6):
                optimizer.zero_grad()
                out = model(**batch)
                out.loss.backward()
                optimizer.step()
                losses.append(out.loss.item())
            model.close()
    finally:
        server.stop()
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def _concurrent_losses(server: EdgeProcess, tiny: TinyModel, sessions: int) -> list[list[float]]:
    results: list[list[float]] = [[] for _ in range(sessions)]
    barrier = threading.Barrier(sessions)

    def train(index: int) -> None:
        with EdgeConnection(server.address, insecure=True) as conn:
            model = split_llama(tiny, conn, seed=index, model="llama", device="cuda")
            optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
            generator = torch.Generator().manual_seed(100 + index)
            batch = {k: v.cuda() for k, v in make_batch("llama", generator, batch=1).items()}
            barrier.wait()
            for _ in range(4):
                optimizer.zero_grad()
                out = model(**batch)
                out.loss.backward()
                optimizer.step()
                results[index].append(out.loss.item())
            model.close()

    threads = [threading.Thread(target=train, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_batched_dropout_sessions_on_cuda_match_unbatched(tmp_path) -> None:
    """Three sessions with dropout through one CUDA trunk: batching on equals batching off (their
    masks come from their own generators, drawn on the CPU, whatever the neighbours)."""
    tiny = save_tiny_model("llama", tmp_path / "llama", dropout=0.1)
    results = {}
    for batching in (True, False):
        server = _edge({"llama": tiny}, "--batching", "on" if batching else "off")
        try:
            results[batching] = _concurrent_losses(server, tiny, 3)
        finally:
            server.stop()
    for on, off in zip(results[True], results[False], strict=True):
        assert on == pytest.approx(off, abs=CUDA_TOL)


def test_a_device_map_over_the_gpu_serves_the_trunk(tiny_models, tmp_path) -> None:
    tiny = tiny_models["llama"]
    server = _edge({"llama": tiny}, "--device-map", "balanced")
    try:
        with EdgeConnection(server.address, insecure=True) as conn:
            run = run_equivalence(tiny, conn, tmp_path, model_name="llama", device="cuda")
    finally:
        server.stop()
    losses, adapter = _max_difference(run)
    assert losses <= CUDA_TOL and adapter <= CUDA_TOL
