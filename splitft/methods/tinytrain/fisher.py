"""TinyTrain (Kwon et al., ICML 2024, arXiv 2307.09988): task-adaptive sparse update under budgets.

One forward/backward over the support set gives each output channel c of each target layer a
Fisher potential `D[c] = 1/(2N) * sum_n (sum_t a[n,t,c] * g[n,t,c])^2` (a: the layer's output,
g: the loss gradient with respect to it, as the loss computes it: a batch-mean loss scales g by
1/batch, which scales every potential alike). A layer's score is the SUM of its channel
potentials divided by (normalised backward memory x normalised backward MACs), so a layer wins by
being informative and cheap to train. Layers are taken greedily by score, each at the largest
channel ratio whose cost still fits both budgets; its channels are its top ones by potential.

Cost model (one training step, `T` tokens through a layer with `out x in` weight, `r*out`
channels trained, `b` bytes per element):

* memory: `b * (r*out*in + T*in)`: the weight-gradient rows plus the saved layer input, which
  every trained row needs in full. Optimizer state and activations saved by non-linear ops are
  not modelled.
* MACs: `r*out*in*T` for the weight gradient, plus the input-gradient MACs `out*in*T` of every
  target layer that runs after the earliest trained one (backward must reach it). This is a cost
  of the whole selection, so each greedy step prices the selection with the candidate in it. It
  is conservative: a parallel branch (k_proj beside q_proj) is counted though it needs no input
  gradient.

A layer's normalisers use its cost when trained alone at ratio 1 (propagation included), divided
by the largest such cost over the target layers. Channel counts round down: `max(1, floor(r*out))`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from splitft.errors import InvalidArgument
from splitft.methods.common import call_model, eval_mode, find_target_modules, linear_shape
from splitft.methods.tinytrain.config import TinyTrainConfig

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]  # (model output, batch) -> scalar loss


@dataclass
class FisherPass:
    """What one pass over the support set measures."""

    potentials: dict[str, torch.Tensor]  # [out] per layer
    tokens: dict[str, int]  # tokens per batch through each layer (rounded mean)
    order: list[str]  # layers in the order the forward first ran them


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


def _record_outputs(model: nn.Module, names: list[str], seen: dict[str, list[torch.Tensor]]) -> list[Any]:
    def make_hook(name: str) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if not output.requires_grad:  # a frozen model: a zero leaf makes the graph reach here
                output = output + output.new_zeros((), requires_grad=True)
            seen.setdefault(name, []).append(output)
            return output

        return hook

    return [model.get_submodule(n).register_forward_hook(make_hook(n)) for n in names]


@dataclass
class _BatchStats:
    squares: dict[str, torch.Tensor]  # per layer: sum over samples of (sum_t a*g)^2, [C], float64
    tokens: dict[str, int]  # per layer: tokens through it in this batch
    order: list[str]  # layers in forward order
    samples: int  # N of this batch


def _one_batch(
    model: nn.Module,
    batch: Any,
    loss_fn: LossFn | None,
    names: list[str],
    extra_inputs: list[torch.Tensor] | None,
) -> _BatchStats:
    """One forward, then gradients of the loss with respect to the recorded layer outputs only."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = _record_outputs(model, names, seen)
    if extra_inputs is not None:
        extra_inputs.clear()
    try:
        with torch.enable_grad():
            loss = _loss_of(call_model(model, batch), batch, loss_fn)
    finally:
        for handle in handles:
            handle.remove()
    flat = [(name, a) for name, outs in seen.items() for a in outs]
    extra = list(extra_inputs or [])
    grads = torch.autograd.grad(loss, [a for _, a in flat] + extra, allow_unused=True)
    squares: dict[str, torch.Tensor] = {}
    for (name, a), g in zip(flat, grads[: len(flat)], strict=True):
        part = torch.zeros(a.shape[-1], dtype=torch.float64) if g is None else squared_sample_sums(a, g)
        squares[name] = squares[name] + part if name in squares else part
    tokens = {name: sum(a.numel() // a.shape[-1] for a in outs) for name, outs in seen.items()}
    samples = flat[0][1].shape[0] if flat else 0
    return _BatchStats(squares, tokens, list(seen), samples)


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
    order: list[str] = []
    samples = 0
    with eval_mode(model):
        for batch in batches:
            part = _one_batch(model, batch, loss_fn, module_names, extra_inputs)
            samples += part.samples
            order += [n for n in part.order if n not in order]
            for name, value in part.squares.items():
                squares[name] = squares[name] + value if name in squares else value
                tokens.setdefault(name, []).append(part.tokens[name])
    missing = [n for n in module_names if n not in squares]
    if samples == 0 or missing:
        raise InvalidArgument(f"the support set never reached {missing[:3] or module_names[:3]}")
    potentials = potentials_from_squares({n: squares[n] for n in module_names}, samples)
    return FisherPass(potentials, mean_tokens(tokens), order)


def fisher_potentials(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn | None, module_names: list[str]
) -> dict[str, torch.Tensor]:
    """`D[c] = 1/(2N) sum_n (sum_t a*g)^2` per output channel of each named layer (`[out]`)."""
    return fisher_pass(model, batches, loss_fn, module_names).potentials


@dataclass(frozen=True)
class LayerCost:
    """Backward cost of one Linear/Conv1D for one step (see the module docstring)."""

    out_features: int
    in_features: int
    tokens: int

    def memory_bytes(self, channels: int, bytes_per_element: int) -> int:
        return bytes_per_element * (channels * self.in_features + self.tokens * self.in_features)

    def weight_grad_macs(self, channels: int) -> int:
        return channels * self.in_features * self.tokens

    @property
    def input_grad_macs(self) -> int:
        return self.out_features * self.in_features * self.tokens


def layer_costs(model: nn.Module, order: list[str], tokens: dict[str, int]) -> dict[str, LayerCost]:
    """A `LayerCost` per layer, in forward order."""
    return {n: LayerCost(*linear_shape(model.get_submodule(n)), tokens[n]) for n in order}


def selection_cost(
    costs: dict[str, LayerCost], channels: dict[str, int], bytes_per_element: int
) -> tuple[int, int]:
    """(backward bytes, backward MACs) of training `channels[name]` rows of each named layer.

    `costs` must be in forward order: layers after the earliest trained one pay input gradients.
    """
    if not channels:
        return 0, 0
    order = list(costs)
    first = min(order.index(n) for n in channels)
    memory = sum(costs[n].memory_bytes(c, bytes_per_element) for n, c in channels.items())
    macs = sum(costs[n].weight_grad_macs(c) for n, c in channels.items())
    return memory, macs + sum(costs[n].input_grad_macs for n in order[first + 1 :])


def layer_scores(
    potentials: dict[str, torch.Tensor], costs: dict[str, LayerCost], bytes_per_element: int
) -> dict[str, float]:
    """Sum of potentials / (normalised memory x normalised MACs), each layer trained alone, whole."""
    alone = {n: selection_cost(costs, {n: c.out_features}, bytes_per_element) for n, c in costs.items()}
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
    memory_bytes: int
    macs: int
    memory_budget_bytes: float
    compute_budget_macs: float
    scores: dict[str, float] = field(default_factory=dict)  # every candidate layer's score


def _channel_count(ratio: float, out_features: int) -> int:
    return max(1, math.floor(ratio * out_features + 1e-9))  # 1e-9: 0.5 * 6 must stay 3, not 2


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
            memory, macs = selection_cost(costs, trial, config.bytes_per_element)
            if memory <= config.memory_budget_bytes and macs <= config.compute_budget_macs:
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
    memory, macs = selection_cost(costs, counts, config.bytes_per_element)
    logger.info("TinyTrain picked %d of %d layers: %d bytes, %d MACs", len(masks), len(costs), memory, macs)
    return TinyTrainSelection(
        masks=masks,
        ratios={n: ratios[n] for n in masks},
        channels=channels,
        memory_bytes=memory,
        macs=macs,
        memory_budget_bytes=config.memory_budget_bytes,
        compute_budget_macs=config.compute_budget_macs,
        scores=scores,
    )


def tinytrain_masks(
    model: nn.Module, batches: Iterable[Any], config: TinyTrainConfig, loss_fn: LossFn | None = None
) -> TinyTrainSelection:
    """The whole method: targets, Fisher pass, cost model, greedy selection."""
    names = find_target_modules(model, config.target_modules)
    measured = fisher_pass(model, batches, loss_fn, names)
    tokens = measured.tokens
    if config.tokens_per_step is not None:
        tokens = dict.fromkeys(names, config.tokens_per_step)
    costs = layer_costs(model, measured.order, tokens)
    return select_tinytrain(measured.potentials, costs, config)
