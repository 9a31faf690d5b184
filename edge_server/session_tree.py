"""A session's own view of the shared trunk: module tree, skipped blocks, its LoRA adapter."""

from __future__ import annotations

import re

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from edge_server.batched_trunk import share_modules
from edge_server.limits import DataPlaneLimits, check_adapter_size, lora_parameter_estimate
from splitft.errors import InvalidArgument
from splitft.model.loading import MODEL_CONSTRUCTION_LOCK, LoadedSpan
from splitft.model.randomness import RowStreams, SessionRandomness, seeded
from splitft.model.routing import route_randomness
from splitft.model.spans import Skipped, SplitSpec


def own_tree(
    span: LoadedSpan, spec: SplitSpec, lora_config: LoraConfig | None, seed: int, limits: DataPlaneLimits
) -> tuple[PeftModel | None, nn.Module]:
    """A session's own view of the trunk: a module tree over the served frozen weights, the blocks
    outside its trunk skipped, with its own LoRA adapter when it trains one."""
    root = share_modules(span.root)
    blocks = span.family.blocks(root)
    for i in range(len(blocks)):
        if i not in spec.trunk_range:
            blocks[i] = Skipped(f"block {i}")
    if lora_config is None:
        route_randomness(root)
        return None, root
    check_adapter_size(lora_parameter_estimate(root, lora_config), limits)  # before adapter memory
    peft_model = attach_lora(root, lora_config, seed)
    # Its dropouts (peft's included) draw from the session's streams, before any forward runs on it.
    route_randomness(peft_model.get_base_model())
    return peft_model, peft_model.get_base_model()


def attach_lora(root: nn.Module, config: LoraConfig, seed: int) -> PeftModel:
    """`config`'s LoRA on `root`, its initial weights from the session's `seed`."""
    # The construction lock is accelerate's (loading patches module construction process-wide);
    # the adapter's initial weights come from the session's own generator, not the global RNG.
    with MODEL_CONSTRUCTION_LOCK, SessionRandomness(RowStreams.single(seeded(seed))):
        try:
            return get_peft_model(root, config)
        except (ValueError, TypeError, AttributeError, KeyError, re.error) as exc:
            # peft does not type-check fields such as rank_pattern or a target_modules regex.
            raise InvalidArgument(f"LoRA config does not fit the trunk blocks: {exc}") from exc
