"""What a session's forward accepts: the checks on a device's tensors before the trunk sees them.

Plain checks, no state: `TrunkSession.forward` calls `check_forward_inputs` first, so a malformed
request fails with a precise INVALID_ARGUMENT and never reaches a trunk pass (shared or not).
"""

from __future__ import annotations

import torch

from edge_server.limits import DataPlaneLimits
from splitft.errors import InvalidArgument
from splitft.model.loading import LoadedSpan

FORWARD_TENSORS = frozenset({"hidden", "attention_mask", "position_ids"})


def check_forward_inputs(
    inputs: dict[str, torch.Tensor], span: LoadedSpan, limits: DataPlaneLimits
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(hidden, attention mask or None, position ids or None) of a forward on `span`'s trunk,
    checked against the model's hidden size and dtype and the edge's `limits`; a [1, tokens] mask
    is expanded to every row."""
    unknown = set(inputs) - FORWARD_TENSORS
    if unknown:
        raise InvalidArgument(f"unexpected forward tensors {sorted(unknown)}")
    hidden = inputs.get("hidden")
    if hidden is None:
        raise InvalidArgument("forward needs a 'hidden' tensor")
    hidden_size = span.config.hidden_size
    if hidden.dim() != 3 or hidden.shape[-1] != hidden_size or hidden.shape[0] < 1 or hidden.shape[1] < 1:
        raise InvalidArgument(
            f"hidden must have shape [batch, tokens, {hidden_size}], got {list(hidden.shape)}"
        )
    limits.check_tokens(hidden.shape[0], hidden.shape[1])
    dtype = next(iter(span.root.parameters())).dtype
    if hidden.dtype != dtype:
        raise InvalidArgument(f"hidden must be {dtype} for this model, got {hidden.dtype}")
    mask = _check_index_tensor(
        inputs.get("attention_mask"), "attention_mask", hidden.shape[0], hidden.shape[1]
    )
    positions = _check_index_tensor(
        inputs.get("position_ids"), "position_ids", hidden.shape[0], hidden.shape[1]
    )
    if positions is not None and positions.dtype == torch.bool:
        raise InvalidArgument("position_ids must be an integer tensor")
    if mask is not None and mask.shape[0] != hidden.shape[0]:
        # A [1, tokens] mask is accepted for every row; not every family's mask builder broadcasts it.
        mask = mask.expand(hidden.shape[0], -1)
    return hidden, mask, positions


def _check_index_tensor(t: torch.Tensor | None, name: str, batch: int, tokens: int) -> torch.Tensor | None:
    if t is None:
        return None
    if t.dtype.is_floating_point:
        raise InvalidArgument(f"{name} must be an integer or bool tensor, got {t.dtype}")
    if t.dim() != 2 or t.shape[0] not in (1, batch) or t.shape[1] != tokens:
        raise InvalidArgument(f"{name} must have shape [{batch} or 1, {tokens}], got {list(t.shape)}")
    return t
