"""The models an edge serves: each trunk loaded once, frozen, and shared by every session."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from splitft.errors import InvalidArgument, NotFound
from splitft.model.dirs import parse_model_dirs
from splitft.model.families import Family
from splitft.model.loading import LoadedSpan, edge_view, load_span
from splitft.model.placement import CPU_FLOAT32, ResolvedPlacement

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A model this edge serves, by name: its frozen trunk, shared by every session on it."""

    name: str
    span: LoadedSpan  # blocks[1:L]: every trunk a session may ask for (k >= 1)

    @property
    def num_layers(self) -> int:
        """How many trunk blocks are loaded (all but the first)."""
        return self.span.num_layers


def load_trunk(
    name: str, model_dir: Path, placement: ResolvedPlacement = CPU_FLOAT32, quantize: str = "none"
) -> ServedModel:
    """Load all blocks but the first (the device always keeps at least one) onto `placement`'s
    device(s) in its dtype, and check they are frozen; `quantize` stores their linear weights in a
    scheme of `splitft.model.quantize`."""

    def cut(root: nn.Module, family: Family) -> None:
        """Keep blocks 1..L: the device always holds block 0."""
        num_layers = len(family.blocks(root))
        edge_view(root, family, 1, num_layers)

    span = load_span(model_dir, cut, init_missing=False, placement=placement, quantize=quantize)
    trainable = [n for n, p in span.root.named_parameters() if p.requires_grad]
    if trainable:
        raise RuntimeError(f"trunk of {name} is not frozen: {trainable[:5]}")
    logger.info(
        "loaded trunk %s (%s, %d blocks, %.1f MB read) from %s on %s",
        name,
        span.family.name,
        span.num_layers,
        span.bytes_read / 1e6,
        model_dir,
        placement.describe,
    )
    return ServedModel(name, span)


class ModelRegistry:
    """The models an edge serves, by name (at least one)."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        if not models:
            raise InvalidArgument("an edge needs at least one model (--model-dir)")
        self.models = models

    @classmethod
    def from_dirs(
        cls, args: list[str], placement: ResolvedPlacement = CPU_FLOAT32, quantize: str = "none"
    ) -> ModelRegistry:
        """Load every `--model-dir` (DIR or NAME=DIR, see `splitft.model.dirs`) onto `placement`,
        quantized as asked."""
        dirs = parse_model_dirs(args)
        return cls({name: load_trunk(name, path, placement, quantize) for name, path in dirs.items()})

    def get(self, name: str) -> ServedModel:
        """The served model called `name`; NotFound lists the ones served."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} is not served here; served: {sorted(self.models)}")
        return model
