"""Model families: how to find the blocks of a Hugging Face model and run a span of them.

A family is one small description, not one code path per model: where the blocks live in the
task model, which task class a config maps to, and how the edge rebuilds the block inputs (masks,
rotary tables) from the attention mask and position ids the device sends.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import Cache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.models.auto import modeling_auto

from splitft.errors import UnsupportedModel

# run_trunk(root, hidden, attention_mask, position_ids, start, stop, cache=None) -> hidden after
# blocks[start:stop]; `cache` (a transformers Cache, causal LMs' generate) keeps the blocks' keys and
# values, and the attention mask then covers the cached tokens too.
TrunkRunner = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Family:
    """How one family of architectures is cut and run."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values served by this family
    class_mapping: str  # name of transformers' auto mapping that picks the task class
    blocks_path: str  # dotted path of the block ModuleList inside the task model
    run_trunk: TrunkRunner
    example_task: str  # what the task model does, for messages and docs

    def blocks(self, root: nn.Module) -> nn.ModuleList:
        """The block list of a task model of this family."""
        return cast(nn.ModuleList, root.get_submodule(self.blocks_path))

    def model_class(self, config: PretrainedConfig) -> type[nn.Module]:
        mapping: dict[str, str] = getattr(modeling_auto, self.class_mapping)
        class_name = mapping.get(config.model_type)
        if class_name is None:
            raise UnsupportedModel(f"no {self.example_task} class for model type {config.model_type!r}")
        module = importlib.import_module("transformers")
        return getattr(module, class_name)


def _run_llama(
    root: nn.Module, hidden, attention_mask, position_ids, start: int, stop: int, cache: Cache | None = None
) -> torch.Tensor:
    # Llama-style decoders take inputs_embeds as the first block's input unchanged, so the base
    # model's own forward (with the other blocks and the final norm skipped) rebuilds exactly the
    # masks (causal or sliding-window, per layer) and rotary tables the whole model would use.
    base = root.get_submodule("model")
    out = base(
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=cache is not None,
    )
    return out.last_hidden_state


def _run_gpt2(
    root: nn.Module, hidden, attention_mask, position_ids, start: int, stop: int, cache: Cache | None = None
) -> torch.Tensor:
    blocks = cast(nn.ModuleList, root.get_submodule("transformer.h"))
    config = _config(root)
    if attention_mask is not None:
        attention_mask = attention_mask.view(hidden.shape[0], -1)
    mask = create_causal_mask(
        config=config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=cache,
        position_ids=position_ids,
    )
    for i in range(start, stop):
        hidden = blocks[i](
            hidden,
            cache,
            mask,
            None,
            encoder_attention_mask=None,
            use_cache=cache is not None,
            position_ids=position_ids,
        )
    return hidden


def _run_bert(
    root: nn.Module, hidden, attention_mask, position_ids, start: int, stop: int, cache=None
) -> torch.Tensor:
    blocks = cast(nn.ModuleList, root.get_submodule("bert.encoder.layer"))
    config = _config(root)
    if config.is_decoder:
        raise UnsupportedModel("BERT-style models are supported as encoders (is_decoder=False) only")
    mask = create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
    for i in range(start, stop):
        hidden = blocks[i](hidden, mask, None, encoder_attention_mask=None, past_key_values=None)
    return hidden


def _run_vit(
    root: nn.Module, hidden, attention_mask, position_ids, start: int, stop: int, cache=None
) -> torch.Tensor:
    blocks = cast(nn.ModuleList, root.get_submodule("vit.layers"))
    mask = create_bidirectional_mask(config=_config(root), inputs_embeds=hidden, attention_mask=None)
    for i in range(start, stop):
        hidden = blocks[i](hidden, mask)
    return hidden


def _config(root: nn.Module) -> PretrainedConfig:
    return cast(PretrainedConfig, root.config)


FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama", "mistral", "qwen2"),
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
        "model.layers",
        _run_llama,
        "causal language modelling",
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
        "transformer.h",
        _run_gpt2,
        "causal language modelling",
    ),
    Family(
        "bert",
        ("bert",),
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
        "bert.encoder.layer",
        _run_bert,
        "sequence classification",
    ),
    Family(
        "vit",
        ("vit",),
        "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
        "vit.layers",
        _run_vit,
        "image classification",
    ),
)


def supported_summary() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.model_types)}: {f.example_task})" for f in FAMILIES)


def family_for(config: PretrainedConfig) -> Family:
    """The family serving `config`, or UnsupportedModel naming what is supported."""
    for family in FAMILIES:
        if config.model_type in family.model_types:
            return family
    raise UnsupportedModel(
        f"model type {config.model_type!r} is not supported; supported families: {supported_summary()}"
    )
