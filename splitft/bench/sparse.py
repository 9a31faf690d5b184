"""`splitft bench sparse`: a TaskEdge session's edge memory and step time, sparse delta vs dense.

The edge's work for one TaskEdge session: a trunk (a Llama-style model from a config, its blocks
only) whose target linears carry the session's sparse deltas (TaskEdge's selection at
`budget_fraction`, k entries per row), a forward on hidden states that require grad (the device's
activations), a backward from a gradient (the device's), and AdamW on the deltas. Two
implementations of the delta, on copies of the same trunk with the same masks:

* `dense`: the entries layout as it was until 2026-11: `x @ (W + dense delta)^T`, which keeps a
  weight-sized tensor per target module for backward and builds a weight-sized weight gradient;
* `sparse`: today's `SparseDeltaLinear` (`splitft.methods.sparse_entries`), O(tokens x nnz).

Per round, in alternating order, each runs `steps` timed steps (forward + backward + AdamW), then
one instrumented step, untimed: the distinct storages autograd saves in the forward (parameters and
buffers excluded: the shared trunk holds them), which is what every in-flight forward of the
session holds on the edge, and the peak of torch's CPU allocator over the step above what was live
before it (`AllocationTracker`), which adds the transient tensors of backward. The session's
state (values, their gradients, AdamW's two moments, the index buffer) is the same for both.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from splitft.bench.common import spread, torch_threads
from splitft.bench.memory_probes import AllocationTracker, SavedActivations
from splitft.errors import InvalidArgument
from splitft.methods.common import linear_weight
from splitft.methods.sparse import SparseDeltaLinear, apply_masks, sparse_modules
from splitft.methods.taskedge import TaskEdgeConfig, taskedge_masks

logger = logging.getLogger(__name__)

IMPLEMENTATIONS = ("dense", "sparse")


@dataclass
class SparseBenchConfig:
    layers: int = 4
    hidden: int = 512
    batch: int = 4
    tokens: int = 128
    budget_fraction: float = 0.001  # TaskEdge's regime: 0.1% of all parameters
    rounds: int = 5  # alternating order; the spread is over rounds
    steps: int = 3  # timed steps per implementation and round
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.batch, self.rounds, self.steps, self.threads) < 1:
            raise InvalidArgument("layers, hidden, batch, rounds, steps and threads must be >= 1")
        if self.tokens < 2 or self.hidden % 16:
            raise InvalidArgument("tokens must be >= 2 and hidden a multiple of 16 (heads of 16)")
        if not 0 < self.budget_fraction <= 1:
            raise InvalidArgument(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")


class DenseDeltaLinear(SparseDeltaLinear):
    """The entries layout before 2026-11: one matmul with the base weight plus a dense delta."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = linear_weight(self.base) + self.dense_delta()
        return F.linear(x, weight, cast("torch.Tensor | None", self.base.bias))


def _model(config: SparseBenchConfig) -> LlamaForCausalLM:
    """The whole model: TaskEdge's budget and targets are the whole model's; `.model` is the trunk."""
    torch.manual_seed(config.seed)
    heads = config.hidden // 16
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=config.hidden,
            intermediate_size=4 * config.hidden,
            num_hidden_layers=config.layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max(256, config.tokens),
        )
    )


def _sessions(config: SparseBenchConfig) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """One trunk per implementation, the same weights and the same TaskEdge masks."""
    whole = _model(config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    calibration = [
        {"inputs_embeds": torch.randn(config.batch, config.tokens, config.hidden, generator=generator)}
    ]
    masks = taskedge_masks(whole, calibration, TaskEdgeConfig(budget_fraction=config.budget_fraction))
    trunks: dict[str, nn.Module] = {}
    for name in IMPLEMENTATIONS:
        model = copy.deepcopy(whole)
        apply_masks(model, {n: m.clone() for n, m in masks.items()})
        if name == "dense":
            for module in sparse_modules(model).values():
                module.__class__ = DenseDeltaLinear
        trunks[name] = model.model
    modules = sparse_modules(trunks["sparse"])
    nnz = sum(m.nnz for m in modules.values())
    weights = sum(m.out_features * m.in_features for m in modules.values())
    described = {
        "parameters": sum(p.numel() for p in whole.parameters()),
        "target_modules": len(modules),
        "target_weight_bytes": weights * 4,
        "nnz": nnz,
        "k_per_row": sorted({int(c) for m in modules.values() for c in m.mask().sum(dim=1).unique()}),
        "state_bytes": nnz * 4 * 4 + nnz * 8,  # values, grads, AdamW's 2 moments; int64 indices
    }
    return trunks, described


class _Session:
    """One implementation's trunk, optimizer and fixed device tensors."""

    def __init__(self, trunk: nn.Module, config: SparseBenchConfig) -> None:
        self.trunk = trunk.train()
        params = [p for p in trunk.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-3)
        generator = torch.Generator().manual_seed(config.seed + 2)
        shape = (config.batch, config.tokens, config.hidden)
        self.hidden = torch.randn(*shape, generator=generator)
        self.grad = torch.randn(*shape, generator=generator) / shape[-1]

    def step(self) -> None:
        hidden = self.hidden.clone().requires_grad_(True)  # the device's activations
        out = self.trunk(inputs_embeds=hidden, use_cache=False).last_hidden_state
        out.backward(self.grad)  # the device's gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def instrumented_step(self) -> tuple[int, int]:
        """(bytes autograd saved in the forward, allocator peak over the step above its start)."""
        saved = SavedActivations(self.trunk)
        with AllocationTracker() as tracker, tracker.phase("step"):
            with saved.step():
                hidden = self.hidden.clone().requires_grad_(True)
                out = self.trunk(inputs_embeds=hidden, use_cache=False).last_hidden_state
            out.backward(self.grad)
            del out, hidden
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return saved.peak_bytes, tracker.peak("step") - tracker.live_at("step")


def _round(sessions: dict[str, _Session], order: list[str], steps: int, results: dict[str, Any]) -> None:
    for name in order:
        session, result = sessions[name], results[name]
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            session.step()
            times.append(1000 * (time.perf_counter() - start))
        result["step_ms"].append(sorted(times)[len(times) // 2])
        saved, peak = session.instrumented_step()
        result["saved_bytes"].append(saved)
        result["peak_bytes"].append(peak)


def run_sparse_bench(config: SparseBenchConfig) -> str:
    """Both implementations side by side, alternating; returns the JSON report."""
    load_before = os.getloadavg()
    with torch_threads(config.threads):
        trunks, described = _sessions(config)
        sessions = {name: _Session(trunks[name], config) for name in IMPLEMENTATIONS}
        for session in sessions.values():
            session.step()  # warm-up: AdamW's state, allocator caches
        results: dict[str, Any] = {n: {"step_ms": [], "saved_bytes": [], "peak_bytes": []} for n in sessions}
        for i in range(config.rounds):
            order = list(IMPLEMENTATIONS) if i % 2 == 0 else list(reversed(IMPLEMENTATIONS))
            _round(sessions, order, config.steps, results)
            logger.info("round %d/%d done", i + 1, config.rounds)
    return json.dumps(_report(config, described, results, load_before), indent=2)


def _report(
    config: SparseBenchConfig, described: dict[str, Any], results: dict[str, Any], load_before: Any
) -> dict[str, Any]:
    summary = {
        name: {
            "step_ms": spread(r["step_ms"], 1),
            "saved_bytes_per_forward": spread([float(b) for b in r["saved_bytes"]], 0),
            "step_peak_bytes": spread([float(b) for b in r["peak_bytes"]], 0),
            "rounds": r,
        }
        for name, r in results.items()
    }
    dense, sparse = summary["dense"], summary["sparse"]
    time_ratio = sparse["step_ms"]["median"] / dense["step_ms"]["median"]
    # A ratio is a result only when the two samples do not overlap at all over the rounds; the
    # per-round ratios pair the two runs of one round (same minute, same load).
    separated = (
        sparse["step_ms"]["max"] < dense["step_ms"]["min"]
        or sparse["step_ms"]["min"] > dense["step_ms"]["max"]
    )
    paired = [s / d for s, d in zip(results["sparse"]["step_ms"], results["dense"]["step_ms"], strict=True)]
    return {
        "config": asdict(config),
        "trunk": described,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "implementations": summary,
        "sparse_over_dense": {
            "step_ms": round(time_ratio, 3),
            "step_ms_separated": separated,
            "step_ms_per_round": spread(paired, 3),
            "saved_bytes_per_forward": round(
                sparse["saved_bytes_per_forward"]["median"] / dense["saved_bytes_per_forward"]["median"], 4
            ),
            "step_peak_bytes": round(
                sparse["step_peak_bytes"]["median"] / dense["step_peak_bytes"]["median"], 4
            ),
        },
    }
