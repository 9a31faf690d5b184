"""Sparse-delta training: train only selected entries of frozen Linear/Conv1D weights.

A selection method (TaskEdge, TinyTrain) gives a boolean mask per module in the `nn.Linear`
orientation `[out, in]`. `apply_masks` wraps each module in a `SparseDeltaLinear` whose only
parameter holds the selected entries, so gradients and optimizer state (AdamW's two moments) are
O(nnz), never weight-sized; the base weight is frozen and never written to, so a trunk shared by
many sessions stays intact.

Two layouts, chosen per mask:

* rows: the mask keeps whole output rows (TinyTrain's channels). The parameter is `[rows, in]`
  and its product with the input is `index_add`-ed into the base output: no dense delta exists.
* entries: any other mask. The parameter is the `[nnz]` vector of values; forward adds
  `x @ delta^T` to the base output, computed sparsely (`splitft.methods.sparse_entries`: gather
  the selected input columns, scale, add into their rows; the backward likewise), O(tokens x nnz)
  both ways. No `[out, in]` tensor is built, in forward or backward: a forward keeps only its
  input, the parameter and the index buffer for backward. (Until 2026-11 this layout added a dense
  delta to the weight and ran one matmul, which kept a weight-sized copy per module and forward and
  built a weight-sized gradient; `splitft bench sparse` measures the two side by side.)

On-disk format (`save_sparse_deltas` / `load_sparse_deltas`), a directory with two files:

* `sparse_deltas.safetensors`: for every module name `N`, `N.delta_indices` (int64 `[nnz]`,
  row-major flat indices `out_index * in_features + in_index` into the `[out, in]` weight, in
  increasing order) and `N.delta_values` (`[nnz]`, the weight's dtype). The new weight is
  `W[out, in] + value` at each index; for a GPT-2 `Conv1D` that is `W[in, out] + value`.
* `sparse_config.json`: `{"format": "splitft.sparse_deltas", "format_version": 1,
  "modules": {N: {"nnz": int}}, "metadata": {...caller's JSON object...}}`.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from splitft.errors import InvalidArgument
from splitft.methods.common import is_linear_like, linear_shape, linear_weight
from splitft.methods.sparse_entries import sparse_entries_product

logger = logging.getLogger(__name__)

DELTAS_FILE = "sparse_deltas.safetensors"
CONFIG_FILE = "sparse_config.json"
FORMAT_NAME = "splitft.sparse_deltas"
FORMAT_VERSION = 1


class SparseDeltaLinear(nn.Module):
    """A frozen `nn.Linear`/`Conv1D` plus a trainable delta on the entries of `mask` ([out, in])."""

    def __init__(self, base: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = linear_shape(base)
        mask = _checked_mask(mask, (self.out_features, self.in_features))
        weight = linear_weight(base)
        base.requires_grad_(False)
        self.base = base
        self.rows_only = _selects_whole_rows(mask)
        if self.rows_only:
            rows = mask.any(dim=1).nonzero().flatten()
            self.register_buffer("delta_rows", rows.to(weight.device))
            self.delta_values = nn.Parameter(weight.new_zeros(len(rows), self.in_features))
        else:
            indices = mask.flatten().nonzero().flatten()
            self.register_buffer("delta_indices", indices.to(weight.device))
            self.delta_values = nn.Parameter(weight.new_zeros(len(indices)))

    @property
    def nnz(self) -> int:
        """Number of trainable entries."""
        return self.delta_values.numel()

    def flat_indices(self) -> torch.Tensor:
        """Sorted flat indices of the trainable entries into the `[out, in]` weight."""
        if not self.rows_only:
            return cast(torch.Tensor, self.delta_indices)
        rows = cast(torch.Tensor, self.delta_rows)
        cols = torch.arange(self.in_features, device=rows.device)
        return (rows[:, None] * self.in_features + cols[None, :]).flatten()

    def mask(self) -> torch.Tensor:
        """The boolean `[out, in]` mask this module trains."""
        size = self.out_features * self.in_features
        flat = torch.zeros(size, dtype=torch.bool, device=self.delta_values.device)
        flat[self.flat_indices()] = True
        return flat.view(self.out_features, self.in_features)

    def dense_delta(self) -> torch.Tensor:
        """The delta as a dense `[out, in]` tensor (differentiable in `delta_values`)."""
        flat = self.delta_values.new_zeros(self.out_features * self.in_features)
        flat = flat.index_put((self.flat_indices(),), self.delta_values.flatten())
        return flat.view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows_only:
            # Only the selected output channels change: [..., rows] added in place of a dense delta.
            out = self.base(x)
            extra = F.linear(x, self.delta_values)
            return out.index_add(-1, cast(torch.Tensor, self.delta_rows), extra.to(out.dtype))
        out = self.base(x)
        shape = (self.out_features, self.in_features)
        indices = cast(torch.Tensor, self.delta_indices)
        extra = sparse_entries_product(x, self.delta_values, indices, shape)
        return out + extra.to(out.dtype)

    def merged(self) -> nn.Module:
        """A plain copy of the base module whose weight includes the delta; the base is untouched."""
        delta = self.dense_delta().detach()
        weight = cast(torch.Tensor, self.base.weight).detach() + (
            delta.t() if isinstance(self.base, Conv1D) else delta
        )
        plain = copy.copy(self.base)
        plain._parameters = dict(self.base._parameters)  # a new dict: the base keeps its own weight
        plain.weight = nn.Parameter(weight, requires_grad=False)
        return plain

    def extra_repr(self) -> str:
        layout = "rows" if self.rows_only else "entries"
        return f"out={self.out_features}, in={self.in_features}, nnz={self.nnz}, layout={layout}"


def _checked_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise InvalidArgument("a sparse-delta mask must be a torch.bool tensor")
    if tuple(mask.shape) != shape:
        raise InvalidArgument(f"mask shape {tuple(mask.shape)} != weight shape [out, in] {shape}")
    if not bool(mask.any()):
        raise InvalidArgument("mask selects no entries")
    return mask.detach().cpu()


def _selects_whole_rows(mask: torch.Tensor) -> bool:
    return torch.equal(mask.any(dim=1), mask.all(dim=1))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_masks(
    model: nn.Module, masks: dict[str, torch.Tensor], *, freeze_model: bool = True
) -> dict[str, SparseDeltaLinear]:
    """Replace each named Linear/Conv1D by a `SparseDeltaLinear` training the entries of its mask.

    With `freeze_model` (default) every other parameter is frozen too, so the deltas are exactly
    `[p for p in model.parameters() if p.requires_grad]`.
    """
    if freeze_model:
        model.requires_grad_(False)
    wrapped: dict[str, SparseDeltaLinear] = {}
    for name, mask in masks.items():
        module = model.get_submodule(name)
        if not is_linear_like(module):
            raise InvalidArgument(f"{name!r} is a {type(module).__name__}, not nn.Linear or Conv1D")
        wrapped[name] = SparseDeltaLinear(module, mask)
        _set_submodule(model, name, wrapped[name])
    logger.info("sparse deltas on %d modules, %d trainable entries", len(wrapped), delta_count(wrapped))
    return wrapped


def delta_count(modules: dict[str, SparseDeltaLinear]) -> int:
    """Total trainable entries over the given wrappers."""
    return sum(m.nnz for m in modules.values())


def sparse_modules(model: nn.Module) -> dict[str, SparseDeltaLinear]:
    """Every `SparseDeltaLinear` in the model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseDeltaLinear)}


def sparse_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{name}.delta_indices` (int64 flat `[out, in]` indices) and `{name}.delta_values` per module."""
    state: dict[str, torch.Tensor] = {}
    for name, module in sparse_modules(model).items():
        state[f"{name}.delta_indices"] = module.flat_indices().detach().to(torch.int64).clone()
        state[f"{name}.delta_values"] = module.delta_values.detach().flatten().clone()
    return state


def _module_names(state: dict[str, torch.Tensor]) -> list[str]:
    names = sorted({key.rsplit(".", 1)[0] for key in state})
    for name in names:
        indices, values = state.get(f"{name}.delta_indices"), state.get(f"{name}.delta_values")
        if indices is None or values is None:
            raise InvalidArgument(f"{name!r} needs both .delta_indices and .delta_values")
        if indices.dtype != torch.int64 or indices.dim() != 1 or indices.shape != values.shape:
            raise InvalidArgument(f"{name!r}: indices must be int64 [nnz] matching values' shape")
    if len(state) != 2 * len(names):
        raise InvalidArgument("sparse state holds keys other than .delta_indices / .delta_values")
    return names


def save_sparse_deltas(
    path_dir: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None
) -> Path:
    """Write `state` (from `sparse_state_dict`) and `metadata` in the format of the module docstring."""
    names = _module_names(state)
    directory = Path(path_dir)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "modules": {n: {"nnz": int(state[f"{n}.delta_values"].numel())} for n in names},
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(config, indent=2, sort_keys=True)
    except TypeError as exc:
        raise InvalidArgument(f"metadata must be JSON-serializable: {exc}") from exc
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(directory / DELTAS_FILE), metadata={"format": FORMAT_NAME})
    (directory / CONFIG_FILE).write_text(text + "\n")
    return directory


def read_sparse_deltas(path_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The saved state and config; raises if they disagree."""
    directory = Path(path_dir)
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT_NAME or config.get("format_version") != FORMAT_VERSION:
        raise InvalidArgument(f"{directory} does not hold {FORMAT_NAME} version {FORMAT_VERSION}")
    state = load_file(str(directory / DELTAS_FILE))
    if _module_names(state) != sorted(config["modules"]):
        raise InvalidArgument(f"{CONFIG_FILE} and {DELTAS_FILE} name different modules")
    return state, config


def _add_flat(module: nn.Module, indices: torch.Tensor, values: torch.Tensor) -> None:
    """`weight[out, in] += value` at flat `[out, in]` indices, whatever the module's orientation."""
    out_features, in_features = linear_shape(module)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= out_features * in_features):
        raise InvalidArgument(f"delta index out of range for a [{out_features}, {in_features}] weight")
    weight = cast(torch.Tensor, module.weight)
    rows, cols = (indices // in_features).to(weight.device), (indices % in_features).to(weight.device)
    position = (cols, rows) if isinstance(module, Conv1D) else (rows, cols)
    with torch.no_grad():
        weight.index_put_(position, values.to(weight), accumulate=True)


def load_sparse_deltas(model: nn.Module, path_dir: str | Path) -> list[str]:
    """Add saved deltas to the weights of a plain Hugging Face model in place; returns module names."""
    state, config = read_sparse_deltas(path_dir)
    names = sorted(config["modules"])
    for name in names:
        module = model.get_submodule(name)
        if not is_linear_like(module):
            raise InvalidArgument(f"{name!r} is a {type(module).__name__}; load into a plain model")
        _add_flat(module, state[f"{name}.delta_indices"], state[f"{name}.delta_values"])
    logger.info("loaded sparse deltas into %d modules from %s", len(names), path_dir)
    return names


def merge_sparse_deltas(model: nn.Module) -> nn.Module:
    """Replace every `SparseDeltaLinear` by a plain module with base + delta weights, for deployment.

    The merged weights are new tensors: the frozen base weights (possibly shared) are not written.
    """
    for name, module in sparse_modules(model).items():
        _set_submodule(model, name, module.merged())
    return model
