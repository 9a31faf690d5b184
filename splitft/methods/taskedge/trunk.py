"""TaskEdge's trunk half: the edge scores its trunk layers from the activations it already receives.

During calibration a forward pre-hook on every target layer accumulates the squared norm of each
input feature over all non-padding tokens. SelectParameters then keeps the top-k entries of every
output row (the same k the device uses, so the budget is spread evenly over the whole model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods.scorer import TrunkScorer
from splitft.methods.taskedge.config import TaskEdgeConfig
from splitft.methods.taskedge.scoring import masks_from_scores, square_sums, taskedge_scores


class TaskEdgeScorer(TrunkScorer):
    """Calibration state of one session: target layers, hooks and accumulated input norms."""

    method = "taskedge"

    def __init__(self, root: nn.Module, config: TaskEdgeConfig) -> None:
        super().__init__(root, config.target_modules)
        self.config = config
        self.sums: dict[str, torch.Tensor] = {}
        self.token_mask: torch.Tensor | None = None

    def reset(self) -> None:
        self.sums = {}

    def hooks(self) -> list[Any]:
        return [self.root.get_submodule(n).register_forward_pre_hook(self._hook(n)) for n in self.names]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            part = square_sums(args[0], self.token_mask)
            self.sums[name] = part if name not in self.sums else self.sums[name] + part

        return hook

    def on_forward(self, token_mask: torch.Tensor | None) -> None:
        self.token_mask = token_mask  # padding tokens stay out of the calibration norms

    def select_parameters(self, k_per_row: int) -> int:
        """Keep k entries per row (at most N of every M with N:M), wrap the layers as sparse deltas;
        returns entries selected."""
        if not self.calibrating:
            raise FailedPrecondition("SelectParameters before StartCalibration")
        missing = [n for n in self.names if n not in self.sums]
        if missing:
            raise FailedPrecondition(
                f"calibration forwards never reached {missing[:3]}: send calibration batches"
            )
        if k_per_row < 1:
            raise InvalidArgument(f"k_per_row must be >= 1, got {k_per_row}")
        norms = {n: self.sums[n].sqrt().to(torch.float32) for n in self.names}
        scores = taskedge_scores(self.root, norms)
        return self.apply(masks_from_scores(scores, k_per_row, self.config.n_m))
