"""The cut: which blocks run where, and the placeholder modules that stand in for the other side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from splitft.errors import InvalidArgument


@dataclass(frozen=True)
class SplitSpec:
    """A U-shaped cut of a model with `num_layers` blocks.

    device: embeddings + blocks[0:k]; edge: blocks[k:L-j]; device: blocks[L-j:L] + norm + head.
    """

    num_layers: int  # L, blocks in the whole model
    device_layers: int  # k >= 1: raw inputs never leave the device
    head_layers: int = 0  # j >= 0: the head and the loss always stay on the device

    def __post_init__(self) -> None:
        check_split(self.num_layers, self.device_layers, self.head_layers)

    @property
    def trunk_start(self) -> int:
        return self.device_layers

    @property
    def trunk_stop(self) -> int:
        return self.num_layers - self.head_layers

    @property
    def trunk_range(self) -> range:
        return range(self.trunk_start, self.trunk_stop)


def check_split(num_layers: int, device_layers: int, head_layers: int) -> None:
    """Fail fast, with the reason, on a cut that leaves no trunk or no device blocks."""
    for name, value in (("device_layers", device_layers), ("head_layers", head_layers)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{name} must be an int, got {type(value).__name__}")
    if device_layers < 1:
        raise InvalidArgument(
            f"device_layers must be >= 1 (raw inputs must not leave the device), got {device_layers}"
        )
    if head_layers < 0:
        raise InvalidArgument(f"head_layers must be >= 0, got {head_layers}")
    if device_layers + head_layers >= num_layers:
        raise InvalidArgument(
            f"device_layers + head_layers must leave at least one trunk block: "
            f"{device_layers} + {head_layers} >= {num_layers} blocks in the model"
        )


class Skipped(nn.Module):
    """Stands in for a module that lives on the other side; passes its first input through."""

    def __init__(self, original: str = "") -> None:
        super().__init__()
        self.original = original

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            return args[0]
        return kwargs.get("hidden_states", kwargs.get("input"))

    def extra_repr(self) -> str:
        return f"stands in for {self.original}" if self.original else ""
