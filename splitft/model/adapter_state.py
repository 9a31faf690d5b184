"""Load a peft adapter's tensors into a live adapter in place: exactly its keys and shapes, or refused.

Both halves of a split model start from a saved adapter this way (a federated round's global
adapter, a checkpoint): the device's LoRA on the device, the trunk's on the edge
(`LoadAdapter`). peft's own `set_peft_model_state_dict` loads with `strict=False` and would leave
a missing key at its fresh value and accept keys of other modules; this refuses both.
"""

from __future__ import annotations

import torch
from peft import PeftModel, get_peft_model_state_dict

from splitft.errors import FailedPrecondition, InvalidArgument

ADAPTER_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def check_adapter_state(
    state: dict[str, torch.Tensor], current: dict[str, torch.Tensor], *, what: str
) -> None:
    """`state` has exactly `current`'s keys and shapes, in a floating dtype; InvalidArgument names
    the first difference."""
    missing, extra = sorted(set(current) - set(state)), sorted(set(state) - set(current))
    if missing or extra:
        raise InvalidArgument(
            f"the adapter must have exactly the {len(current)} keys of the {what}; "
            f"missing {missing[:3]}, unexpected {extra[:3]}"
        )
    for key, tensor in state.items():
        if tensor.shape != current[key].shape:
            raise InvalidArgument(
                f"{key} has shape {list(tensor.shape)}, the {what}'s is {list(current[key].shape)}"
            )
        if tensor.dtype not in ADAPTER_FLOATS:
            raise InvalidArgument(f"{key} must be float32, bfloat16 or float16, got {tensor.dtype}")


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor], *, what: str) -> int:
    """Copy `state` (peft's saved names) into `model`'s adapter parameters; returns tensors loaded."""
    current = get_peft_model_state_dict(model)
    check_adapter_state(state, current, what=what)
    by_storage = {p.data_ptr(): p for p in model.parameters()}
    targets = {key: by_storage.get(tensor.data_ptr()) for key, tensor in current.items()}
    unmapped = sorted(key for key, param in targets.items() if param is None)
    if unmapped:  # peft returned copies, not views: refuse rather than load into nothing
        raise FailedPrecondition(f"cannot map adapter keys to parameters: {unmapped[:3]}")
    with torch.no_grad():
        for key, param in targets.items():
            assert param is not None
            param.copy_(state[key].to(param.device, param.dtype))
    return len(state)
