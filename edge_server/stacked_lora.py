"""The LoRA paths of a shared pass as two batched matmuls, when every session's layer fits one stack.

In a pass of S sessions, the per-session path (`batched_trunk._with_lora`) costs a handful of small
ops per session per adapted layer, and at small per-device batches their dispatch overhead rivals
the base matmul. When every session adapts this layer with a plain LoRA of the same rank and sends
the same number of rows, the S low-rank products are one `bmm` each way instead:

    delta[s] = (dropout_s(x[s]) @ A[s]^T) @ B[s]^T * scaling[s]

`torch.stack` copies the adapter weights, so the graph holds the values the forward used even if a
session's optimizer updates its parameters in place before a neighbour's backward (the same reason
`batched_trunk._frozen_linear` clones). Dropout is still drawn per session from its own generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

if TYPE_CHECKING:
    from edge_server.batched_trunk import PassPlan, Segment


def stacked_delta(name: str, x: torch.Tensor, plan: PassPlan) -> torch.Tensor | None:
    """Every session's LoRA delta for layer `name` over all rows of `x` (zero on the rows of sessions
    that do not adapt it), or None when the adapting sessions' layers do not stack (other ranks,
    row counts or adapters)."""
    adapting = [(s, layer, _single_adapter(layer)) for s in plan.segments if (layer := s.lora.get(name))]
    if not adapting or any(a is None for _, _, a in adapting):
        return None
    pairs = [(layer.lora_A[a], layer.lora_B[a]) for _, layer, a in adapting if a is not None]
    shapes = {(_weight(a).shape, _weight(b).shape, _weight(a).dtype) for a, b in pairs}
    rows = {s.stop - s.start for s, _, _ in adapting}
    if len(shapes) != 1 or len(rows) != 1 or _weight(pairs[0][0]).dtype != x.dtype:
        return None
    segments = [s for s, _, _ in adapting]
    everyone = len(segments) == len(plan.segments)
    inputs = _dropped(x if everyone else None, x, adapting, plan)
    inputs = inputs.reshape(len(segments), -1, x.shape[-1])
    a_stack = torch.stack([_weight(a) for a, _ in pairs])  # [S, r, in]
    b_stack = torch.stack([_weight(b) for _, b in pairs])  # [S, out, r]
    scaling = [layer.scaling[a] for _, layer, a in adapting if a is not None]
    scales = torch.tensor(scaling, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    delta = torch.bmm(torch.bmm(inputs, a_stack.transpose(1, 2)), b_stack.transpose(1, 2)) * scales
    out_features = b_stack.shape[1]
    if everyone:
        return delta.reshape(*x.shape[:-1], out_features)
    per_row = delta.reshape(len(segments), -1, *x.shape[1:-1], out_features)
    found = {id(segment): i for i, segment in enumerate(segments)}
    pieces = [
        per_row[found[id(s)]]
        if id(s) in found
        else x.new_zeros(s.stop - s.start, *x.shape[1:-1], out_features)
        for s in plan.segments
    ]
    return torch.cat(pieces)


def _single_adapter(layer: LoraLinear | None) -> str | None:
    """The one active adapter of a plain, bias-free LoRA layer, or None."""
    if layer is None or len(layer.active_adapters) != 1:
        return None
    adapter = layer.active_adapters[0]
    if adapter not in layer.lora_A:
        return None
    if layer.lora_A[adapter].bias is not None or layer.lora_B[adapter].bias is not None:
        return None
    return adapter


def _weight(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


def _dropped(
    whole: torch.Tensor | None,
    x: torch.Tensor,
    adapting: list[tuple[Segment, LoraLinear, str | None]],
    plan: PassPlan,
) -> torch.Tensor:
    """The adapting sessions' rows of `x`, each with its LoRA dropout (from its own generator);
    `whole` is `x` itself when every session adapts the layer and none drops out (no copy)."""
    dropouts = [layer.lora_dropout[a] for _, layer, a in adapting if a is not None]
    if whole is not None and not any(_active(d) for d in dropouts):
        return whole
    pieces = []
    for (segment, _, _), dropout in zip(adapting, dropouts, strict=True):
        rows = x[segment.start : segment.stop]
        if _active(dropout) and plan.randomness is not None:
            with plan.randomness.only(segment.generator):
                rows = dropout(rows)
        elif _active(dropout):
            rows = dropout(rows)
        pieces.append(rows)
    return torch.cat(pieces)


def _active(dropout: nn.Module) -> bool:
    return isinstance(dropout, nn.Dropout) and dropout.p > 0 and dropout.training
