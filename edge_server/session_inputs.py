"""What a session's forward and backward accept from the wire, checked and cast on arrival.

The wire carries activations and gradients in the session codec's dtype; the trunk computes in its
own (`--dtype`) on its own device (`--device`). Each side casts what arrives, so a float32 device
trains against a bfloat16 trunk on a GPU with no agreement beyond the codec.
"""

from __future__ import annotations

import torch

from edge_server.limits import DataPlaneLimits
from splitft.errors import InvalidArgument
from splitft.model.loading import LoadedSpan

WIRE_FLOATS = (torch.float32, torch.bfloat16, torch.float16)  # what activations and gradients may be
FORWARD_TENSORS = frozenset({"hidden", "attention_mask", "position_ids"})


def check_forward_inputs(
    inputs: dict[str, torch.Tensor], span: LoadedSpan, limits: DataPlaneLimits, past_length: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(hidden, attention mask, position ids), checked, on the trunk's device, hidden in its dtype;
    after `past_length` cached tokens (generate), the mask covers those too."""
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
    if hidden.dtype not in WIRE_FLOATS:
        raise InvalidArgument(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    batch, tokens = hidden.shape[0], hidden.shape[1]
    mask = _check_index_tensor(inputs.get("attention_mask"), "attention_mask", batch, past_length + tokens)
    positions = _check_index_tensor(inputs.get("position_ids"), "position_ids", batch, tokens)
    if positions is not None and positions.dtype == torch.bool:
        raise InvalidArgument("position_ids must be an integer tensor")
    if mask is not None and mask.shape[0] != batch:
        # A [1, tokens] mask is accepted for every row; not every family's mask builder broadcasts it.
        mask = mask.expand(batch, -1)
    device = span.device
    hidden = hidden.to(device, span.dtype)
    return hidden, _to(mask, device), _to(positions, device)


def check_gradient(
    grad: torch.Tensor, shape: torch.Size, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The gradient of a kept forward's output (`shape`), cast to the output's device and dtype."""
    if grad.shape != shape:
        raise InvalidArgument(f"grad shape {list(grad.shape)} != forward output shape {list(shape)}")
    if grad.dtype not in WIRE_FLOATS:
        raise InvalidArgument(f"grad dtype {grad.dtype}: float32, bfloat16 or float16 expected")
    return grad.to(device, dtype)


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _check_index_tensor(t: torch.Tensor | None, name: str, batch: int, tokens: int) -> torch.Tensor | None:
    if t is None:
        return None
    if t.dtype.is_floating_point:
        raise InvalidArgument(f"{name} must be an integer or bool tensor, got {t.dtype}")
    if t.dim() != 2 or t.shape[0] not in (1, batch) or t.shape[1] != tokens:
        raise InvalidArgument(f"{name} must have shape [{batch} or 1, {tokens}], got {list(t.shape)}")
    return t
