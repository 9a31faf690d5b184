"""Load one side of a split model: build it on `meta`, cut it, read only that side's tensors.

The device never materialises trunk weights and the edge never the embeddings or head: the model
class is built with parameters on `meta` (buffers such as rotary tables are computed for real from
the config), the other side's modules are replaced by placeholders, and only the remaining
parameters are read from the safetensors files with `safe_open`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from splitft.errors import InvalidArgument, NotFound
from splitft.model.families import Family, family_for
from splitft.model.placement import CPU_FLOAT32, ResolvedPlacement, plan_device_map, torch_device
from splitft.model.quantize import QuantizeReport, quantize_blocks
from splitft.model.spans import Skipped

logger = logging.getLogger(__name__)

# accelerate's init_empty_weights patches nn.Module.register_parameter for the whole process while
# it is active, so any module built meanwhile in another thread (a LoRA layer, another split model)
# would get meta parameters. Everything in splitft that builds modules holds this lock.
MODEL_CONSTRUCTION_LOCK = threading.RLock()


@dataclass
class LoadedSpan:
    """One side of a split model, ready to run."""

    root: nn.Module  # the task model (e.g. LlamaForCausalLM) with the other side replaced
    config: PretrainedConfig
    family: Family
    model_dir: Path
    new_parameters: list[str] = field(default_factory=list)  # not in the checkpoint, freshly initialised
    bytes_read: int = 0  # tensor bytes read from the checkpoint
    placement: ResolvedPlacement = CPU_FLOAT32  # where the span computes and in what dtype
    device_map: dict[str, int | str] | None = None  # accelerate's map, when the blocks are spread
    quantization: QuantizeReport | None = None  # the blocks' linear weights, when quantized

    @property
    def device(self) -> torch.device:
        """Where the span's input goes (its first device, when a device map spreads it)."""
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        """The span's compute dtype (what its activations are; weights may be quantized)."""
        return self.placement.dtype

    @property
    def num_layers(self) -> int:
        return len(self.family.blocks(self.root))


def read_config(model_dir: str | Path) -> tuple[PretrainedConfig, Family]:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise NotFound(f"{path} is not a model directory: no config.json")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"cannot read the model config in {path}: {exc}") from exc
    return config, family_for(config)


def build_meta_model(config: PretrainedConfig, family: Family, **config_overrides: object) -> nn.Module:
    """The task model with every parameter on `meta` and real buffers."""
    for key, value in config_overrides.items():
        setattr(config, key, value)
    cls = family.model_class(config)
    with MODEL_CONSTRUCTION_LOCK, init_empty_weights(include_buffers=False):
        root = cls(config)
    return root


def device_view(root: nn.Module, family: Family, start: int, stop: int, entry: nn.Module) -> None:
    """Replace blocks[start:stop] with `entry` (calls the edge) followed by pass-through placeholders."""
    blocks = family.blocks(root)
    blocks[start] = entry
    for i in range(start + 1, stop):
        blocks[i] = Skipped(f"trunk block {i}")


def edge_view(root: nn.Module, family: Family, start: int, stop: int) -> None:
    """Keep blocks[start:stop] and parameter-free modules (rotary tables); skip everything else."""
    blocks = family.blocks(root)
    for i in range(len(blocks)):
        if not start <= i < stop:
            blocks[i] = Skipped(f"device block {i}")
    _skip_outside(root, "", family.blocks_path)


def _skip_outside(module: nn.Module, prefix: str, keep: str) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if path == keep:
            continue
        if keep.startswith(path + "."):
            _skip_outside(child, path + ".", keep)
        elif any(True for _ in child.parameters()):
            setattr(module, name, Skipped(path))


def load_span(
    model_dir: str | Path,
    cut: Callable[[nn.Module, Family], None],
    *,
    init_missing: bool,
    placement: ResolvedPlacement = CPU_FLOAT32,
    config_overrides: dict[str, object] | None = None,
    quantize: str = "none",
) -> LoadedSpan:
    """Build the model on meta, apply `cut`, and read only the parameters that remain, each straight
    to its device and dtype (`placement`; with a device map, the device accelerate chose for it).

    `init_missing`: initialise parameters the checkpoint lacks (a new classification head) instead
    of failing; only the device, which owns the head, should allow it. `quantize`: a scheme of
    `splitft.model.quantize` for the frozen linear layers of the span's blocks.
    """
    if quantize != "none" and placement.device_map is not None:
        raise InvalidArgument(f"--quantize {quantize} with --device-map is not supported; choose one")
    config, family = read_config(model_dir)
    root = build_meta_model(config, family, **(config_overrides or {}))
    cut(root, family)
    device_map = _device_map(root, family, placement)
    wanted = {name: p for name, p in root.named_parameters(remove_duplicate=False)}
    shapes = {name: tuple(p.shape) for name, p in wanted.items()}
    state, bytes_read = _read_tensors(Path(model_dir), root, shapes, allow_mismatch=init_missing)
    dtype = placement.dtype
    where = _device_of(device_map, placement.device)
    state = {
        k: v.to(device=where(k), dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()
    }
    root.load_state_dict(state, strict=False, assign=True)
    _tie_weights(root, set(state))
    new = _missing_parameters(root)
    if new and not init_missing:
        raise InvalidArgument(
            f"checkpoint in {model_dir} lacks weights this side needs: {', '.join(new[:8])}"
        )
    if new:
        _initialise(root, new, dtype, placement.device)
        logger.info("initialised %d tensors absent from the checkpoint: %s", len(new), ", ".join(new))
    _check_materialised(root)
    _place_buffers(root, device_map, placement.device)
    root.requires_grad_(False)
    root.eval()
    report = quantize_blocks(root, family, quantize)
    span = LoadedSpan(root, config, family, Path(model_dir), new, bytes_read, placement, device_map, report)
    return span


def _device_map(root: nn.Module, family: Family, placement: ResolvedPlacement) -> dict[str, int | str] | None:
    """Accelerate's map for a spread placement (None: everything on `placement.device`)."""
    if placement.device_map is None:
        return None
    block_class = type(family.blocks(root)[-1]).__name__
    device_map = plan_device_map(root, block_class, placement)
    return device_map if len({str(d) for d in device_map.values()}) > 1 else None


def _device_of(
    device_map: dict[str, int | str] | None, default: torch.device
) -> Callable[[str], torch.device]:
    """Parameter name -> device: the longest device-map prefix that owns it."""
    if device_map is None:
        return lambda _name: default

    def where(name: str) -> torch.device:
        owner = max(
            (k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len, default=None
        )
        return default if owner is None else torch_device(device_map[owner])

    return where


def _place_buffers(root: nn.Module, device_map: dict[str, int | str] | None, device: torch.device) -> None:
    """Buffers (rotary tables) were computed on the CPU: move them, and with a map let accelerate's
    hooks move each block's inputs to its device (parameters are already where the map says)."""
    if device_map is None:
        root.to(device)
        return
    from accelerate import dispatch_model  # CUDA-only branch: a map spans several GPUs

    dispatch_model(root, device_map=device_map)


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / f for f in files]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise NotFound(f"no safetensors weights in {model_dir} (model.safetensors or its index)")


def _read_tensors(
    model_dir: Path, root: nn.Module, shapes: dict[str, tuple[int, ...]], *, allow_mismatch: bool
) -> tuple[dict[str, torch.Tensor], int]:
    """Read the wanted tensors. A shape mismatch (a head for another number of labels) is skipped,
    so the parameter is initialised afresh, where `allow_mismatch`; otherwise it is an error."""
    rename = key_renamer(root, set(shapes))
    state: dict[str, torch.Tensor] = {}
    bytes_read = 0
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                name = rename(key)
                if name not in shapes or name in state:
                    continue
                found = tuple(f.get_slice(key).get_shape())
                if found != shapes[name]:
                    if not allow_mismatch:
                        raise InvalidArgument(
                            f"{key} in {model_dir} has shape {list(found)}, the model expects "
                            f"{list(shapes[name])}"
                        )
                    logger.info(
                        "not loading %s: checkpoint shape %s != %s (new head)", key, found, shapes[name]
                    )
                    continue
                state[name] = f.get_tensor(key)
                bytes_read += state[name].numel() * state[name].element_size()
    return state, bytes_read


def key_renamer(root: nn.Module, wanted: set[str]) -> Callable[[str], str]:
    """Map a checkpoint key to the model's parameter name, as transformers' own loader would.

    Uses transformers' conversion mapping (legacy layouts, e.g. old ViT checkpoints) and its
    base-model prefix rule (a `BertModel` checkpoint loads into `BertForSequenceClassification`).
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(root)  # type: ignore[arg-type]
    renamings: list[Any] = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters: list[Any] = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(root, "base_model_prefix", None) or None
    meta_names = dict.fromkeys(wanted, True)

    def rename(key: str) -> str:
        name, _ = rename_source_key(key, renamings, converters, prefix, meta_names)
        return name

    return rename


def _tie_weights(root: nn.Module, loaded: set[str]) -> None:
    """Tie output embeddings to input embeddings where the config asks and both live here."""
    expand = getattr(root, "get_expanded_tied_weights_keys", None)
    if expand is None:
        return
    for target, source in expand(all_submodels=True).items():
        if target in loaded or source not in loaded:
            continue
        try:
            source_param = root.get_parameter(source)
            owner_name, _, attr = target.rpartition(".")
            owner = root.get_submodule(owner_name)
        except AttributeError:
            continue
        if isinstance(owner, Skipped):
            continue
        setattr(owner, attr, source_param)


def _missing_parameters(root: nn.Module) -> list[str]:
    return [name for name, p in root.named_parameters() if p.is_meta]


def _initialise(root: nn.Module, names: list[str], dtype: torch.dtype, device: torch.device) -> None:
    """Initialise absent parameters with the model's own `_init_weights` (e.g. a new classifier),
    on the CPU (the same values whatever the device), then moved to `device`."""
    owners = {name.rpartition(".")[0] for name in names}
    for owner_name in sorted(owners):
        owner = root.get_submodule(owner_name)
        owner.to_empty(device="cpu", recurse=False)
        owner.to(dtype)
        with torch.no_grad():
            root._init_weights(owner)  # type: ignore[operator]
        owner.to(device)


def _check_materialised(root: nn.Module) -> None:
    for name, tensor in list(root.named_parameters()) + list(root.named_buffers()):
        if tensor.is_meta:
            raise InvalidArgument(f"{name} was left on the meta device after loading")
