"""The models an edge serves: each trunk loaded once, frozen, and shared by every session."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from splitft.errors import InvalidArgument, NotFound
from splitft.model.loading import LoadedSpan, edge_view, load_span

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    name: str
    span: LoadedSpan  # blocks[1:L]: every trunk a session may ask for (k >= 1)

    @property
    def num_layers(self) -> int:
        return self.span.num_layers


def parse_model_arg(arg: str) -> tuple[str, Path]:
    """`DIR` or `NAME=DIR`; the name defaults to the directory's base name."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = Path(arg).name, arg
    if not name or not path:
        raise InvalidArgument(f"--model-dir expects DIR or NAME=DIR, got {arg!r}")
    return name, Path(path)


def load_trunk(name: str, model_dir: Path) -> ServedModel:
    """Load all blocks but the first (the device always keeps at least one) and check they are frozen."""

    def cut(root, family):
        num_layers = len(root.get_submodule(family.blocks_path))
        edge_view(root, family, 1, num_layers)

    span = load_span(model_dir, cut, init_missing=False)
    trainable = [n for n, p in span.root.named_parameters() if p.requires_grad]
    if trainable:
        raise RuntimeError(f"trunk of {name} is not frozen: {trainable[:5]}")
    logger.info(
        "loaded trunk %s (%s, %d blocks, %.1f MB read) from %s",
        name,
        span.family.name,
        span.num_layers,
        span.bytes_read / 1e6,
        model_dir,
    )
    return ServedModel(name, span)


class ModelRegistry:
    def __init__(self, models: dict[str, ServedModel]) -> None:
        if not models:
            raise InvalidArgument("an edge needs at least one model (--model-dir)")
        self.models = models

    @classmethod
    def from_dirs(cls, args: list[str]) -> ModelRegistry:
        models: dict[str, ServedModel] = {}
        for arg in args:
            name, path = parse_model_arg(arg)
            if name in models:
                raise InvalidArgument(f"model name {name!r} given twice; use NAME=DIR to tell them apart")
            models[name] = load_trunk(name, path)
        return cls(models)

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} is not served here; served: {sorted(self.models)}")
        return model
