"""CPU time of one training forward (and forward + backward) of `bench edge`'s BERT trunk with each
session's dropout drawn three ways: `SessionRandomness` over the whole forward (main before issue 14's
routing), `RoutedRandomness` (only inside the modules that draw), and no routing (the global RNG and
the fused attention kernel: the floor, not a correct option for an edge).

Run: `.venv/bin/python docs/scripts/dropout_routing_cost.py --rounds 8 --reps 25` (about 6 min on 2
shared cores). One thread, torch threads 1; this thread's CPU time (`time.thread_time`), so other
processes disturb it less than wall time; the three alternate within a round (reversed every other
round), and `whole_over_routed` pairs the two of one round. Prints one line per cell, then JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from peft import get_peft_model
from torch import nn

from splitft.bench.edge_models import BENCH_MODELS, DEVICE_LAYERS, HEAD_LAYERS
from splitft.model.families import Family, family_for
from splitft.model.randomness import RowStreams, SessionRandomness, seeded
from splitft.model.routing import RoutedRandomness
from splitft.model.spans import Skipped
from splitft.testing.tiny import lora_config_for

Scope = Callable[[], AbstractContextManager[object]]


def _trunk() -> tuple[nn.Module, Family, int, int]:
    """The bench BERT with its device and head blocks skipped and a session's LoRA, in training."""
    model = BENCH_MODELS["bert"].build()
    family = family_for(model.config)
    blocks = family.blocks(model)
    start, stop = DEVICE_LAYERS, len(blocks) - HEAD_LAYERS
    for i in [*range(start), *range(stop, len(blocks))]:
        blocks[i] = Skipped(f"block {i}")
    root = get_peft_model(model, lora_config_for("bert")).get_base_model()  # type: ignore[arg-type]
    root.train()
    return root, family, start, stop


def _timed(run: Callable[[], torch.Tensor], scope: Scope, reps: int, backward: bool) -> float:
    """Milliseconds of this thread's CPU time per call."""
    begin = time.thread_time()
    for _ in range(reps):
        with scope():
            out = run()
        if backward:
            out.backward(torch.ones_like(out))
    return (time.thread_time() - begin) / reps * 1000


def _summary(values: list[float]) -> dict[str, float]:
    median = statistics.median(values)
    return {"median": round(median, 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--reps", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root, family, start, stop = _trunk()
    rng = seeded(1)
    scopes: dict[str, Scope] = {
        "whole_forward_mode": lambda: SessionRandomness(RowStreams.single(rng)),
        "routed": lambda: RoutedRandomness(RowStreams.single(rng), root),
        "no_routing_global_rng": nullcontext,
    }
    report: dict[str, dict[str, dict[str, float]]] = {}
    for batch in (1, 4):
        for backward in (False, True):
            hidden = torch.randn(batch, 64, 256, requires_grad=backward)
            mask = torch.ones(batch, 64, dtype=torch.long)
            run = functools.partial(family.run_trunk, root, hidden, mask, None, start, stop)
            times: dict[str, list[float]] = {name: [] for name in scopes}
            for scope in scopes.values():
                _timed(run, scope, 2, backward)  # warm up
            for r in range(args.rounds):
                for name in list(scopes) if r % 2 == 0 else list(scopes)[::-1]:
                    times[name].append(_timed(run, scopes[name], args.reps, backward))
            paired = [w / r for w, r in zip(times["whole_forward_mode"], times["routed"], strict=True)]
            cell = f"{batch}x64 {'forward+backward' if backward else 'forward'}"
            report[cell] = {name: _summary(t) for name, t in times.items()}
            report[cell]["whole_over_routed"] = _summary(paired)
            sys.stdout.write(f"{cell}: {json.dumps(report[cell])}\n")
            sys.stdout.flush()
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
