"""Sessions training at once on one edge do not disturb each other: each equals its solo run.

With cross-session batching on (the default) sessions stepping together share trunk passes, whose
matmuls run over more rows (and their LoRA paths as batched matmuls): the same arithmetic, rounded
in a different order, so runs agree closely, not bit for bit: losses to 1e-5 (the batching
equivalence bound, `test_batching.py`), adapters after five AdamW steps at lr 1e-2 to 1e-4 (AdamW
divides by the root of a small second moment early on, which magnifies last-bit differences).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch

SEEDS = (11, 22, 33, 44)
STEPS = 5


@dataclass
class Result:
    losses: list[float]
    adapter: dict[str, torch.Tensor]


def _build(stack: ExitStack, tiny: TinyModel, address: str, seed: int) -> SplitModel:
    # The device LoRA initialises from torch's global RNG, which threads would share: build every
    # model on the main thread, each right after seeding, so its start does not depend on scheduling.
    torch.manual_seed(seed)
    conn = stack.enter_context(EdgeConnection(address, insecure=True))
    return stack.enter_context(
        SplitModel.from_pretrained(
            tiny.path,
            edge=conn,
            model="llama",
            device_layers=1,
            head_layers=1,
            seed=seed,
            lora_config=lora_config_for("llama"),
        )
    )


def _train(model: SplitModel, seed: int, start: threading.Barrier | None = None) -> Result:
    generator = torch.Generator().manual_seed(seed)  # each session its own data
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    model.train()
    if start is not None:
        start.wait()  # all sessions step at the same time
    losses = []
    for _ in range(STEPS):
        out = model(**make_batch("llama", generator))
        out.loss.backward()
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    return Result(losses, model.adapter_state_dict())


def test_concurrent_sessions_equal_solo_runs(tiny_models: dict[str, TinyModel], edge: EdgeServer) -> None:
    tiny = tiny_models["llama"]
    solo: dict[int, Result] = {}
    for seed in SEEDS:
        with ExitStack() as stack:
            solo[seed] = _train(_build(stack, tiny, edge.address, seed), seed)

    with ExitStack() as stack:
        models = {seed: _build(stack, tiny, edge.address, seed) for seed in SEEDS}
        start = threading.Barrier(len(SEEDS))
        with ThreadPoolExecutor(len(SEEDS)) as pool:
            futures = {seed: pool.submit(_train, models[seed], seed, start) for seed in SEEDS}
            together = {seed: future.result(timeout=120) for seed, future in futures.items()}

    for seed in SEEDS:
        assert together[seed].losses == pytest.approx(solo[seed].losses, abs=1e-5), f"seed {seed}"
        assert together[seed].adapter.keys() == solo[seed].adapter.keys()
        for key, value in solo[seed].adapter.items():
            assert torch.allclose(together[seed].adapter[key], value, atol=1e-4, rtol=0), (
                f"seed {seed}: {key}"
            )
    # different seeds and data really gave different runs, so agreement above is not vacuous
    assert len({tuple(solo[s].losses) for s in SEEDS}) == len(SEEDS)
