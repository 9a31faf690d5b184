"""The trunk run once for the rows of several sessions, each session's LoRA applied to its own rows.

A `BatchedTrunk` is a view of a served model's frozen trunk (the same weight tensors) in which every
linear layer of the trunk blocks is a `SegmentedLinear`: the frozen base matmul runs once over all
rows, then each session's low-rank path (peft's own `lora_A`, `lora_B`, `lora_dropout` and
`scaling` modules, taken from the session's adapter) runs on that session's row slice only. Sessions
in one pass may have different ranks, alphas, dropouts and target modules, or no adapter at all.

Only plain LoRA layers are applied this way; a session with a peft LoRA variant (DoRA, ...) or a
selection method runs on its own tree, unbatched (`batchable_layers` says which).
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.torchao import TorchaoLoraLinear
from torch import nn
from transformers.pytorch_utils import Conv1D

from edge_server.stacked_lora import stacked_delta
from splitft.model.loading import LoadedSpan
from splitft.model.routing import RoutedRandomness, route_randomness, session_dropout
from splitft.model.spans import Skipped

_BASE_KINDS = (nn.Linear, Conv1D)  # bitsandbytes' Linear4bit is an nn.Linear too
# peft's vanilla LoRA layer, and its subclass for torchao-quantized bases (`--quantize int8`), which
# only adds merging: `_with_lora` reproduces the forward of both.
PLAIN_LORA: tuple[type, ...] = (LoraLinear, TorchaoLoraLinear)


@dataclass
class Segment:
    """Rows [start, stop) of a pass belong to one session with these LoRA layers (by module name)."""

    start: int
    stop: int
    lora: dict[str, LoraLinear]
    generator: torch.Generator


@dataclass
class PassPlan:
    """What the `SegmentedLinear`s of a tree apply during the pass that is running on it."""

    segments: list[Segment] = field(default_factory=list)
    targeted: frozenset[str] = frozenset()  # module names any segment adapts
    randomness: RoutedRandomness | None = None  # set when a session's dropout is active
    stacked_calls: int = 0  # layer calls whose LoRA paths ran stacked (edge_server.stacked_lora)


class SegmentedLinear(nn.Module):
    """A frozen linear layer whose output gets, on each session's rows, that session's LoRA delta."""

    def __init__(self, base: nn.Module, name: str, plan: PassPlan) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self._plan = [plan]  # in a list: not a submodule, so module trees and state dicts ignore it

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (Hugging Face code sometimes reads it, e.g. for its dtype)."""
        return cast(torch.Tensor, self.base.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base bias."""
        return cast("torch.Tensor | None", self.base.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base matmul for all rows, then each adapted segment's low-rank path on its slice."""
        result = self.base(x)
        plan = self._plan[0]
        if self.name not in plan.targeted:
            return result
        delta = stacked_delta(self.name, x, plan)  # every session alike: two bmm, not S paths
        if delta is not None:
            plan.stacked_calls += 1
            return result + delta
        pieces = []
        for segment in plan.segments:
            rows = result[segment.start : segment.stop]
            layer = segment.lora.get(self.name)
            if layer is not None:
                rows = _with_lora(layer, rows, x[segment.start : segment.stop], segment, plan)
            pieces.append(rows)
        return torch.cat(pieces)


def _with_lora(
    layer: LoraLinear, result: torch.Tensor, x: torch.Tensor, segment: Segment, plan: PassPlan
) -> torch.Tensor:
    """peft's vanilla LoRA forward (`result + lora_B(lora_A(dropout(x))) * scaling` per active
    adapter), on one session's rows, its dropout drawn from that session's generator (peft's
    `lora_A`/`lora_B` are bias-free `nn.Linear`s; `_frozen_linear` applies them)."""
    dtype = result.dtype
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        xa = x.to(cast(torch.Tensor, lora_a.weight).dtype)
        dropout = layer.lora_dropout[name]
        dropped = dropout(xa) if plan.randomness is None else session_dropout(dropout, xa, segment.generator)
        result = result + _frozen_linear(lora_b, _frozen_linear(lora_a, dropped)) * layer.scaling[name]
    return result.to(dtype)


def _frozen_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` computed on clones of its weights. The pass's graph outlives this session's part
    in it (other sessions back-propagate through it later), and this session's optimizer updates
    its weights in place meanwhile: autograd must hold the values the forward used, not the
    parameters (the clones still pass gradients back to them)."""
    weight = cast(torch.Tensor, layer.weight)
    bias = cast("torch.Tensor | None", layer.bias)
    return F.linear(x, weight.clone(), None if bias is None else bias.clone())


def share_modules(root: nn.Module) -> nn.Module:
    """A copy of `root`'s module tree whose parameters and buffers are the very same tensors."""
    memo: dict[int, object] = {id(t): t for t in root.parameters()}
    memo.update({id(t): t for t in root.buffers()})
    return copy.deepcopy(root, memo)


def batchable_layers(root: nn.Module) -> dict[str, LoraLinear] | None:
    """A session tree's LoRA layers by module name, or None when one of them is not plain LoRA
    (a variant, merged weights, adapters disabled, another layer type): that session runs alone."""
    found: dict[str, LoraLinear] = {}
    for name, module in root.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        if type(module) not in PLAIN_LORA or module.merged or module.disable_adapters:
            return None
        if any(a in module.lora_variant for a in module.active_adapters):
            return None
        found[name] = module
    return found


class BatchedTrunk:
    """One reusable tree of a model's trunk blocks [start, stop) with segmented linear layers."""

    def __init__(self, span: LoadedSpan, start: int, stop: int) -> None:
        self.span, self.start, self.stop = span, start, stop
        self.plan = PassPlan()
        self.root = share_modules(span.root)
        blocks = span.family.blocks(self.root)
        prefix = span.family.blocks_path
        for i in range(len(blocks)):
            if not start <= i < stop:
                blocks[i] = Skipped(f"block {i}")
                continue
            for name, module in list(blocks[i].named_modules()):
                if isinstance(module, _BASE_KINDS):
                    _replace(blocks[i], name, SegmentedLinear(module, f"{prefix}.{i}.{name}", self.plan))
        route_randomness(self.root)  # a shared pass with dropout draws inside the routed modules only

    def run(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        *,
        training: bool,
    ) -> torch.Tensor:
        """Run the blocks over every row with `self.plan` set by the caller."""
        if self.root.training != training:  # only this tree's passes set its mode: skip the walk
            self.root.train(training)
        return self.span.family.run_trunk(self.root, hidden, mask, positions, self.start, self.stop)


def _replace(parent: nn.Module, dotted: str, new: nn.Module) -> None:
    *path, last = dotted.split(".")
    owner = parent.get_submodule(".".join(path)) if path else parent
    setattr(owner, last, new)


class BatchedTrunks:
    """A pool of `BatchedTrunk`s per (model, start, stop): a pass takes one for its duration, so
    concurrent passes never share module state (train/eval mode, the plan)."""

    def __init__(self) -> None:
        self._free: dict[tuple[int, int, int], list[BatchedTrunk]] = {}
        self._lock = threading.Lock()

    def acquire(self, span: LoadedSpan, start: int, stop: int) -> BatchedTrunk:
        """A free tree for these blocks (built on first need)."""
        key = (id(span), start, stop)
        with self._lock:
            free = self._free.setdefault(key, [])
            if free:
                return free.pop()
        return BatchedTrunk(span, start, stop)

    def release(self, trunk: BatchedTrunk) -> None:
        """Give a tree back after its pass (its plan is cleared: no session state stays on it)."""
        plan = trunk.plan  # reset in place: every SegmentedLinear of the tree holds this object
        plan.segments, plan.targeted, plan.randomness, plan.stacked_calls = [], frozenset(), None, 0
        with self._lock:
            self._free.setdefault((id(trunk.span), trunk.start, trunk.stop), []).append(trunk)
