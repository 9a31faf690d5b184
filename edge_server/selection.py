"""Parameter selection (TaskEdge) on the edge's share of a session: score, select, train sparsely.

The edge scores its trunk layers from the activations it already receives: during calibration a
forward pre-hook on every target layer accumulates the squared norm of each input feature over all
non-padding tokens. Selection then keeps the top-k entries of every output row (the same k the
device uses, so the budget is spread evenly over the whole model) and wraps those layers in
sparse-delta modules whose only trainable parameters are the selected values. The shared trunk
weights are never written.
"""

from __future__ import annotations

import logging
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
