"""The saved form of a selection method's adapter: sparse deltas plus, when the head is new, the head.

A directory in the sparse-delta format (`splitft.methods.sparse`) and, for a head the checkpoint
lacks (e.g. a new classifier), `head.safetensors` with its dense weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitft.methods.sparse import load_sparse_deltas, save_sparse_deltas

HEAD_FILE = "head.safetensors"  # new head modules (absent from the checkpoint), trained densely


def save_selected(
    path: Path, state: dict[str, torch.Tensor], head: Mapping[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """The sparse-delta format (splitft.methods.sparse) plus, when the head is new, head.safetensors."""
    save_sparse_deltas(path, state, metadata)
    if head:
        save_file(
            {k: v.detach().contiguous() for k, v in head.items()},
            str(path / HEAD_FILE),
            metadata={"format": "pt"},
        )
    return path


def load_selected(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply a saved selection adapter to a plain Hugging Face model: new head first, then the deltas."""
    head = Path(path) / HEAD_FILE
    if head.is_file():
        missing, unexpected = model.load_state_dict(load_file(str(head)), strict=False)
        if unexpected:
            raise ValueError(f"{head} holds tensors the model lacks: {unexpected[:3]}")
    load_sparse_deltas(model, path)
    return model
