"""Cross-session batching is invisible to each session: with the lossless codec in fp32, every
session's trunk outputs, returned gradients and trunk adapter after training equal a run with
batching off, for sessions of different LoRA ranks, target modules, dropout, sequence lengths and
masks arriving at different times, on models whose trunk draws dropout.

Two real edges serve the same model over gRPC: one with batching on (a wide window, so the
staggered arrivals do share passes; the batcher's counters prove they did) and one with it off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import torch
from peft import LoraConfig

from device_client import EdgeConnection
from device_client.trunk import RemoteTrunk
from edge_server import EdgeConfig, EdgeServer
from edge_server.batching import MAX_SHARED_TOKENS
from splitft.compress import parse_codecs
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import save_tiny_model
from splitft.v1 import dataplane_pb2 as pb

HIDDEN = 32
STEPS = 4
TOLERANCE = 1e-5
TARGETS = {
    "llama": (["q_proj", "v_proj"], ["o_proj", "down_proj", "up_proj"]),
    "gpt2": (["c_attn"], ["c_proj", "c_fc"]),
    "bert": (["query", "value"], ["dense", "key"]),
}


@dataclass(frozen=True)
class Plan:
    """One synthetic device: its adapter, data shape and when it arrives."""

    seed: int
    rank: int | None  # None: no trunk adapter (the device trains only its own blocks)
    targets: int  # which target list of TARGETS
    lora_dropout: float
    rows: int
    tokens: int
    delay: float  # seconds after the common start of each step
    pad: int  # padded tokens at the end of row 0 (0: a mask of ones)
    late: float = 0.0  # extra seconds before the backward: beyond the window, after the others stepped


PLANS = [
    Plan(seed=1, rank=2, targets=0, lora_dropout=0.1, rows=2, tokens=12, delay=0.0, pad=3),
    Plan(seed=2, rank=8, targets=1, lora_dropout=0.0, rows=3, tokens=12, delay=0.04, pad=0),
    Plan(seed=3, rank=None, targets=0, lora_dropout=0.0, rows=1, tokens=12, delay=0.08, pad=5),
    Plan(seed=4, rank=4, targets=1, lora_dropout=0.2, rows=2, tokens=16, delay=0.02, pad=2),
    Plan(seed=5, rank=4, targets=0, lora_dropout=0.0, rows=1, tokens=16, delay=0.06, pad=0, late=0.5),
    # Same rank, rows and targets as seed 4: their LoRA paths run stacked (edge_server.stacked_lora).
    Plan(seed=6, rank=4, targets=1, lora_dropout=0.1, rows=2, tokens=16, delay=0.03, pad=1),
]


@dataclass
class Record:
    outputs: list[torch.Tensor] = field(default_factory=list)
    input_grads: list[torch.Tensor] = field(default_factory=list)
    no_grad_outputs: list[torch.Tensor] = field(default_factory=list)
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)


def _open(conn: EdgeConnection, family: str, plan: Plan) -> RemoteTrunk:
    request = pb.OpenSessionRequest(model=family, device_layers=1, head_layers=1, codec="raw", seed=plan.seed)
    if plan.rank is not None:
        config = LoraConfig(
            r=plan.rank,
            lora_alpha=2 * plan.rank,
            lora_dropout=plan.lora_dropout,
            target_modules=TARGETS[family][plan.targets],
            fan_in_fan_out=family == "gpt2",
        )
        request.trunk_lora = True
        request.lora_config_json = trunk_lora_json(config)
    trunk = RemoteTrunk(conn, conn.call("OpenSession", request), parse_codecs("raw"))
    if trunk.trainable:
        trunk.configure_optimizer("AdamW", {"lr": 1e-2})
    return trunk


def _device(address: str, family: str, plan: Plan, start: threading.Barrier, record: Record) -> None:
    generator = torch.Generator().manual_seed(100 + plan.seed)
    with EdgeConnection(address, insecure=True) as conn:
        trunk = _open(conn, family, plan)
        for _ in range(STEPS):
            hidden = torch.randn(plan.rows, plan.tokens, HIDDEN, generator=generator)
            grad = torch.randn(plan.rows, plan.tokens, HIDDEN, generator=generator)
            mask = torch.ones(plan.rows, plan.tokens, dtype=torch.long)
            if plan.pad:
                mask[0, plan.tokens - plan.pad :] = 0
            start.wait()
            time.sleep(plan.delay)
            forward_id, out = trunk.forward(
                hidden, {"attention_mask": mask}, training=True, requires_grad=True, need_input_grad=True
            )
            time.sleep(plan.delay + plan.late)  # backwards arrive staggered too
            record.outputs.append(out)
            input_grad = trunk.backward(forward_id, grad)
            assert input_grad is not None
            record.input_grads.append(input_grad)
            if trunk.trainable:
                trunk.step({"lr": 1e-2}, 1.0)
                trunk.mark_zero_grad()
        # Dropout is active: the same input twice in training mode meets different masks.
        start.wait()
        for _ in range(2):
            _, out = trunk.forward(
                hidden, {"attention_mask": mask}, training=True, requires_grad=False, need_input_grad=False
            )
            record.no_grad_outputs.append(out)
        record.adapter = trunk.export_adapter()
        trunk.close()


def _train_all(address: str, family: str) -> list[Record]:
    records = [Record() for _ in PLANS]
    start = threading.Barrier(len(PLANS), timeout=60)  # a failed device breaks it, not hangs it
    threads = [
        threading.Thread(target=_device, args=(address, family, plan, start, record))
        for plan, record in zip(PLANS, records, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(len(r.outputs) == STEPS and len(r.no_grad_outputs) == 2 for r in records), "a device failed"
    return records


def _serve(model_dir, family: str, *, batching: bool) -> EdgeServer:
    config = EdgeConfig(
        model_dirs=[f"{family}={model_dir}"],
        port=0,
        insecure=True,
        batching=batching,
        batch_window_ms=400.0,
    )
    return EdgeServer(config).start()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TARGETS))
def test_batched_sessions_match_unbatched(family, tmp_path):
    tiny = save_tiny_model(family, tmp_path / family, hidden=HIDDEN, dropout=0.1)
    batched, alone = _serve(tiny.path, family, batching=True), _serve(tiny.path, family, batching=False)
    try:
        with_batching = _train_all(batched.address, family)
        without = _train_all(alone.address, family)
        stats = batched.sessions.batcher.stats
    finally:
        batched.stop(grace=1)
        alone.stop(grace=1)
    # Batching happened: passes shared by several sessions, forwards and backwards alike.
    assert stats.shared_passes >= 2 and stats.shared_forwards > stats.shared_passes, stats
    assert stats.backward_items > stats.shared_backwards, stats
    assert stats.stacked_lora_calls > 0, stats
    for plan, on, off in zip(PLANS, with_batching, without, strict=True):
        for step in range(STEPS):
            assert _max_diff(on.outputs[step], off.outputs[step]) <= TOLERANCE, (plan, step)
            assert _max_diff(on.input_grads[step], off.input_grads[step]) <= TOLERANCE, (plan, step)
        for a, b in zip(on.no_grad_outputs, off.no_grad_outputs, strict=True):
            assert _max_diff(a, b) <= TOLERANCE, plan
        assert _max_diff(*on.no_grad_outputs) > 1e-3, "dropout was not active"
        assert on.adapter.keys() == off.adapter.keys()
        assert bool(on.adapter) == (plan.rank is not None)
        for name in on.adapter:
            assert _max_diff(on.adapter[name], off.adapter[name]) <= TOLERANCE, (plan, name)


def test_forwards_above_the_shared_token_bound_run_alone(tmp_path):
    tiny = save_tiny_model("llama", tmp_path / "llama", hidden=HIDDEN)
    edge = _serve(tiny.path, "llama", batching=True)
    start = threading.Barrier(2, timeout=60)
    answered: list[torch.Tensor] = []

    def device(seed: int) -> None:
        with EdgeConnection(edge.address, insecure=True) as conn:
            trunk = _open(conn, "llama", Plan(seed, 4, 0, 0.0, rows=3, tokens=200, delay=0.0, pad=0))
            for _ in range(2):
                start.wait()
                _, out = trunk.forward(
                    torch.randn(3, 200, HIDDEN), {}, training=True, requires_grad=False, need_input_grad=False
                )
                answered.append(out)
            trunk.close()

    try:
        threads = [threading.Thread(target=device, args=(seed,)) for seed in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = edge.sessions.batcher.stats
    finally:
        edge.stop(grace=1)
    assert 3 * 200 > MAX_SHARED_TOKENS
    assert len(answered) == 4
    assert stats.shared_forwards == 0 and stats.alone_forwards == 0, stats  # never offered to the batcher
