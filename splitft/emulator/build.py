"""Write an emulator directory: the source checkpoint with its trunk uniformly layer-dropped.

Tensors are read one at a time from the source safetensors (the dropped blocks are never kept in
memory, the emulator's are, to be written as one file): embeddings, device blocks, head blocks,
final norm and head unchanged, the kept trunk blocks renumbered, every name as the task model
(transformers' own key mapping) calls it. The config's block count (and per-layer lists such as
Llama's `layer_types`) is rewritten, the tokenizer and other small files are copied, and the
layout goes to `splitft_emulator.json`. The result loads with plain transformers.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig

from splitft.emulator.layout import EMULATOR_FILE, EmulatorLayout
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.model.families import Family
from splitft.model.loading import build_meta_model, checkpoint_files, key_renamer, read_config

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
# Files never copied from the source: weights (rewritten) and their other formats.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")
_NOT_COPIED = {"config.json", "model.safetensors.index.json", EMULATOR_FILE}


@dataclass(frozen=True)
class EmulatorSize:
    """Parameters and bytes of the emulator and of the model it stands in for."""

    source_parameters: int
    emulator_parameters: int
    source_bytes: int
    emulator_bytes: int

    @property
    def ratio(self) -> float:
        return round(self.emulator_parameters / self.source_parameters, 4)


def num_layers(config: PretrainedConfig) -> int:
    for attr in ("num_hidden_layers", "n_layer"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise InvalidArgument("cannot tell the number of blocks from the model config")


def block_pattern(blocks_path: str) -> re.Pattern[str]:
    """Matches a block parameter's name in the task model; group 1: the index, group 2: the rest."""
    return re.compile(f"^{re.escape(blocks_path)}\\.(\\d+)\\.(.+)$")


def checkpoint_renamer(config: PretrainedConfig, family: Family) -> Callable[[str], str]:
    """Checkpoint key -> the task model's parameter name, as transformers' loader maps it (a
    `BertModel` checkpoint's `encoder.layer.3.` is `bert.encoder.layer.3.`, a legacy ViT
    checkpoint's `vit.encoder.layer.3.` is `vit.layers.3.`). The emulator is written with the
    model's own names, so it loads with plain transformers either way."""
    root = build_meta_model(config, family)
    names = {name for name, _ in root.named_parameters(remove_duplicate=False)}
    return key_renamer(root, names)


def emulator_config(config: PretrainedConfig, layout: EmulatorLayout) -> PretrainedConfig:
    """`config` with the emulator's block count and per-block lists cut to the blocks kept."""
    config = config.__class__.from_dict(config.to_dict())
    sources = layout.source_indices()
    config.num_hidden_layers = layout.emulator_layers  # n_layer on GPT-2 (attribute_map)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == layout.num_layers:
        config.layer_types = [layer_types[i] for i in sources]
    return config


def write_emulator(
    model_dir: str | Path, out: str | Path, *, device_layers: int, head_layers: int, keep: int
) -> tuple[EmulatorLayout, EmulatorSize]:
    """Write the layer-dropped emulator of `model_dir`'s split (k, j) keeping `keep` trunk blocks."""
    source, target = Path(model_dir), Path(out)
    config, family = read_config(source)
    layout = EmulatorLayout.for_split(num_layers(config), device_layers, head_layers, keep, str(source))
    if target.exists() and any(target.iterdir()):
        raise FailedPrecondition(f"{target} exists and is not empty; give a new directory")
    if target.resolve() == source.resolve():
        raise InvalidArgument("the emulator cannot be written over its source model")
    rename = checkpoint_renamer(config, family)  # the source's names: every block index exists there
    new_index = {full: i for i, full in enumerate(layout.source_indices())}
    tensors, (source_count, source_bytes) = _dropped_tensors(source, rename, family.blocks_path, new_index)
    _check_every_block_written(tensors, family.blocks_path, layout.emulator_layers)
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / WEIGHTS), metadata={"format": "pt"})
    emulator_config(config, layout).save_pretrained(str(target))
    _copy_small_files(source, target)
    layout.save(target)
    emulator_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    size = EmulatorSize(source_count, sum(t.numel() for t in tensors.values()), source_bytes, emulator_bytes)
    logger.info("emulator of %s: trunk blocks %s kept, %s of the parameters", source, layout.kept, size.ratio)
    return layout, size


def _dropped_tensors(
    source: Path, rename: Callable[[str], str], blocks_path: str, new_index: dict[int, int]
) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """The source's tensors with dropped blocks left out and kept ones renumbered; and the source's
    parameter count and bytes."""
    pattern = block_pattern(blocks_path)
    tensors: dict[str, torch.Tensor] = {}
    count = nbytes = 0
    for path in checkpoint_files(source):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                count += tensor.numel()
                nbytes += tensor.numel() * tensor.element_size()
                name = rename(key)
                match = pattern.match(name)
                if match is None:
                    tensors[name] = tensor
                elif int(match.group(1)) in new_index:
                    tensors[f"{blocks_path}.{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    return tensors, (count, nbytes)


def _check_every_block_written(tensors: dict[str, torch.Tensor], blocks_path: str, count: int) -> None:
    """Every emulator block got the same tensors (else a checkpoint key was not recognised)."""
    pattern = block_pattern(blocks_path)
    per_block: dict[int, set[str]] = {i: set() for i in range(count)}
    for name in tensors:
        match = pattern.match(name)
        if match is not None:
            per_block.setdefault(int(match.group(1)), set()).add(match.group(2))
    shapes = {frozenset(names) for names in per_block.values()}
    if len(per_block) != count or len(shapes) != 1 or not next(iter(shapes)):
        empty = sorted(i for i, names in per_block.items() if not names)
        raise FailedPrecondition(
            f"could not map the checkpoint's blocks to the emulator's {count} blocks (blocks without "
            f"weights: {empty}); is every block under {blocks_path!r}?"
        )


def _copy_small_files(source: Path, target: Path) -> None:
    """Tokenizer, generation and other config files, folders too (sentence-transformers' pooling
    config); never weights, which belong to the full model."""
    skip = shutil.ignore_patterns(*(f"*{suffix}" for suffix in _WEIGHT_SUFFIXES))
    for path in sorted(source.iterdir()):
        if path.is_dir():
            shutil.copytree(path, target / path.name, ignore=skip)
        elif path.name not in _NOT_COPIED and not path.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(path, target / path.name)


def replace_blocks(
    directory: Path,
    config: PretrainedConfig,
    family: Family,
    new_block: Callable[[int, str], torch.Tensor | None],
) -> int:
    """Rewrite the emulator's weights with `new_block(index, name_in_block)` where it gives a tensor
    (distilled trunk blocks); returns how many tensors changed."""
    pattern = block_pattern(family.blocks_path)
    path = directory / WEIGHTS
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    changed = 0
    for key in list(tensors):
        match = pattern.match(key)
        if match is None:
            continue
        replacement = new_block(int(match.group(1)), match.group(2))
        if replacement is not None:
            tensors[key] = replacement.detach().to("cpu", tensors[key].dtype).contiguous()
            changed += 1
    save_file(tensors, str(path), metadata={"format": "pt"})
    return changed
