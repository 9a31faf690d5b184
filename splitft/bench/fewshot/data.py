"""`bench fewshot` data: stdlib docstrings by package, split into the backbone's classes and the
held-out classes episodes are drawn from; bytes as tokens.

One `build_stdlib_task` over all the packages drops every docstring found under two of them, so no
text of an episode class was ever seen by the backbone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from splitft.data.byte_rows import pad_rows
from splitft.data.stdlib_task import build_stdlib_task

# The backbone is pretrained to tell these apart (each yields 110-180 docstrings in CPython 3.11).
BACKBONE_PACKAGES = ("asyncio", "email", "logging", "xml", "unittest", "multiprocessing")
# Episodes come from these, never seen in pretraining (each yields 45-105 docstrings).
EPISODE_PACKAGES = ("http", "urllib", "importlib", "collections", "xmlrpc", "wsgiref")
PAD_ID = 0  # no docstring holds a NUL byte
CLS_ID = 1  # a start byte BERT's pooler reads (SOH never occurs in a docstring)
MAX_BYTE_ID = 127  # the vocabulary is 128: every non-ASCII byte becomes 127
MAX_PER_CLASS = 400
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FewshotData:
    """The backbone's train / held-out examples (label: index in BACKBONE_PACKAGES) and, per episode
    class, every one of its texts."""

    backbone_train: list[tuple[str, int]]
    backbone_heldout: list[tuple[str, int]]
    episode_pool: dict[str, list[str]]


def load_data(heldout_fraction: float = 0.2) -> FewshotData:
    """The docstrings of this Python's stdlib, split as the module docstring says."""
    packages = BACKBONE_PACKAGES + EPISODE_PACKAGES
    task = build_stdlib_task(packages, max_per_class=MAX_PER_CLASS, heldout_fraction=heldout_fraction)
    backbone = len(BACKBONE_PACKAGES)
    pool: dict[str, list[str]] = {name: [] for name in EPISODE_PACKAGES}
    for example in (*task.train, *task.heldout):
        if example.label >= backbone:
            pool[packages[example.label]].append(example.text)
    return FewshotData(
        backbone_train=[(e.text, e.label) for e in task.train if e.label < backbone],
        backbone_heldout=[(e.text, e.label) for e in task.heldout if e.label < backbone],
        episode_pool={name: sorted(texts) for name, texts in pool.items()},
    )


def encode(texts: list[str], labels: list[int], max_length: int) -> Batch:
    """A BERT batch: CLS_ID then one token per byte (at most `max_length` in all), padded."""
    rows = [[CLS_ID] + [min(b, MAX_BYTE_ID) for b in text.encode()[: max_length - 1]] for text in texts]
    ids, mask = pad_rows(rows, PAD_ID)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor(labels, dtype=torch.long)}


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task: its classes, a support batch (N*K) and a query batch (N*Q)."""

    classes: tuple[str, ...]
    support: Batch
    query: Batch


def sample_episode(
    pool: dict[str, list[str]], ways: int, shots: int, queries: int, max_length: int, rng: random.Random
) -> Episode:
    """`ways` classes of the pool, `shots` support and `queries` query texts of each, disjoint."""
    classes = tuple(sorted(rng.sample(sorted(pool), ways)))
    support: tuple[list[str], list[int]] = ([], [])
    query: tuple[list[str], list[int]] = ([], [])
    for label, name in enumerate(classes):
        texts = rng.sample(pool[name], shots + queries)
        support[0].extend(texts[:shots])
        support[1].extend([label] * shots)
        query[0].extend(texts[shots:])
        query[1].extend([label] * queries)
    return Episode(classes, encode(*support, max_length), encode(*query, max_length))
