"""OffsiteModel: the device's adapters trained against an emulator, in this process, with no edge.

Offsite-Tuning (DEFT's emulator): the device holds an emulator of the whole model (its own
embeddings, device blocks, head blocks and head, plus a layer-dropped trunk; `splitft emulator
build`) and trains the same LoRA it would train split, on the same modules, with the emulator's
trunk frozen. `save_adapter` then writes a standard peft adapter for the FULL model: the head
blocks renumbered to the full model's indices, the emulator's trunk adapter (if one trained) left
out. It loads with plain peft into the full model, or into a split model with
`SplitModel.load_adapter` (`trunk_lora=False`). Nothing here opens a socket.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from device_client.model import SplitStats
from device_client.opening import save_new_modules
from device_client.optim import SplitOptimizer, make_split_optimizer
from splitft.emulator.layout import EmulatorLayout
from splitft.emulator.plugin import plugin_config, plugin_state, relative_targets, trunk_module_names
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.model.loading import MODEL_CONSTRUCTION_LOCK, LoadedSpan, load_span
from splitft.model.placement import Placement

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class OffsiteModel(nn.Module):
    """A LoRA model on an emulator: the device's adapters train here, the trunk is the emulator's."""

    def __init__(
        self, span: LoadedSpan, peft_model: PeftModel, layout: EmulatorLayout, base_model: str
    ) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.layout = layout
        self.config = span.config
        self.family = span.family
        self.emulator_dir = span.model_dir
        self.base_model_dir = base_model  # the full model the plug-in adapter is for
        self.new_parameters = span.new_parameters
        self._optimizer: SplitOptimizer | None = None
        self._forwards = 0
        self.resumed = None  # offsite sessions have no checkpoints to resume from (a split model's field)

    @classmethod
    def from_emulator(
        cls,
        emulator_dir: str | Path,
        *,
        lora_config: LoraConfig,
        trunk_lora: bool = False,
        config_overrides: dict[str, Any] | None = None,
        base_model_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> OffsiteModel:
        """Load the emulator `splitft emulator build` wrote and attach `lora_config` to the device's
        blocks and head (the modules a split model with the same config trains on the device).

        `trunk_lora=True` also trains LoRA on the emulator's trunk (never carried to the full model).
        `config_overrides`: config fields such as `num_labels` for a new head. `base_model_dir`: the
        full model the adapter is for (default: the emulator's source directory)."""
        if not isinstance(lora_config, LoraConfig):
            raise InvalidArgument(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}")
        if isinstance(lora_config.exclude_modules, str):
            raise InvalidArgument("exclude_modules must be a list of module names, not a regex string")
        layout = EmulatorLayout.load(emulator_dir)
        placement = Placement(device, dtype).resolve()
        span = load_span(
            emulator_dir,
            lambda _root, _family: None,
            init_missing=True,
            placement=placement,
            config_overrides=dict(config_overrides or {}),
        )
        config = save_new_modules(copy.deepcopy(lora_config), span.new_parameters)
        config.base_model_name_or_path = str(emulator_dir)
        if not trunk_lora:
            config.exclude_modules = _without_trunk(span, config, layout)
        try:
            with MODEL_CONSTRUCTION_LOCK:
                peft_model = get_peft_model(span.root, config)
        except ValueError as exc:
            raise InvalidArgument(f"LoRA config does not fit the emulator: {exc}") from exc
        base = str(base_model_dir) if base_model_dir is not None else layout.source_model_dir
        logger.info(
            "offsite model on %s (trunk blocks %s of %d kept)", emulator_dir, layout.kept, layout.num_layers
        )
        return cls(span, peft_model, layout, base)

    def forward(self, **inputs: Any) -> Any:
        """Same inputs and outputs as the Hugging Face class (e.g. loss and logits)."""
        if "input_ids" in inputs or "inputs_embeds" in inputs:
            inputs.setdefault("use_cache", False)
        self._forwards += 1
        return self.peft_model(**inputs)

    def configure_optimizer(
        self, optimizer_cls: type[torch.optim.Optimizer], **hparams: Any
    ) -> SplitOptimizer:
        """A torch optimizer (of `optimizer_cls`) over the trainable adapter, with `clip_grad_norm_`
        as on a split model."""
        params = [p for p in self.parameters() if p.requires_grad]
        self._optimizer = make_split_optimizer(optimizer_cls, params, None, **hparams)
        return self._optimizer

    @property
    def optimizer(self) -> SplitOptimizer | None:
        return self._optimizer

    @property
    def stats(self) -> SplitStats:
        """No bytes cross any network; steps and forwards as a split model counts them."""
        steps = self._optimizer.steps_taken if self._optimizer is not None else 0
        return SplitStats(0, 0, steps, self._forwards)

    def trainable_parameters(self) -> dict[str, int]:
        blocks_path = self.family.blocks_path
        trunk = {
            f"{blocks_path}.{i}."
            for i in range(self.layout.device_layers, self.layout.device_layers + self.layout.keep)
        }
        names = [
            (n, p.numel()) for n, p in self.peft_model.get_base_model().named_parameters() if p.requires_grad
        ]
        in_trunk = sum(c for n, c in names if any(t in n for t in trunk))
        return {"device": sum(c for _, c in names) - in_trunk, "emulator_trunk": in_trunk}

    def emulator_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter as trained, in the emulator's numbering (trunk adapter included)."""
        state = get_peft_model_state_dict(self.peft_model)
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The plug-in adapter: the full model's block indices, no trunk tensors."""
        return plugin_state(self.emulator_state_dict(), self.layout, self.family.blocks_path)

    def save_adapter(self, path: str | Path) -> Path:
        """Write the plug-in adapter for the full model (adapter_config.json + safetensors)."""
        if not self.base_model_dir:
            raise FailedPrecondition("the emulator names no source model; pass base_model_dir")
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        live = self.peft_model.peft_config["default"]
        assert isinstance(live, LoraConfig)  # from_emulator attached a LoraConfig
        targeted = relative_targets(self.peft_model.targeted_module_names, self.family.blocks_path)
        config = plugin_config(live, self.layout, self.family.blocks_path, targeted, self.base_model_dir)
        config.save_pretrained(str(out))
        tensors = {k: v.contiguous() for k, v in self.adapter_state_dict().items()}
        save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        logger.info(
            "saved the plug-in adapter (%d tensors) for %s to %s", len(tensors), self.base_model_dir, out
        )
        return out

    def close(self) -> None:
        """Nothing to release (no session); for the same `with` use as a split model."""

    def __enter__(self) -> OffsiteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _without_trunk(span: LoadedSpan, config: LoraConfig, layout: EmulatorLayout) -> list[str] | None:
    """`config.exclude_modules` plus every emulator trunk module the targets would wrap."""
    from peft.tuners.tuners_utils import check_target_module_exists

    names = [
        name for name, _ in span.root.named_modules() if name and check_target_module_exists(config, name)
    ]
    targeted = relative_targets(names, span.family.blocks_path)
    trunk = range(layout.device_layers, layout.device_layers + layout.keep)
    exclude = set(config.exclude_modules or []) | set(
        trunk_module_names(targeted, span.family.blocks_path, trunk)
    )
    return sorted(exclude) or None
