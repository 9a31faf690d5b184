"""Tiny models of every supported family, built from a config and saved like a real checkpoint.

Used by the tests and the benchmark: nothing can be downloaded here, and the same loading code
runs for a tiny saved model as for a real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    ViTConfig,
    ViTForImageClassification,
)

FAMILY_NAMES = ("llama", "gpt2", "bert", "vit")
NUM_LABELS = 3


@dataclass(frozen=True)
class TinyModel:
    family: str
    path: Path
    model_class: type[PreTrainedModel]


def _build(family: str, layers: int, hidden: int, dropout: float = 0.0) -> PreTrainedModel:
    heads = max(2, hidden // 16)
    if family == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=128,
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 2),
                max_position_embeddings=256,
            )
        )
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=128,
                n_embd=hidden,
                n_layer=layers,
                n_head=heads,
                n_positions=256,
                resid_pdrop=dropout,
                embd_pdrop=dropout,
                attn_pdrop=dropout,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    if family == "bert":
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=128,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=2 * hidden,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                num_labels=NUM_LABELS,  # type: ignore[call-arg]  # PretrainedConfig kwarg
            )
        )
    if family == "vit":
        return ViTForImageClassification(
            ViTConfig(
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=2 * hidden,
                image_size=16,
                patch_size=4,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                num_labels=NUM_LABELS,  # type: ignore[call-arg]  # PretrainedConfig kwarg
            )
        )
    raise ValueError(f"unknown family {family!r}; known: {FAMILY_NAMES}")


def save_tiny_model(
    family: str,
    directory: str | Path,
    *,
    layers: int = 4,
    hidden: int = 32,
    seed: int = 0,
    dropout: float = 0.0,
) -> TinyModel:
    """Build a tiny random model of `family` and `save_pretrained` it to `directory`; `dropout` > 0
    gives its blocks `nn.Dropout` modules of that probability (gpt2, bert, vit)."""
    if dropout and family == "llama":
        # Llama applies attention dropout functionally, not as `nn.Dropout` modules, so the edge would
        # not see it as a dropout model (per-session RNG): the dropout families are the other three.
        raise ValueError("a llama tiny model has no dropout modules; use gpt2, bert or vit for dropout")
    torch.manual_seed(seed)
    model = _build(family, layers, hidden, dropout)
    path = Path(directory)
    model.save_pretrained(str(path))
    return TinyModel(family, path, type(model))


def lora_config_for(family: str, r: int = 4) -> LoraConfig:
    """A LoRA config touching attention and MLP projections of `family`."""
    if family == "llama":
        return LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    if family == "gpt2":
        return LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)
    if family == "bert":
        return LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["query", "value", "dense"], task_type="SEQ_CLS"
        )
    if family == "vit":
        return LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "fc2"], modules_to_save=["classifier"]
        )
    raise ValueError(f"unknown family {family!r}")


def make_batch(
    family: str, generator: torch.Generator, batch: int = 4, tokens: int = 12
) -> dict[str, torch.Tensor]:
    """A random batch with padding (text families) in the HF class's input format."""
    if family == "vit":
        return {
            "pixel_values": torch.randn(batch, 3, 16, 16, generator=generator),
            "labels": torch.randint(0, NUM_LABELS, (batch,), generator=generator),
        }
    ids = torch.randint(1, 128, (batch, tokens), generator=generator)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, tokens - 3 :] = 0  # one padded row, so masks matter
    if family == "bert":
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.randint(0, NUM_LABELS, (batch,), generator=generator),
        }
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
