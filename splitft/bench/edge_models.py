"""The models `splitft bench edge` serves: small enough for a 2-core CPU, big enough that the trunk's
matrix products, not Python, are most of a step.

`llama` has no dropout; `bert` has dropout 0.1 in its attention and hidden layers, so every training
forward on the edge draws dropout masks from its session's own random stream. Both are cut the same
way: 1 block on the device before the trunk, 1 after, 6 trunk blocks on the edge.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import NUM_LABELS, lora_config_for

DEVICE_LAYERS = 1  # blocks before the trunk, on the (synthetic) device
HEAD_LAYERS = 1  # blocks after the trunk


@dataclass(frozen=True)
class EdgeBenchModel:
    """A model built from a config (random weights: speed does not depend on them)."""

    family: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    dropout: float

    def build(self) -> PreTrainedModel:
        """The model, randomly initialised with a fixed seed."""
        torch.manual_seed(0)
        if self.family == "llama":
            return LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=128,
                    hidden_size=self.hidden,
                    intermediate_size=self.intermediate,
                    num_hidden_layers=self.layers,
                    num_attention_heads=self.heads,
                    num_key_value_heads=self.heads // 2,
                    max_position_embeddings=512,
                    attention_dropout=self.dropout,
                )
            )
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=128,
                hidden_size=self.hidden,
                num_hidden_layers=self.layers,
                num_attention_heads=self.heads,
                intermediate_size=self.intermediate,
                max_position_embeddings=512,
                hidden_dropout_prob=self.dropout,
                attention_probs_dropout_prob=self.dropout,
                num_labels=NUM_LABELS,  # type: ignore[call-arg]  # PretrainedConfig kwarg
            )
        )


BENCH_MODELS: dict[str, EdgeBenchModel] = {
    "llama": EdgeBenchModel("llama", layers=8, hidden=256, intermediate=768, heads=4, dropout=0.0),
    "bert": EdgeBenchModel("bert", layers=8, hidden=256, intermediate=1024, heads=4, dropout=0.1),
}


def save_bench_model(name: str, directory: Path) -> Path:
    """Build model `name` and `save_pretrained` it to `directory`."""
    BENCH_MODELS[name].build().save_pretrained(str(directory))
    return directory


@functools.cache
def model_info(name: str) -> dict[str, Any]:
    """The model's sizes for the report, and what a synthetic device sends in `OpenSession`."""
    spec = BENCH_MODELS[name]
    model = spec.build()
    blocks = spec.layers - DEVICE_LAYERS - HEAD_LAYERS
    return {
        **asdict(spec),
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device_layers": DEVICE_LAYERS,
        "head_layers": HEAD_LAYERS,
        "trunk_blocks": blocks,
        "lora_config_json": trunk_lora_json(lora_config_for(spec.family)),
    }
