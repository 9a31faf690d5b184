"""What the device accepts from the edge's ExportAdapter: trunk adapter keys only, as it expects them.

The device writes the edge's tensors into the adapter it saves, and peft loads every key of a saved
adapter (non-LoRA keys included, with `strict=False`). A malicious edge could otherwise ship, say,
`...embeddings.word_embeddings.weight` and overwrite device-side base weights at load time. So every
trunk key must lie in a trunk block of this session, and name a tensor the device's own blocks have
(the blocks of a transformer are alike): the same LoRA tensor with the same shape and dtype, or a
sparse delta (1-D `.delta_indices` int64 / `.delta_values` float) of a module the blocks have.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from splitft.errors import FailedPrecondition
from splitft.model.spans import SplitSpec

_SPARSE_SUFFIXES = (".delta_indices", ".delta_values")


def split_key(key: str, blocks: str) -> tuple[int, str] | None:
    """(block index, key relative to the block) for a key inside a block, else None."""
    match = re.match(rf"(?:base_model\.model\.)?{re.escape(blocks)}\.(\d+)\.(.+)$", key)
    return (int(match.group(1)), match.group(2)) if match else None


def _refuse(key: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(f"the edge's adapter has tensor {key[:200]!r}, refused: {why}")


def check_trunk_adapter(
    trunk: dict[str, torch.Tensor],
    device: dict[str, torch.Tensor],
    *,
    root: nn.Module,
    blocks_path: str,
    spec: SplitSpec,
) -> None:
    """FailedPrecondition naming the first key of `trunk` (from the edge) that is not a trunk adapter
    tensor of this session, judged against the device's own adapter tensors `device` and the modules
    of its blocks in `root` (the HF model)."""
    lora = any(".lora_" in key for key in device)
    templates: dict[str, torch.Tensor] = {}  # key relative to a block -> a device tensor
    for key, tensor in device.items():
        found = split_key(key, blocks_path)
        if found is not None and found[0] not in spec.trunk_range:
            templates[found[1]] = tensor
    modules = _block_modules(root, blocks_path, spec)
    for key, tensor in trunk.items():
        found = split_key(key, blocks_path)
        if found is None or found[0] not in spec.trunk_range:
            trunk_blocks = f"[{spec.trunk_start}, {spec.trunk_stop})"
            raise _refuse(key, f"not in a trunk block {trunk_blocks} of this session")
        if lora != key.startswith("base_model.model."):
            raise _refuse(key, "not named like this session's adapter")
        _check_tensor(key, found[1], tensor, templates, modules)


def _block_modules(root: nn.Module, blocks_path: str, spec: SplitSpec) -> set[str]:
    """Names, relative to their block, of the matrices (plain or already given a sparse delta) of the
    device's own blocks: the modules a sparse delta may name."""
    names = set()
    for name, module in root.named_modules():
        found = split_key(name, blocks_path)
        weight = getattr(module, "weight", None)
        matrix = isinstance(weight, torch.Tensor) and weight.dim() == 2
        if (
            found is not None
            and found[0] not in spec.trunk_range
            and (matrix or hasattr(module, "delta_values"))
        ):
            names.add(found[1])
    return names


def _check_tensor(
    key: str, rel: str, tensor: torch.Tensor, templates: dict[str, torch.Tensor], modules: set[str]
) -> None:
    if rel.endswith(_SPARSE_SUFFIXES):
        module, suffix = rel.rsplit(".", 1)
        if module not in modules:
            raise _refuse(key, "not a module this model's blocks train")
        floating = tensor.dtype.is_floating_point
        dtype_ok = tensor.dtype == torch.int64 if suffix == "delta_indices" else floating
        if tensor.dim() != 1 or not dtype_ok:
            got = f"{tensor.dtype} {list(tensor.shape)}"
            raise _refuse(key, f"a sparse delta is 1-D (indices int64), got {got}")
        return
    template = templates.get(rel)
    if template is None:
        raise _refuse(key, "not an adapter tensor of this model's blocks")
    if tensor.shape != template.shape or tensor.dtype != template.dtype:
        raise _refuse(
            key,
            f"shape {list(tensor.shape)} {tensor.dtype}, expected {list(template.shape)} {template.dtype}",
        )
