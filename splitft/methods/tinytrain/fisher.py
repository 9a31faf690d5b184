"""TinyTrain (Kwon et al., ICML 2024, arXiv 2307.09988): task-adaptive sparse update under budgets.

One forward/backward over the support set gives each output channel c of each target layer a
Fisher potential `D[c] = 1/(2N) * sum_n (sum_t a[n,t,c] * g[n,t,c])^2` (a: the layer's output,
g: the loss gradient with respect to it, as the loss computes it: a batch-mean loss scales g by
1/batch, which scales every potential alike). A layer's score is the SUM of its channel
potentials divided by (normalised backward memory x normalised backward MACs), so a layer wins by
being informative and cheap to train. Layers are taken greedily by score, each at the largest
channel ratio whose cost still fits both budgets; its channels are its top ones by potential.

The cost model (memory per side, MACs) is `cost`'s docstring. The Fisher pass also measures what
it needs, with every parameter frozen (the graph a step training deltas builds): per target layer
the bytes autograd saves from the layer's input on, the largest of those tensors, the op-level
forward and backward working-set peaks of a step whose earliest trained layer it is (live.py),
and which layers read one input tensor.

A layer's normalisers use its own memory (state + input) and its backward MACs (propagation
included), each when trained alone at ratio 1, divided by the largest such cost over the target
layers. Channel counts round down: `max(1, floor(r*out))`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from splitft.errors import InvalidArgument
from splitft.methods.common import call_model, eval_mode, find_target_modules, linear_shape
from splitft.methods.tinytrain.config import TinyTrainConfig
from splitft.methods.tinytrain.cost import DEVICE, LayerCost, SelectionCost, sided_cost, whole_macs
from splitft.methods.tinytrain.saved import SavedBytes

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]  # (model output, batch) -> scalar loss


@dataclass
class FisherPass:
    """What one pass over the support set measures."""

    potentials: dict[str, torch.Tensor]  # [out] per layer
    tokens: dict[str, int]  # tokens per batch through each layer (rounded mean)
    order: list[str]  # layers in the order the forward first ran them
    # per layer: bytes autograd saved from its input on, and the largest such tensor (rounded means)
    saved_after: dict[str, int] = field(default_factory=dict)
    largest_saved: dict[str, int] = field(default_factory=dict)
    forward_peak: dict[str, int] = field(default_factory=dict)
    backward_peak: dict[str, int] = field(default_factory=dict)
    input_groups: dict[str, int] = field(default_factory=dict)  # one id per input tensor (first batch)
    # per layer: the forward's op-level peaks after each target's input and output events (first batch)
    forward_steps: dict[str, tuple[tuple[str, int, int, int, int], ...]] = field(default_factory=dict)


def _loss_of(outputs: Any, batch: Any, loss_fn: LossFn | None) -> torch.Tensor:
    loss = getattr(outputs, "loss", None) if loss_fn is None else loss_fn(outputs, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InvalidArgument("need a scalar loss: pass labels in the batch or a loss_fn(outputs, batch)")
    return loss


def squared_sample_sums(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`sum_n (sum_t a[n,t,c] * g[n,t,c])^2` as float64 `[C]` on the CPU.

    Every dim between the first (samples) and the last (channels) is a token dim.
    """
    product = a.detach().to(torch.float64) * g.to(torch.float64)
    return product.reshape(a.shape[0], -1, a.shape[-1]).sum(dim=1).pow(2).sum(0).cpu()


def potentials_from_squares(squares: dict[str, torch.Tensor], samples: int) -> dict[str, torch.Tensor]:
    """`D = squares / (2N)` per layer, as float32."""
    return {name: (value / (2 * samples)).to(torch.float32) for name, value in squares.items()}


def mean_tokens(tokens: dict[str, list[int]]) -> dict[str, int]:
    """Tokens per batch through each layer: the rounded mean over the batches, at least 1."""
    return {name: max(1, round(sum(t) / len(t))) for name, t in tokens.items()}


def _record_outputs(
    model: nn.Module,
    names: list[str],
    seen: dict[str, list[torch.Tensor]],
    hold: Callable[[torch.Tensor], None] | None = None,
) -> list[Any]:
    """Forward hooks keeping each named layer's output (`hold` is told: the pass keeps it to its end)."""

    def make_hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if not output.requires_grad:  # a frozen model: a zero leaf makes the graph reach here
                output = output + output.new_zeros((), requires_grad=True)
            seen.setdefault(name, []).append(output)
            if hold is not None:
                hold(output)
            return output

        return hook

    return [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]


@dataclass
class _BatchStats:
    squares: dict[str, torch.Tensor]  # per layer: sum over samples of (sum_t a*g)^2, [C], float64
    tokens: dict[str, int]  # per layer: tokens through it in this batch
    order: list[str]  # layers in forward order
    samples: int  # N of this batch
    saved: SavedBytes  # what autograd saved, located by the layers


def _one_batch(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn | None,
    names: list[str],
    extra_inputs: list[torch.Tensor] | None,
) -> _BatchStats:
    """One forward, then gradients of the loss with respect to the recorded layer outputs only."""
    seen: dict[str, list[torch.Tensor]] = {}
    saved = SavedBytes(model, names)
    handles = _record_outputs(model, names, seen, saved.live.hold)
    if extra_inputs is not None:
        extra_inputs.clear()
    try:
        with torch.enable_grad(), saved.recording():
            loss = _loss_of(call_model(model, batch), batch, loss_fn)
    finally:
        for handle in handles:
            handle.remove()
    flat = [(name, a) for name, outs in seen.items() for a in outs]
    extra = list(extra_inputs or [])
    with saved.backward(flat):
        grads = torch.autograd.grad(loss, [a for _, a in flat] + extra, allow_unused=True)
    squares: dict[str, torch.Tensor] = {}
    for (name, a), g in zip(flat, grads[: len(flat)], strict=True):
        part = torch.zeros(a.shape[-1], dtype=torch.float64) if g is None else squared_sample_sums(a, g)
        squares[name] = squares[name] + part if name in squares else part
    tokens = {name: sum(a.numel() // a.shape[-1] for a in outs) for name, outs in seen.items()}
    samples = flat[0][1].shape[0] if flat else 0
    return _BatchStats(squares, tokens, list(seen), samples, saved)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Every parameter frozen for the pass, then its flag back: a training step trains deltas only,
    so autograd must not save the inputs a weight's gradient would need (the cost model prices the
    trained layers' inputs itself), and no parameter's `.grad` is written."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def fisher_pass(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None,
    module_names: list[str],
    extra_inputs: list[torch.Tensor] | None = None,
) -> FisherPass:
    """Potentials, tokens and forward order of `module_names` from one pass over the support set.

    Eval mode (no dropout), gradients only with respect to the layer outputs: no parameter's
    `.grad` is written. `loss_fn(outputs, batch)`; None uses the HF output's `.loss`.
    `extra_inputs`: a list the model's forward appends tensors to (emptied before each batch); the
    gradient is taken with respect to them too, so every backward step leading to them runs (a
    split model's trunk backward, which measures the edge's layers).
    """
    squares: dict[str, torch.Tensor] = {}
    tokens: dict[str, list[int]] = {}
    saved: dict[str, list[int]] = {}
    largest: dict[str, list[int]] = {}
    peaks: dict[str, list[int]] = {}
    backward_peaks: dict[str, list[int]] = {}
    groups: dict[str, int] = {}
    steps: dict[str, tuple[tuple[str, int, int, int, int], ...]] = {}
    order: list[str] = []
    samples = 0
    with eval_mode(model), _frozen(model):
        for batch in batches:
            part = _one_batch(model, batch, loss_fn, module_names, extra_inputs)
            samples += part.samples
            order += [n for n in part.order if n not in order]
            groups = groups or part.saved.input_groups()
            for name, value in part.squares.items():
                squares[name] = squares[name] + value if name in squares else value
                tokens.setdefault(name, []).append(part.tokens[name])
                after, big = part.saved.after(name)
                saved.setdefault(name, []).append(after)
                largest.setdefault(name, []).append(big)
                forward, backward = part.saved.op_peaks(name)
                peaks.setdefault(name, []).append(max(forward, part.saved.forward_peak(name)))
                if forward >= part.saved.forward_peak(name):  # the op peak is the peak
                    steps.setdefault(name, part.saved.forward_steps(name))
                backward_peaks.setdefault(name, []).append(backward)
    missing = [n for n in module_names if n not in squares]
    if samples == 0 or missing:
        raise InvalidArgument(f"the support set never reached {missing[:3] or module_names[:3]}")
    potentials = potentials_from_squares({n: squares[n] for n in module_names}, samples)
    return FisherPass(
        potentials,
        mean_tokens(tokens),
        order,
        mean_tokens(saved),
        mean_tokens(largest),
        mean_tokens(peaks),
        mean_tokens(backward_peaks),
        groups,
        steps,
    )


def fisher_potentials(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None, module_names: list[str]
) -> dict[str, torch.Tensor]:
    """`D[c] = 1/(2N) sum_n (sum_t a*g)^2` per output channel of each named layer (`[out]`)."""
    return fisher_pass(model, batches, loss_fn, module_names).potentials


def measured_cost(
    measured: FisherPass, name: str, shape: tuple[int, int], tokens_per_step: int | None, side: str = DEVICE
) -> LayerCost:
    """`name`'s cost from the pass; `tokens_per_step` rescales its tokens and saved bytes linearly."""
    tokens = measured.tokens[name]
    scale = (tokens_per_step / tokens) if tokens_per_step and tokens else 1.0
    return LayerCost(
        *shape,
        tokens=tokens_per_step or tokens,
        side=side,
        saved_after=round(measured.saved_after.get(name, 0) * scale),
        largest_saved=round(measured.largest_saved.get(name, 0) * scale),
        forward_peak=round(measured.forward_peak.get(name, 0) * scale),
        backward_peak=round(measured.backward_peak.get(name, 0) * scale),
        input_id=measured.input_groups.get(name),
        forward_steps=tuple(
            (n, a, round(p * scale), b, round(q * scale))
            for n, a, p, b, q in measured.forward_steps.get(name, ())
        ),
    )


def layer_costs(
    model: nn.Module, measured: FisherPass, tokens_per_step: int | None = None
) -> dict[str, LayerCost]:
    """A `LayerCost` per measured layer, in forward order."""
    return {
        n: measured_cost(measured, n, linear_shape(model.get_submodule(n)), tokens_per_step)
        for n in measured.order
    }


def layer_scores(
    potentials: dict[str, torch.Tensor], costs: dict[str, LayerCost], bytes_per_element: int
) -> dict[str, float]:
    """Sum of potentials / (normalised memory x normalised MACs), each layer trained alone, whole
    (its own memory and its MACs over both sides: the same score in one process and across a split)."""
    alone = {
        n: (c.memory_bytes(c.out_features, bytes_per_element), whole_macs(costs, n)) for n, c in costs.items()
    }
    max_memory = max(memory for memory, _ in alone.values())
    max_macs = max(macs for _, macs in alone.values())
    return {
        n: float(potentials[n].sum()) / ((memory / max_memory) * (macs / max_macs))
        for n, (memory, macs) in alone.items()
    }


@dataclass
class TinyTrainSelection:
    """The chosen channels as row masks for `apply_masks`, and the budget they use."""

    masks: dict[str, torch.Tensor]  # bool [out, in], whole rows
    ratios: dict[str, float]  # the ratio picked per selected layer
    channels: dict[str, list[int]]  # selected output channels per layer, best first
    memory_bytes: int  # the device's predicted training-step bytes (cost.py)
    macs: int  # the device's backward MACs
    memory_budget_bytes: float
    compute_budget_macs: float
    scores: dict[str, float] = field(default_factory=dict)  # every candidate layer's score
    edge_memory_bytes: int = 0  # across a split: the trunk's selected state and inputs
    edge_macs: int = 0
    costs: dict[str, LayerCost] = field(default_factory=dict)  # what the choice was priced with


def _channel_count(ratio: float, out_features: int) -> int:
    return max(1, math.floor(ratio * out_features + 1e-9))  # 1e-9: 0.5 * 6 must stay 3, not 2


def fits(cost: SelectionCost, config: TinyTrainConfig) -> bool:
    """Within every budget of `config` (the device's two, the edge's two)."""
    return (
        cost.memory_bytes <= config.memory_budget_bytes
        and cost.macs <= config.compute_budget_macs
        and cost.edge_memory_bytes <= config.edge_memory_budget_bytes
        and cost.edge_macs <= config.edge_compute_budget_macs
    )


def _greedy(
    costs: dict[str, LayerCost], scores: dict[str, float], config: TinyTrainConfig
) -> dict[str, float]:
    position = {n: i for i, n in enumerate(costs)}
    ranked = sorted(scores, key=lambda n: (-scores[n], position[n]))
    chosen: dict[str, int] = {}
    ratios: dict[str, float] = {}
    for name in ranked:
        for ratio in config.channel_ratios:
            trial = {**chosen, name: _channel_count(ratio, costs[name].out_features)}
            if fits(sided_cost(costs, trial, config.bytes_per_element), config):
                chosen, ratios[name] = trial, ratio
                break
    return ratios


def _row_mask(potential: torch.Tensor, count: int, in_features: int) -> tuple[torch.Tensor, list[int]]:
    top = torch.argsort(potential, descending=True, stable=True)[:count]
    mask = torch.zeros(potential.numel(), in_features, dtype=torch.bool)
    mask[top] = True
    return mask, top.tolist()


def select_tinytrain(
    potentials: dict[str, torch.Tensor], costs: dict[str, LayerCost], config: TinyTrainConfig
) -> TinyTrainSelection:
    """Greedy layer/ratio choice under both budgets; `costs` in forward order."""
    scores = layer_scores(potentials, costs, config.bytes_per_element)
    ratios = _greedy(costs, scores, config)
    masks: dict[str, torch.Tensor] = {}
    channels: dict[str, list[int]] = {}
    for name in costs:  # forward order, for a readable report
        if name in ratios:
            count = _channel_count(ratios[name], costs[name].out_features)
            masks[name], channels[name] = _row_mask(potentials[name], count, costs[name].in_features)
    counts = {n: len(c) for n, c in channels.items()}
    cost = sided_cost(costs, counts, config.bytes_per_element)
    logger.info(
        "TinyTrain picked %d of %d layers: device %d bytes, %d MACs; edge %d bytes, %d MACs",
        *(len(masks), len(costs), cost.memory_bytes, cost.macs, cost.edge_memory_bytes, cost.edge_macs),
    )
    return TinyTrainSelection(
        masks=masks,
        ratios={n: ratios[n] for n in masks},
        channels=channels,
        memory_bytes=cost.memory_bytes,
        macs=cost.macs,
        memory_budget_bytes=config.memory_budget_bytes,
        compute_budget_macs=config.compute_budget_macs,
        scores=scores,
        edge_memory_bytes=cost.edge_memory_bytes,
        edge_macs=cost.edge_macs,
        costs=dict(costs),
    )


def tinytrain_masks(
    model: nn.Module, batches: Iterable[Any], config: TinyTrainConfig, loss_fn: LossFn | None = None
) -> TinyTrainSelection:
    """The whole method: targets, Fisher pass, cost model, greedy selection."""
    names = find_target_modules(model, config.target_modules)
    measured = fisher_pass(model, batches, loss_fn, names)
    costs = layer_costs(model, measured, config.tokens_per_step)
    return select_tinytrain(measured.potentials, costs, config)
