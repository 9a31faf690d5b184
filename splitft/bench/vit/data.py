"""`bench vit` data: scikit-learn's bundled digits (1,797 8x8 grey images, no download), split into
the backbone's classes and the held-out tasks' images.

* Pretraining: digits `PRETRAIN_CLASSES` (0-4), every one of their images (a fixed fifth held out to
  report the backbone's own accuracy). The tasks never use them.
* Tasks, on the images of the other digits (5-9), which the backbone never saw, with one fixed
  stratified split for every seed and method (VTAB style: the split is part of the task):
  test `TEST_FRACTION`, then validation `VALIDATION_FRACTION` of the rest, the rest trains
  (under 1,000 images, VTAB-1k's regime):
  * `digits`: which of the 5 unseen digits (new classes: VTAB's "natural" kind);
  * `rotation`: by how much (0, 90, 180 or 270 degrees) an unseen digit was turned, one rotation
    drawn per image (geometry: VTAB's "structured" kind; a 6 turned 180 degrees looks like a 9, so
    this task is not fully separable).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TASK_CLASSES = (5, 6, 7, 8, 9)
TASKS = ("digits", "rotation")
TEST_FRACTION = 1 / 3
VALIDATION_FRACTION = 0.2  # of what the test split leaves
PRETRAIN_HELDOUT_FRACTION = 0.2
SPLIT_SEED = 20_261_130  # the fixed split's shuffle: the same for every seed and method
PIXEL_MAX = 16.0  # digits' pixels are integers 0-16


@dataclass(frozen=True)
class Split:
    """Images `[n, 1, 8, 8]` (scaled to [-1, 1]) and labels `[n]`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass(frozen=True)
class TaskData:
    name: str
    num_labels: int
    train: Split
    validation: Split
    test: Split


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as `[n, 1, 8, 8]` floats in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    return images / PIXEL_MAX * 2.0 - 1.0, torch.tensor(digits.target, dtype=torch.long)


def _stratified(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices split per class: about `fraction` of each class in the second list, shuffled by `seed`."""
    rng = random.Random(seed)
    rest: list[int] = []
    held: list[int] = []
    for label in sorted(set(labels.tolist())):
        members = [i for i, y in enumerate(labels.tolist()) if y == label]
        rng.shuffle(members)
        count = round(len(members) * fraction)
        held.extend(members[:count])
        rest.extend(members[count:])
    return sorted(rest), sorted(held)


def _subset(images: torch.Tensor, labels: torch.Tensor, indices: list[int]) -> Split:
    index = torch.tensor(indices, dtype=torch.long)
    return Split(images[index], labels[index])


def pretraining_data() -> tuple[Split, Split]:
    """The backbone's (train, held-out) images of `PRETRAIN_CLASSES`, labels 0..4."""
    images, labels = load_digits_tensors()
    keep = torch.isin(labels, torch.tensor(PRETRAIN_CLASSES))
    images, labels = images[keep], labels[keep]
    train, heldout = _stratified(labels, PRETRAIN_HELDOUT_FRACTION, SPLIT_SEED)
    return _subset(images, labels, train), _subset(images, labels, heldout)


def _rotated(split: Split, seed: int) -> Split:
    """Each image turned by a drawn multiple of 90 degrees; the label is that multiple (0-3)."""
    generator = torch.Generator().manual_seed(seed)
    turns = torch.randint(0, 4, (len(split),), generator=generator)
    images = torch.stack(
        [torch.rot90(img, int(k), dims=(1, 2)) for img, k in zip(split.images, turns, strict=True)]
    )
    return Split(images, turns)


def task_data(name: str) -> TaskData:
    """One held-out task on the unseen digits, with its fixed train / validation / test split."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {TASKS}")
    images, labels = load_digits_tensors()
    keep = torch.isin(labels, torch.tensor(TASK_CLASSES))
    images, labels = images[keep], labels[keep] - min(TASK_CLASSES)
    rest, test = _stratified(labels, TEST_FRACTION, SPLIT_SEED)
    rest_labels = labels[torch.tensor(rest)]
    train_pos, validation_pos = _stratified(rest_labels, VALIDATION_FRACTION, SPLIT_SEED + 1)
    splits = [
        _subset(images, labels, [rest[i] for i in train_pos]),
        _subset(images, labels, [rest[i] for i in validation_pos]),
        _subset(images, labels, test),
    ]
    if name == "rotation":
        splits = [_rotated(s, SPLIT_SEED + 2 + i) for i, s in enumerate(splits)]
        return TaskData(name, 4, *splits)
    return TaskData(name, len(TASK_CLASSES), *splits)
