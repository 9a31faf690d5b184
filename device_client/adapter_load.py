"""Start a split model from a saved whole-model adapter: the device's keys here, the trunk's to the
edge (and write one: `save_peft_adapter`).

A federated round starts every device from the round before's global adapter, and a resumed session
from its checkpoint; both are one standard peft adapter for the whole model (what `save_adapter`
writes), whose keys are cut by block: keys inside the session's trunk blocks go to the edge's
`LoadAdapter`, every other key (device blocks, head) into the device's own LoRA.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from device_client.adapter_check import check_trunk_adapter, split_key
from device_client.trunk import RemoteTrunk
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound
from splitft.federated.shared_trunk import trunk_marks
from splitft.model.adapter_state import check_adapter_state, load_adapter_state
from splitft.model.spans import SplitSpec

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and config of the peft adapter directory `path`."""
    folder = Path(path)
    weights, config = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
    if not weights.is_file() or not config.is_file():
        raise NotFound(f"{folder} is not a peft adapter: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    try:
        return load_file(str(weights)), json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read the adapter in {folder}: {exc}") from None


def split_adapter(
    state: Mapping[str, torch.Tensor], blocks_path: str, spec: SplitSpec
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(device keys, trunk keys) of a whole-model adapter state, by the block each key is in."""
    device: dict[str, torch.Tensor] = {}
    trunk: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        found = split_key(key, blocks_path)
        (trunk if found is not None and found[0] in spec.trunk_range else device)[key] = tensor
    return device, trunk


def shared_marks(
    state: Mapping[str, torch.Tensor], blocks_path: str, spec: SplitSpec, trunk: RemoteTrunk
) -> dict[str, str]:
    """The metadata that marks a saved adapter's trunk part as an export of a shared trunk adapter
    and the steps it held (`splitft.federated.shared_trunk`); {} for a session's own adapter."""
    if not trunk.shared_adapter:
        return {}
    trunk_keys = split_adapter(state, blocks_path, spec)[1]
    return trunk_marks(list(trunk_keys), trunk.exported_steps, trunk.shared_adapter)


def check_same_lora(saved: dict, live: object) -> None:
    """The saved adapter's rank, alpha and target modules are the live adapter's (else its tensors
    would load into a differently scaled or shaped adapter)."""
    for field in ("r", "lora_alpha"):
        if field in saved and saved[field] != getattr(live, field, saved[field]):
            raise InvalidArgument(
                f"the adapter's {field} is {saved[field]}, this model's is {getattr(live, field)}"
            )
    targets = saved.get("target_modules")
    live_targets = getattr(live, "target_modules", None)
    if targets is not None and live_targets is not None and set(targets) != set(live_targets):
        raise InvalidArgument(f"the adapter targets {sorted(targets)}, this model {sorted(live_targets)}")


def load_whole_adapter(
    peft_model: PeftModel,
    trunk: RemoteTrunk,
    source: str | Path | Mapping[str, torch.Tensor],
    blocks_path: str,
    spec: SplitSpec,
) -> None:
    """`SplitModel.load_adapter`: the device's keys of `source` (a directory `save_adapter` wrote, or
    its state dict) into `peft_model`, the trunk's to the edge, every key checked first."""
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state, saved_config = read_adapter(source)
        check_same_lora(saved_config, peft_model.peft_config["default"])
    device_state, trunk_state = split_adapter(state, blocks_path, spec)
    if trunk_state and not trunk.trainable:
        raise InvalidArgument("the adapter has trunk keys but this session trains no trunk adapter")
    what = "device's adapter"  # checked before the edge loads, so a refusal changes neither side
    check_adapter_state(device_state, get_peft_model_state_dict(peft_model), what=what)
    if trunk.trainable:
        trunk.load_adapter(trunk_state)
    load_adapter_state(peft_model, device_state, what=what)


def save_peft_adapter(
    peft_model: PeftModel,
    state: Mapping[str, torch.Tensor],
    model_dir: str | Path,
    out: Path,
    marks: Mapping[str, str] | None = None,
) -> Path:
    """`SplitModel.save_adapter` for LoRA: the whole model's `state` as ONE standard peft adapter
    (adapter_config.json + adapter_model.safetensors) in `out`; `marks`: extra safetensors metadata
    (`shared_marks`)."""
    config = copy.deepcopy(peft_model.peft_config["default"])
    config.base_model_name_or_path = str(model_dir)
    config.inference_mode = True
    config.save_pretrained(str(out))
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt", **(marks or {})})
    logger.info("saved adapter with %d tensors to %s", len(state), out)
    return out


def adapter_lora_config(path: str | Path, given: object) -> LoraConfig:
    """`from_pretrained(adapter=path)`: the LoRA config of the peft adapter in `path` (rank, alpha,
    targets, modules to save), to train on; `given` (a LoraConfig passed as well, or None) must
    agree with it."""
    _, saved = read_adapter(path)
    if saved.get("peft_type", "LORA") != "LORA":
        raise InvalidArgument(f"{path} holds a {saved.get('peft_type')} adapter; split models train LoRA")
    if given is not None:
        if not isinstance(given, LoraConfig):
            raise InvalidArgument(
                "adapter= continues a LoRA adapter; it does not combine with a selection method"
            )
        check_same_lora(saved, given)
        return given
    try:
        config = LoraConfig.from_pretrained(str(path))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"cannot read the LoRA config in {path}: {exc}") from None
    config.inference_mode = False  # it trains on from here
    return config


def join_adapter_states(
    device: Mapping[str, torch.Tensor],
    trunk_state: dict[str, torch.Tensor],
    root: torch.nn.Module,
    blocks_path: str,
    spec: SplitSpec,
) -> dict[str, torch.Tensor]:
    """`SplitModel.adapter_state_dict`: the device's adapter (copied to the CPU) and the trunk's
    export, checked to cover the trunk's blocks and not to overlap."""
    device_state = {k: v.detach().to("cpu", copy=True) for k, v in device.items()}
    check_trunk_adapter(trunk_state, device_state, root=root, blocks_path=blocks_path, spec=spec)
    overlap = set(device_state) & set(trunk_state)
    if overlap:
        raise FailedPrecondition(f"device and trunk adapters overlap on {sorted(overlap)[:3]}")
    return {**device_state, **trunk_state}
