"""The LoRA paths of a shared pass as two batched matmuls, when every session's layer fits one stack.

In a pass of S sessions, the per-session path (`batched_trunk._with_lora`) costs a handful of small
ops per session per adapted layer, and at small per-device batches their dispatch overhead rivals
the base matmul. When every session adapts this layer with a plain LoRA of the same rank and sends
the same number of rows, the S low-rank products are one `bmm` each way instead:

    delta[s] = (dropout_s(x[s]) @ A[s]^T * scaling[s]) @ B[s]^T

as one autograd function (`_StackedLora`) whose backward lays out its batched products as the CPU
runs them fast. Stacking copies the adapter weights, so the graph holds the values the forward used
even if a session's optimizer updates its parameters in place before a neighbour's backward (the
same reason `batched_trunk._frozen_linear` clones). Dropout is still drawn per session from its own
generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from splitft.model.routing import session_dropout

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
    scaling = [layer.scaling[a] for _, layer, a in adapting if a is not None]
    scales = torch.tensor(scaling, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    weights = [_weight(a) for a, _ in pairs] + [_weight(b) for _, b in pairs]
    delta = _StackedLora.apply(inputs, scales, *weights)
    out_features = delta.shape[-1]
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


class _StackedLora(torch.autograd.Function):
    """`delta[s] = (x[s] @ A[s]^T * scaling[s]) @ B[s]^T` for S sessions, with the batched
    products laid out as the CPU's batched matmul runs them fast.

    Written out rather than left to autograd over `torch.stack` and `bmm`: autograd's backward of
    `bmm(h, B^T)` multiplies by B[s] as stored ([out, r], row-major) and forms the B gradient as
    [out, r], the two layouts in which `bmm` is slowest for a rank-r LoRA (measured 3-5x slower
    than the transposed forms at 8 sessions of 64 tokens, rank 4). Here B is stacked once
    transposed ([S, r, out]) and its gradient is computed transposed; the scaling multiplies the
    rank-r product instead of the full-width delta. Stacking copies the weights, so the saved
    values are those the forward used even if a session steps its optimizer before a neighbour's
    backward (the same reason `batched_trunk._frozen_linear` clones).
    """

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, scales: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """inputs [S, T, in], scales [S, 1, 1], then the S `lora_A` weights [r, in] and the S
        `lora_B` weights [out, r]; returns the deltas [S, T, out]."""
        count = len(weights) // 2
        a_stack = torch.stack(weights[:count])  # [S, r, in]
        bt_stack = torch.stack([b.t() for b in weights[count:]])  # [S, r, out]
        low = torch.bmm(inputs, a_stack.transpose(1, 2)) * scales  # [S, T, r]
        ctx.save_for_backward(inputs, scales, a_stack, bt_stack, low)
        return torch.bmm(low, bt_stack)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        """Gradients of the inputs and of each session's A and B (the scales are constants)."""
        inputs, scales, a_stack, bt_stack, low = ctx.saved_tensors
        grad = grad.contiguous()
        grad_bt = torch.bmm(low.transpose(1, 2), grad)  # [S, r, out]
        grad_low = torch.bmm(grad, bt_stack.transpose(1, 2)) * scales  # [S, T, r]
        grad_a = torch.bmm(grad_low.transpose(1, 2), inputs)  # [S, r, in]
        grad_inputs = torch.bmm(grad_low, a_stack) if ctx.needs_input_grad[0] else None
        grad_b = grad_bt.transpose(1, 2).contiguous()  # [S, out, r], as the parameters are stored
        return (grad_inputs, None, *grad_a.unbind(0), *grad_b.unbind(0))


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
            rows = session_dropout(dropout, rows, segment.generator)
        elif _active(dropout):
            rows = dropout(rows)
        pieces.append(rows)
    return torch.cat(pieces)


def _active(dropout: nn.Module) -> bool:
    return isinstance(dropout, nn.Dropout) and dropout.p > 0 and dropout.training
