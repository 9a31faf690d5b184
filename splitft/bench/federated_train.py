"""`bench federated`'s moving parts: the demo task's batches per device, one device's local training
through the SDK (build a split model, load the starting adapter, train, save), adapters as NumPy
state dicts, and the held-out accuracy of an adapter on the whole model with plain peft."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from transformers import AutoTokenizer, BertForSequenceClassification

from device_client import EdgeConnection, SplitModel
from device_client.optim import lr_factor
from splitft.data.stdlib_task import Example, batches

EDGE_MODEL = "minilm"
WEIGHTS = "adapter_model.safetensors"
Batch = dict[str, torch.Tensor]
State = dict[str, np.ndarray]


def lora_config() -> LoraConfig:
    """The demo's LoRA: r=8 on attention and dense layers, both sides of the split."""
    return LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"
    )


@dataclass
class LocalRun:
    """What one device's local training of one round (or one whole run) gave."""

    adapter: Path  # the adapter it saved (save_adapter), to upload
    adapter_bytes: int  # that adapter's weights file: the bytes a device uploads
    wire_bytes: int  # SplitModel.stats bytes sent + received while training
    last_loss: float
    mean_loss: float  # over its steps: a steadier training curve than one batch's loss
    seconds: float


class Encoder:
    """Tokenize the demo task's texts the demo's way (padding to the batch, truncation)."""

    def __init__(self, model_dir: Path, max_length: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.max_length = max_length

    def __call__(self, texts: list[str], labels: list[int]) -> Batch:
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": torch.tensor(labels),
        }


def stream(examples: Sequence[Example], batch_size: int, seed: int, encode: Encoder, n: int) -> list[Batch]:
    """The first `n` batches of epochs over `examples`, each epoch shuffled by its own seed: a
    device's training data in order, so that every variant sees the same batches."""

    def epochs() -> Iterator[Batch]:
        epoch = 0
        while True:
            for texts, labels in batches(tuple(examples), batch_size, shuffle_seed=seed * 1000 + epoch):
                yield encode(texts, labels)
            epoch += 1

    return [batch for _, batch in zip(range(n), epochs(), strict=False)]


def centralized_stream(
    examples: Sequence[Example], batch_size: int, seed: int, encode: Encoder, n: int
) -> tuple[list[Batch], int]:
    """The centralized variant's one device (index 99 in the seeds; the others are 0..K-1): its `n`
    batches over all of `examples`, and its device seed (data order, dropout)."""
    device_seed = seed * 100 + 99
    return stream(examples, batch_size, device_seed, encode, n), device_seed


@dataclass(frozen=True)
class Split:
    """Where and how every device's split model is built: the demo's split (k=2 device blocks, j=1
    head block, trunk LoRA) on the bench's one edge process."""

    model_dir: Path
    address: str
    num_labels: int
    lr: float

    def build(self, conn: EdgeConnection, seed: int, shared_trunk: str = "") -> SplitModel:
        """A split model on `conn`; `shared_trunk`: the key of the edge's shared trunk adapter to join."""
        return SplitModel.from_pretrained(
            self.model_dir,
            edge=conn,
            model=EDGE_MODEL,
            device_layers=2,
            head_layers=1,
            trunk_lora=True,
            seed=seed,
            lora_config=lora_config(),
            config_overrides={"num_labels": self.num_labels},
            shared_trunk_adapter=shared_trunk,
        )


def train_local(
    split: Split,
    start: Path,
    data: list[Batch],
    out: Path,
    seed: int,
    shared_trunk: str = "",
    kept: Path | None = None,
    lr_factors: Sequence[float] | None = None,
) -> LocalRun:
    """Build a split model, load `start`, train one step per batch of `data` (AdamW, constant lr,
    clipping at 1.0), save the adapter to `out`. `shared_trunk`: train the edge's shared trunk
    adapter of that key (its saved trunk part is marked with its steps). The optimizer is fresh (as
    a device agent starts each round by default) unless `kept` names the device's own state
    directory: resumed from its checkpoint there, if any, with `start`'s weights (both sides'
    optimizer state carried from the device's last round), and checkpointed there after the steps.
    `lr_factors`: the lr of each step as a multiple of `split.lr` (a schedule over the device's
    steps, `device_client.optim.lr_factor`); None: constant."""
    started = time.perf_counter()
    with (
        EdgeConnection(split.address, insecure=True) as conn,
        _open(split, conn, start, seed, shared_trunk, kept) as model,
    ):
        torch.manual_seed(seed)  # the device side's dropout masks
        optimizer = model.optimizer
        if optimizer is None:
            optimizer = model.configure_optimizer(torch.optim.AdamW, lr=split.lr, weight_decay=0.01)
        model.train()
        losses = [float("nan")]
        for index, batch in enumerate(data):
            if lr_factors is not None:  # reaches the trunk's optimizer too (SplitOptimizer syncs lr)
                optimizer.param_groups[0]["lr"] = split.lr * lr_factors[index]
            output = model(**batch)
            output.loss.backward()
            optimizer.clip_grad_norm_(1.0)  # type: ignore[attr-defined]  # SplitOptimizer
            optimizer.step()
            optimizer.zero_grad()
            losses.append(output.loss.item())
        if kept is not None:
            model.checkpoint(kept)
        stats = model.stats
        model.save_adapter(out)
    return LocalRun(
        adapter=out,
        adapter_bytes=(out / WEIGHTS).stat().st_size,
        wire_bytes=stats.bytes_sent + stats.bytes_received,
        last_loss=losses[-1],
        mean_loss=sum(losses[1:]) / max(1, len(losses) - 1),
        seconds=time.perf_counter() - started,
    )


def schedule_factors(schedule: str, steps: int) -> list[float]:
    """The lr multiplier of each of a device's `steps` optimizer steps under `schedule` (no warm-up),
    the same for every variant over its own steps: a federated device's rounds cut this list."""
    return [lr_factor(schedule, step, 0, steps) for step in range(steps)]


def _open(
    split: Split, conn: EdgeConnection, start: Path, seed: int, shared_trunk: str, kept: Path | None
) -> SplitModel:
    """The round's split model, its weights `start`'s: resumed from `kept`'s checkpoint when there is one."""
    if kept is not None and kept.is_dir() and any(kept.iterdir()):
        return SplitModel.from_checkpoint(kept, edge=conn, adapter=start, restore_rng=False)
    model = split.build(conn, seed, shared_trunk)
    try:
        model.load_adapter(start)
    except BaseException:
        model.close()
        raise
    return model


def initial_adapter(split: Split, out: Path, seed: int) -> Path:
    """The common starting adapter of every variant: a fresh split model's, saved untrained."""
    with EdgeConnection(split.address, insecure=True) as conn:
        torch.manual_seed(seed)  # the device side's LoRA and head initialisation
        with split.build(conn, seed) as model:
            return model.save_adapter(out)


def read_state(adapter: Path) -> State:
    """An adapter's weights as NumPy arrays (what the aggregation reads)."""
    return load_numpy(str(adapter / WEIGHTS))


def write_state(state: State, like: Path, out: Path) -> Path:
    """A peft adapter directory with `state`'s weights and `like`'s config."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text((like / "adapter_config.json").read_text())
    save_numpy({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, str(out / WEIGHTS))
    return out


class Evaluator:
    """Accuracy of an adapter on the whole model in one process (plain peft), as an operator who
    downloaded it would measure: one model, each adapter's weights set in turn. Two sets: `test`
    (the task's held-out split: the reported figures) and `validation` (carved from the training
    data: the per-round curves and any choice; nothing is ever chosen on `test`)."""

    def __init__(
        self,
        split: Split,
        first: Path,
        test: Sequence[Example],
        validation: Sequence[Example],
        encode: Encoder,
    ) -> None:
        base = BertForSequenceClassification.from_pretrained(
            str(split.model_dir), num_labels=split.num_labels
        )
        self.model: Any = PeftModel.from_pretrained(base, str(first)).eval()
        self.sets = {
            name: [encode(texts, labels) for texts, labels in batches(tuple(examples), 64)]
            for name, examples in (("test", test), ("validation", validation))
        }

    @torch.no_grad()
    def accuracy(self, adapter: Path, on: str = "test") -> float:
        """Accuracy on `on`: "test" or "validation" (NaN for an empty set: a sweep that skips test)."""
        set_peft_model_state_dict(self.model, load_torch(str(adapter / WEIGHTS)))
        correct = total = 0
        for batch in self.sets[on]:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
            total += len(batch["labels"])
        return correct / total if total else float("nan")
