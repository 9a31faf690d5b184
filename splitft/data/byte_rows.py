"""Token rows of different lengths as one right-padded batch (the byte-level models' encoders share it).

Needs torch, unlike the rest of `splitft.data`: import it only where the model stack is there.
"""

from __future__ import annotations

import torch


def pad_rows(rows: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` (none empty) as `input_ids`, each row followed by `pad_id` up to the longest, and their
    `attention_mask` (1 on a row's own tokens, 0 on the padding)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask
