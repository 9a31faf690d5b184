"""What a method's device half gets to work with: the split model and a `TrunkPort` to the edge.

The device half of a method lives in the method's folder and imports nothing from `device_client`:
it is written against these types, which `device_client` implements (`device_client.selection`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


class TrunkLayerInfo(Protocol):
    """One trunk layer the edge measured (a `TrunkLayer` message)."""

    name: str
    out_features: int
    in_features: int
    tokens: int


class TrunkPort(Protocol):
    """The edge's selection calls, as the device half sees them (one RPC each).

    Which of them a method uses is its own business; the edge's `TrunkScorer` answers the ones its
    method implements and refuses the others with FAILED_PRECONDITION.
    """

    def start_calibration(self) -> int:
        """Start measuring on the trunk; returns the trunk target layers' output rows."""
        ...

    def select_parameters(self, k_per_row: int) -> int:
        """Let the trunk keep `k_per_row` entries per target row; returns entries selected."""
        ...

    def fisher_potentials(self) -> tuple[Sequence[TrunkLayerInfo], int, dict[str, torch.Tensor]]:
        """The trunk's measured layers (forward order), samples seen, and a tensor per layer."""
        ...

    def select_channels(self, channels: dict[str, torch.Tensor]) -> int:
        """Train these output rows of these trunk layers; returns entries made trainable."""
        ...

    @property
    def trainable_parameters(self) -> int:
        """Entries the trunk trains now."""
        ...


@dataclass
class SplitView:
    """The device's side of a split model, as a method's device half needs it."""

    model: nn.Module  # the whole split model: a forward runs the device blocks and the trunk
    root: nn.Module  # the device's Hugging Face model inside `model`
    root_prefix: str  # `root`'s name in `model`
    entry_name: str  # the name, in `root`, of the module that stands for the trunk
    model_dir: Path  # the checkpoint, for shapes of the whole model (a meta build reads no weight)
    overrides: dict[str, Any]  # config overrides the device model was built with
    trunk: TrunkPort
    # A context in which every trunk call appends its input anchor to the yielded list, so a
    # gradient taken with respect to them runs the trunk's backward (see fisher_pass).
    anchored: Callable[[], AbstractContextManager[list[torch.Tensor]]]

    def in_model(self, name: str) -> str:
        """A module name in `root` as named in `model`."""
        return f"{self.root_prefix}.{name}"


@dataclass
class Calibrated:
    """What a device half reports: counts for the caller, and any richer report of its choice."""

    summary: dict[str, int]
    report: Any = None  # e.g. TinyTrain's TinyTrainSelection
