"""Which trunk blocks an emulator keeps, and how its block indices map to the full model's.

The emulator of a split (k device blocks, j head blocks, n = L - k - j trunk blocks) keeps the
device blocks 0..k-1, K of the trunk blocks (uniform layer drop, Offsite-Tuning's rule) and the
head blocks; its blocks are renumbered 0..k+K+j-1. The device blocks keep their indices; the
head blocks move from L-j+t in the full model to k+K+t in the emulator. `EmulatorLayout` holds
that mapping, and is written next to the weights (`EMULATOR_FILE`) so a plug-in adapter can be
renamed back to the full model's indices.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from splitft.errors import InvalidArgument, NotFound
from splitft.model.spans import check_split

EMULATOR_FILE = "splitft_emulator.json"
FORMAT = 1


def kept_trunk_indices(n: int, keep: int) -> list[int]:
    """Offsite-Tuning's uniform drop: of n trunk blocks keep round(i (n-1) / (K-1)), i = 0..K-1
    (0-based within the trunk; Python's round, half to even). K = 1 keeps the first block."""
    if not isinstance(keep, int) or isinstance(keep, bool):
        raise InvalidArgument(f"keep must be an int, got {type(keep).__name__}")
    if not 1 <= keep <= n:
        raise InvalidArgument(f"keep must be between 1 and the trunk's {n} blocks, got {keep}")
    if keep == 1:
        return [0]
    return [round(i * (n - 1) / (keep - 1)) for i in range(keep)]


@dataclass(frozen=True)
class EmulatorLayout:
    """The split an emulator was built for and the full-model index of each of its blocks."""

    num_layers: int  # L, blocks in the full model
    device_layers: int  # k
    head_layers: int  # j
    kept: list[int]  # full-model indices of the trunk blocks kept, in order
    source_model_dir: str = ""
    distillation: dict[str, Any] = field(default_factory=dict)  # steps, losses (empty: not distilled)

    @classmethod
    def for_split(
        cls, num_layers: int, device_layers: int, head_layers: int, keep: int, source: str = ""
    ) -> EmulatorLayout:
        check_split(num_layers, device_layers, head_layers)
        trunk = num_layers - device_layers - head_layers
        kept = [device_layers + i for i in kept_trunk_indices(trunk, keep)]
        return cls(num_layers, device_layers, head_layers, kept, source)

    @property
    def keep(self) -> int:
        return len(self.kept)

    @property
    def emulator_layers(self) -> int:
        return self.device_layers + self.keep + self.head_layers

    def full_index(self, index: int) -> int:
        """The full model's index of emulator block `index`."""
        if not 0 <= index < self.emulator_layers:
            raise InvalidArgument(f"block {index} is outside the emulator's {self.emulator_layers} blocks")
        if index < self.device_layers:
            return index
        if index < self.device_layers + self.keep:
            return self.kept[index - self.device_layers]
        return self.num_layers - self.head_layers + (index - self.device_layers - self.keep)

    def source_indices(self) -> list[int]:
        """For each emulator block, the full model's block it is a copy of."""
        return [self.full_index(i) for i in range(self.emulator_layers)]

    def is_trunk(self, index: int) -> bool:
        """Whether emulator block `index` stands in for the trunk (its adapter is not carried over)."""
        return self.device_layers <= index < self.device_layers + self.keep

    def save(self, directory: Path) -> Path:
        path = directory / EMULATOR_FILE
        path.write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> EmulatorLayout:
        path = Path(directory) / EMULATOR_FILE
        if not path.is_file():
            raise NotFound(f"{directory} is not an emulator: no {EMULATOR_FILE} (splitft emulator build)")
        try:
            data = json.loads(path.read_text())
            if data.pop("format") != FORMAT:
                raise ValueError(f"unknown format, expected {FORMAT}")
            layout = cls(**data)
            check_split(layout.num_layers, layout.device_layers, layout.head_layers)
            trunk = range(layout.device_layers, layout.num_layers - layout.head_layers)
            if not layout.kept or any(i not in trunk for i in layout.kept):
                raise ValueError(f"kept blocks {layout.kept} are not trunk blocks")
        except (ValueError, TypeError, KeyError, InvalidArgument) as exc:
            raise InvalidArgument(f"{path} is not a valid emulator description: {exc}") from exc
        return layout
