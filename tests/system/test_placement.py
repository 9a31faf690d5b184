"""Placement on the CPU: a bfloat16 trunk and a bfloat16 device span train through the split, each
side casting what arrives; a device map over the CPU loads and serves like the plain trunk.

What needs a GPU (the trunk and the device span on CUDA, the equivalence suite there) is in
tests/system/test_accelerator.py, skipped where no GPU is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from device_client import EdgeConnection
from edge_server import EdgeConfig, EdgeServer
from splitft.model.placement import Placement
from splitft.testing.tiny import TinyModel, make_batch
from tests.support.equivalence import run_equivalence
from tests.support.split import split_llama
from tests.system.test_equivalence import assert_equivalent


def _edge(tiny: TinyModel, placement: Placement) -> EdgeServer:
    config = EdgeConfig(model_dirs=[f"llama={tiny.path}"], port=0, insecure=True, placement=placement)
    return EdgeServer(config).start()


@pytest.fixture(scope="module")
def bf16_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    server = _edge(tiny_models["llama"], Placement("cpu", "bfloat16"))
    yield server
    server.stop(grace=1)


def _losses(tiny: TinyModel, conn: EdgeConnection, steps: int = 6, **overrides: object) -> list[float]:
    model = split_llama(tiny, conn, seed=0, **overrides)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
    generator = torch.Generator().manual_seed(1)
    batches = [make_batch("llama", generator) for _ in range(2)]
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        out = model(**batches[step % 2])
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    model.close()
    return losses


def test_a_bfloat16_trunk_trains_a_float32_device(bf16_edge, tiny_models, conn) -> None:
    served = bf16_edge.registry.get("llama").span
    assert {p.dtype for p in served.root.parameters()} == {torch.bfloat16}
    tiny = tiny_models["llama"]
    with EdgeConnection(bf16_edge.address, insecure=True) as bf16:
        half = _losses(tiny, bf16)
    full = _losses(tiny, conn)  # the float32 edge of the suite, same start and data
    assert all(math.isfinite(x) for x in half)
    assert half[-1] < half[0]  # it learns through the bfloat16 trunk
    assert half[0] == pytest.approx(full[0], rel=0.02)  # bf16 rounding, not another computation
    assert half != full


def test_a_bfloat16_device_span_trains(tiny_models, conn) -> None:
    losses = _losses(tiny_models["llama"], conn, dtype="bfloat16")
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_a_device_map_over_the_cpu_serves_the_same_trunk(tiny_models, tmp_path) -> None:
    """`--device-map auto` on a machine without GPUs maps every block to the CPU: split training
    there still equals the one-process model."""
    tiny = tiny_models["llama"]
    server = _edge(tiny, Placement("cpu", "float32", "auto"))
    try:
        with EdgeConnection(server.address, insecure=True) as conn:
            assert_equivalent(run_equivalence(tiny, conn, tmp_path, model_name="llama"))
    finally:
        server.stop(grace=1)
