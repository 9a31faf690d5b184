"""The device's local training data: labelled texts from a JSONL file or a Python sequence.

The data never leaves the device, so errors here name a line or an index and a field, never the
text itself: they may end up in logs or in a failure reason sent to the control plane.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitft.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)

Batch = tuple[list[str], list[int]]  # (texts, labels), the shape a tokenizer and a loss want


@dataclass(frozen=True)
class TextExample:
    """One labelled text; `label` is a class index in [0, num_labels)."""

    text: str
    label: int

    def __post_init__(self) -> None:
        problem = _example_problem(self.text, self.label)
        if problem:
            raise InvalidArgument(problem)


def _example_problem(text: Any, label: Any) -> str | None:
    """What is wrong with a (text, label) pair, worded without quoting the text; None if fine."""
    if not isinstance(text, str):
        return f'"text" must be a string, got {type(text).__name__}'
    if not text.strip():
        return '"text" is empty'
    if isinstance(label, bool) or not isinstance(label, int):
        return f'"label" must be an integer class index, got {type(label).__name__}'
    if label < 0:
        return f'"label" must be >= 0, got {label}'
    return None


def load_jsonl(path: str | Path) -> list[TextExample]:
    """Read one JSON object per line, {"text": str, "label": int}; blank lines are skipped.

    Every error names the file and the 1-based line, so a bad line in a large file is easy to fix.
    """
    source = Path(path)
    if not source.is_file():
        raise NotFound(f"no data file at {source}")
    examples: list[TextExample] = []
    with source.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            example = _parse_line(raw, f"{source}:{number}")
            if example is not None:
                examples.append(example)
    if not examples:
        raise InvalidArgument(f"{source} holds no examples")
    logger.info("loaded %d examples from %s", len(examples), source)
    return examples


def _parse_line(raw: bytes, where: str) -> TextExample | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{where}: not UTF-8") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise InvalidArgument(f'{where}: expected a JSON object {{"text": ..., "label": ...}}')
    for name in ("text", "label"):
        if name not in record:
            raise InvalidArgument(f'{where}: missing "{name}"')
    problem = _example_problem(record["text"], record["label"])
    if problem:
        raise InvalidArgument(f"{where}: {problem}")
    return TextExample(record["text"], record["label"])


def as_examples(data: str | Path | Sequence[Any]) -> list[TextExample]:
    """Accept what the SDK and the CLI hand the agent: a JSONL path, or a sequence of examples.

    Items may be `TextExample`s, any object with `.text` and `.label` (such as
    `splitft.data.stdlib_task.Example`), mappings with those keys, or `(text, label)` pairs.
    """
    if isinstance(data, (str, Path)):
        return load_jsonl(data)
    if not isinstance(data, Sequence):
        raise InvalidArgument(
            f"data must be a JSONL path or a sequence of examples, got {type(data).__name__}"
        )
    examples = [_coerce(item, index) for index, item in enumerate(data)]
    if not examples:
        raise InvalidArgument("the dataset is empty")
    return examples


def _coerce(item: Any, index: int) -> TextExample:
    if isinstance(item, TextExample):
        return item
    text: Any
    label: Any
    if isinstance(item, Mapping):
        text, label = item.get("text"), item.get("label")
    elif isinstance(item, tuple) and len(item) == 2:
        text, label = item
    else:
        text, label = getattr(item, "text", None), getattr(item, "label", None)
    problem = _example_problem(text, label)
    if problem:
        raise InvalidArgument(f"example {index}: {problem}")
    return TextExample(text, label)


def _epoch_seed(seed: int, epoch: int) -> int:
    """An independent, platform-stable shuffle seed per (seed, epoch)."""
    digest = hashlib.sha256(f"splitft-batches:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def epoch_batches(
    examples: Sequence[TextExample], batch_size: int, *, seed: int, epoch: int
) -> Iterator[Batch]:
    """One pass over `examples` in an order fixed by (seed, epoch); the last batch may be smaller."""
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(examples)))
    random.Random(_epoch_seed(seed, epoch)).shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        yield [e.text for e in chunk], [e.label for e in chunk]


def training_batches(
    examples: Sequence[TextExample], batch_size: int, *, seed: int, epochs: int | None = None
) -> Iterator[Batch]:
    """`epochs` shuffled passes, or endless passes when None (a step budget then stops the caller)."""
    if not examples:
        raise InvalidArgument("cannot batch an empty dataset")
    epoch = 0
    while epochs is None or epoch < epochs:
        yield from epoch_batches(examples, batch_size, seed=seed, epoch=epoch)
        epoch += 1


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last, smaller batch counts)."""
    return -(-num_examples // batch_size)
