"""TinyTrain's trunk half: Fisher potentials of the trunk's layers, from the device's backward.

During calibration a forward hook on every target layer hooks the layer's output tensor, so the
backward the device drives (its loss, its labels) hands the edge each output's gradient, and the
edge accumulates the Fisher potential of every output channel. The device fetches the potentials
(FisherPotentials), makes the one global greedy choice under its budgets, and sends back the trunk
channels to train (SelectChannels), which become whole-row sparse deltas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods.common import linear_shape
from splitft.methods.scorer import MeasuredLayer, TrunkScorer
from splitft.methods.tinytrain.config import TinyTrainTrunk
from splitft.methods.tinytrain.fisher import mean_tokens, potentials_from_squares, squared_sample_sums


class TinyTrainScorer(TrunkScorer):
    """TinyTrain calibration state of one session: Fisher potentials of the trunk's target layers."""

    method = "tinytrain"

    def __init__(self, root: nn.Module, config: TinyTrainTrunk) -> None:
        super().__init__(root, config.target_modules)
        self.squares: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, list[int]] = {}
        self.order: list[str] = []
        self.samples = 0

    @property
    def measuring_gradients(self) -> bool:
        return self.calibrating

    def reset(self) -> None:
        self.squares, self.tokens, self.order, self.samples = {}, {}, [], 0

    def hooks(self) -> list[Any]:
        return [self.root.get_submodule(n).register_forward_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None]:
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

    def on_backward(self, samples: int) -> None:
        if self.calibrating:
            self.samples += samples

    def measurements(self) -> tuple[list[MeasuredLayer], int, dict[str, torch.Tensor]]:
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

    def select_channels(self, channels: dict[str, torch.Tensor]) -> int:
        """Train the given output rows of the given layers; returns entries made trainable."""
        if not self.calibrating:
            raise FailedPrecondition("SelectChannels before StartCalibration")
        return self.apply({name: self._row_mask(name, rows) for name, rows in channels.items()})

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
