"""The trunk half of a selection method: one session's `TrunkScorer` on the edge.

The edge's session drives every method through this one interface. It tells the scorer what runs
through the trunk (`on_forward`, `on_backward`), and hands it the four selection calls of the
data plane, one RPC each: `start` (StartCalibration), `select_parameters` (SelectParameters),
`measurements` (FisherPotentials) and `select_channels` (SelectChannels). A method implements the
calls it uses; the others answer FAILED_PRECONDITION. Selecting wraps the chosen trunk layers as
sparse deltas (`apply_masks`), so the session's trainable parameters are exactly the selection.
The shared trunk weights are never written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitft.errors import FailedPrecondition, ResourceExhausted
from splitft.methods.common import find_target_modules, linear_shape
from splitft.methods.sparse import apply_masks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasuredLayer:
    """One trunk layer as the edge measured it (a `TrunkLayer` message)."""

    name: str
    out_features: int
    in_features: int
    tokens: int


class TrunkScorer:
    """Calibration and selection state of one session on the trunk's target layers."""

    method = "this method"  # the method's name, for error messages

    def __init__(self, root: nn.Module, target_modules: list[str] | None) -> None:
        self.root = root
        self.names = find_target_modules(root, target_modules)
        self.selected = False
        # The most entries a selection may train (the edge's per-session adapter bound); None: no bound.
        self.max_entries: int | None = None
        # Called with the masks before a selection allocates anything (the edge reserves its memory
        # there, and may refuse it by raising); None: nothing to ask.
        self.before_apply: Callable[[dict[str, torch.Tensor]], None] | None = None
        self._calibrating = False
        self._handles: list[Any] = []

    @property
    def rows(self) -> int:
        """Output rows of every target layer."""
        return sum(linear_shape(self.root.get_submodule(n))[0] for n in self.names)

    @property
    def calibrating(self) -> bool:
        """Between `start` and the selection."""
        return self._calibrating

    @property
    def measuring_gradients(self) -> bool:
        """Whether backwards must reach the trunk's layers now (the session keeps their graphs)."""
        return False

    def start(self) -> int:
        """StartCalibration: forget what was measured, start measuring; returns the target rows."""
        if self.selected:
            raise FailedPrecondition("this session has already selected its parameters")
        self.stop_hooks()
        self.reset()
        self._handles = self.hooks()
        self._calibrating = True
        return self.rows

    def reset(self) -> None:
        """Drop what was measured (at every `start`)."""

    def hooks(self) -> list[Any]:
        """Register the measuring hooks on the trunk's modules; returns their handles."""
        return []

    def stop_hooks(self) -> None:
        """Remove the measuring hooks (measurements stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_forward(self, token_mask: torch.Tensor | None) -> None:
        """A trunk forward is about to run with this attention mask ([batch, tokens] or None)."""

    def on_backward(self, samples: int) -> None:
        """A backward of `samples` samples went through the trunk."""

    def select_parameters(self, k_per_row: int) -> int:
        """SelectParameters: keep `k_per_row` entries per row; returns entries selected."""
        raise FailedPrecondition(f"SelectParameters is not part of {self.method}'s selection")

    def measurements(self) -> tuple[list[MeasuredLayer], int, dict[str, torch.Tensor]]:
        """FisherPotentials: (layers in forward order, samples, a tensor per layer) measured so far."""
        raise FailedPrecondition(f"FisherPotentials is not part of {self.method}'s selection")

    def select_channels(self, channels: dict[str, torch.Tensor]) -> int:
        """SelectChannels: train these output rows of these layers; returns entries made trainable."""
        raise FailedPrecondition(f"SelectChannels is not part of {self.method}'s selection")

    def apply(self, masks: dict[str, torch.Tensor]) -> int:
        """End calibration and train exactly `masks` ([out, in] per layer); returns entries selected.

        A selection over `max_entries` is refused (ResourceExhausted) before anything is allocated,
        and calibration stays as it was."""
        chosen = sum(int(mask.sum()) for mask in masks.values())
        if self.max_entries is not None and chosen > self.max_entries:
            raise ResourceExhausted(
                f"the selection would train {chosen} trunk entries; this edge allows at most "
                f"{self.max_entries} per session (--max-adapter-parameters)"
            )
        if self.before_apply is not None:
            self.before_apply(masks)
        self.stop_hooks()
        if masks:
            apply_masks(self.root, masks, freeze_model=True)
        else:
            self.root.requires_grad_(False)
        self.selected = True
        self._calibrating = False
        logger.info("%s: training %d trunk entries in %d layers", self.method, chosen, len(masks))
        return chosen
