"""Parameter selection on the edge's share of a session: score, select, train sparsely.

TaskEdge (`TrunkSelection`): the edge scores its trunk layers from the activations it already
receives: during calibration a forward pre-hook on every target layer accumulates the squared norm
of each input feature over all non-padding tokens. Selection then keeps the top-k entries of every
output row (the same k the device uses, so the budget is spread evenly over the whole model) and
wraps those layers in sparse-delta modules whose only trainable parameters are the selected
values. The shared trunk weights are never written.

TinyTrain (`TrunkFisher`): during calibration a forward hook on every target layer hooks the
layer's output tensor, so the backward the device drives (its loss, its labels) hands the edge each
output's gradient, and the edge accumulates the Fisher potential of every output channel. The
device fetches the potentials, makes the one global greedy choice under its budgets, and sends back
the trunk channels to train, which become whole-row sparse deltas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods.common import find_target_modules, linear_shape
from splitft.methods.sparse import apply_masks
from splitft.methods.taskedge import (
    TaskEdgeConfig,
    _square_sums,
    masks_from_scores,
    taskedge_scores,
)
from splitft.methods.tinytrain import mean_tokens, potentials_from_squares, squared_sample_sums
from splitft.methods.wire import TinyTrainTrunk

logger = logging.getLogger(__name__)


class TrunkSelection:
    """Calibration state of one session: target layers, hooks and accumulated input norms."""

    def __init__(self, root: nn.Module, config: TaskEdgeConfig) -> None:
        self.root = root
        self.config = config
        self.names = find_target_modules(root, config.target_modules)
        self.sums: dict[str, torch.Tensor] = {}
        self.token_mask: torch.Tensor | None = None
        self._handles: list[Any] = []
        self.selected = False

    @property
    def rows(self) -> int:
        return sum(linear_shape(self.root.get_submodule(n))[0] for n in self.names)

    def start(self) -> None:
        if self.selected:
            raise FailedPrecondition("this session has already selected its parameters")
        self.stop_hooks()
        self.sums = {}
        self._handles = [
            self.root.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in self.names
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            part = _square_sums(args[0], self.token_mask)
            self.sums[name] = part if name not in self.sums else self.sums[name] + part

        return hook

    def stop_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def calibrating(self) -> bool:
        return bool(self._handles)

    def select(self, k_per_row: int) -> int:
        """Keep k entries per row (or N:M), wrap the layers as sparse deltas; returns entries selected."""
        if not self.calibrating:
            raise FailedPrecondition("SelectParameters before StartCalibration")
        missing = [n for n in self.names if n not in self.sums]
        if missing:
            raise FailedPrecondition(
                f"calibration forwards never reached {missing[:3]}: send calibration batches"
            )
        if self.config.n_m is None and k_per_row < 1:
            raise InvalidArgument("k_per_row must be >= 1")
        self.stop_hooks()
        norms = {n: self.sums[n].sqrt().to(torch.float32) for n in self.names}
        scores = taskedge_scores(self.root, norms)
        masks = masks_from_scores(scores, k_per_row, self.config.n_m)
        apply_masks(self.root, masks, freeze_model=True)
        self.selected = True
        chosen = sum(int(mask.sum()) for mask in masks.values())
        logger.info("selected %d trunk entries in %d layers", chosen, len(masks))
        return chosen


@dataclass(frozen=True)
class MeasuredLayer:
    name: str
    out_features: int
    in_features: int
    tokens: int


class TrunkFisher:
    """TinyTrain calibration state of one session: Fisher potentials of the trunk's target layers."""

    def __init__(self, root: nn.Module, config: TinyTrainTrunk) -> None:
        self.root = root
        self.names = find_target_modules(root, config.target_modules)
        self.squares: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, list[int]] = {}
        self.order: list[str] = []
        self.samples = 0
        self._handles: list[Any] = []
        self.selected = False

    @property
    def rows(self) -> int:
        return sum(linear_shape(self.root.get_submodule(n))[0] for n in self.names)

    def start(self) -> None:
        if self.selected:
            raise FailedPrecondition("this session has already selected its parameters")
        self.stop_hooks()
        self.squares, self.tokens, self.order, self.samples = {}, {}, [], 0
        self._handles = [self.root.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]

    @property
    def calibrating(self) -> bool:
        return bool(self._handles)

    def stop_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not torch.is_grad_enabled():  # a no-grad forward (evaluation) measures nothing
                return None
            if name not in self.order:
                self.order.append(name)
            if not output.requires_grad:  # frozen trunk, frozen input: a zero leaf brings the gradient here
                output = output + output.new_zeros((), requires_grad=True)
            value = output.detach()
            output.register_hook(lambda grad: self._accumulate(name, value, grad))
            return output

        return hook

    def _accumulate(self, name: str, value: torch.Tensor, grad: torch.Tensor) -> None:
        part = squared_sample_sums(value, grad)
        self.squares[name] = self.squares[name] + part if name in self.squares else part
        self.tokens.setdefault(name, []).append(value.numel() // value.shape[-1])

    def count_backward(self, samples: int) -> None:
        """A calibration backward of `samples` samples went through the trunk."""
        if self.calibrating:
            self.samples += samples

    def potentials(self) -> tuple[list[MeasuredLayer], int, dict[str, torch.Tensor]]:
        """(layers in forward order, N, potentials) measured so far."""
        if not self.calibrating:
            raise FailedPrecondition("FisherPotentials before StartCalibration (or after SelectChannels)")
        missing = [n for n in self.names if n not in self.squares]
        if self.samples == 0 or missing:
            raise FailedPrecondition(
                f"no calibration backward reached {(missing or self.names)[:3]}: run the labelled "
                "support set forward and backward first"
            )
        tokens = mean_tokens(self.tokens)
        layers = []
        for name in self.order:
            out_features, in_features = linear_shape(self.root.get_submodule(name))
            layers.append(MeasuredLayer(name, out_features, in_features, tokens[name]))
        return layers, self.samples, potentials_from_squares(self.squares, self.samples)

    def select(self, channels: dict[str, torch.Tensor]) -> int:
        """Train the given output rows of the given layers; returns entries made trainable."""
        if not self.calibrating:
            raise FailedPrecondition("SelectChannels before StartCalibration")
        masks = {name: self._row_mask(name, rows) for name, rows in channels.items()}
        self.stop_hooks()
        if masks:
            apply_masks(self.root, masks, freeze_model=True)
        else:
            self.root.requires_grad_(False)
        self.selected = True
        chosen = sum(int(mask.sum()) for mask in masks.values())
        logger.info("TinyTrain: training %d trunk entries in %d layers", chosen, len(masks))
        return chosen

    def _row_mask(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        if name not in self.names:
            raise InvalidArgument(f"{name!r} is not one of the trunk's target layers")
        out_features, in_features = linear_shape(self.root.get_submodule(name))
        if rows.dtype not in (torch.int64, torch.int32) or rows.dim() != 1 or rows.numel() == 0:
            raise InvalidArgument(f"channels of {name!r} must be a non-empty 1-D integer tensor")
        if int(rows.min()) < 0 or int(rows.max()) >= out_features:
            raise InvalidArgument(f"channels of {name!r} must lie in [0, {out_features})")
        if rows.unique().numel() != rows.numel():
            raise InvalidArgument(f"channels of {name!r} repeat")
        mask = torch.zeros(out_features, in_features, dtype=torch.bool)
        mask[rows.long()] = True
        return mask
