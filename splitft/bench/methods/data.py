"""`bench methods` worker data: training epochs, validation, test and calibration batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer

from splitft.bench.methods.config import MAX_BYTE_ID, PAD_ID, Batch
from splitft.data.byte_rows import pad_rows
from splitft.data.stdlib_task import Example, batches


@dataclass
class Data:
    """One worker's batches: training epochs, validation (every choice is made on it), test (the
    reported figures) and calibration (support) batches, the latter drawn from the training split."""

    train_epochs: list[list[Batch]]
    validation: list[Batch]
    test: list[Batch]
    calibration: list[Batch]


def encode_bytes(texts: list[str], max_length: int) -> Batch:
    """Causal-LM batch of `texts`, one token per byte (at most `max_length`), padded with `PAD_ID`."""
    rows = [[min(b, MAX_BYTE_ID) for b in text.encode()[:max_length]] for text in texts]
    ids, mask = pad_rows(rows, PAD_ID)
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def prepare_data(spec: dict[str, Any]) -> Data:
    """The worker spec's examples as batches: tokenized (classification) or bytes (causal_lm)."""
    train = [Example(t, int(y)) for t, y in spec["data"]["train"]]
    validation = [Example(t, int(y)) for t, y in spec["data"]["validation"]]
    test = [Example(t, int(y)) for t, y in spec["data"]["test"]]
    size, max_length = int(spec["batch_size"]), int(spec["max_length"])
    if spec["task"] == "classification":
        tokenizer = AutoTokenizer.from_pretrained(spec["plan"]["model_dir"], local_files_only=True)

        def encode(texts: list[str], labels: list[int]) -> Batch:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": torch.tensor(labels),
            }

    else:

        def encode(texts: list[str], labels: list[int]) -> Batch:
            return encode_bytes(texts, max_length)

    seed = int(spec["seed"])
    epochs = [
        [encode(t, y) for t, y in batches(train, size, shuffle_seed=seed + epoch)]
        for epoch in range(int(spec["epochs"]))
    ]
    if spec["max_steps"] is not None:
        epochs = _cap_steps(epochs, int(spec["max_steps"]))
    held = [encode(t, y) for t, y in batches(validation, 64)]
    tested = [encode(t, y) for t, y in batches(test, 64)]
    calibration = [encode(t, y) for t, y in batches(train, size, shuffle_seed=seed + 10_000)]
    return Data(epochs, held, tested, calibration[: int(spec["calibration_batches"])])


def _cap_steps(epochs: list[list[Batch]], steps: int) -> list[list[Batch]]:
    out: list[list[Batch]] = []
    for epoch in epochs:
        if steps <= 0:
            break
        out.append(epoch[:steps])
        steps -= len(out[-1])
    return out
