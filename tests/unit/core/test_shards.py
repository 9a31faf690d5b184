"""Non-IID splits across devices (splitft.data.shards): partitions, skew by alpha, seeds, refusals."""

from __future__ import annotations

import pytest

from splitft.data.shards import class_shards, dirichlet_shards, shard_histogram
from splitft.data.stdlib_task import build_stdlib_task
from splitft.errors import InvalidArgument

LABELS = [c for c in range(4) for _ in range(100)]  # 4 classes of 100


def _is_partition(shards: list[list[int]], size: int) -> bool:
    flat = [i for shard in shards for i in shard]
    return sorted(flat) == list(range(size)) and all(shard == sorted(shard) for shard in shards)


def _top_share(labels: list[int], shards: list[list[int]]) -> float:
    """Mean over devices of the share of their most common class (1.0: one class each)."""
    shares = [max(h.values()) / sum(h.values()) for h in shard_histogram(labels, shards)]
    return sum(shares) / len(shares)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_dirichlet_is_a_partition_with_no_empty_device(alpha: float) -> None:
    for seed in range(20):
        shards = dirichlet_shards(LABELS, 6, alpha, seed)
        assert len(shards) == 6 and _is_partition(shards, len(LABELS))
        assert all(shards), (alpha, seed, [len(s) for s in shards])


def test_small_alpha_skews_and_large_alpha_mixes() -> None:
    skewed = [_top_share(LABELS, dirichlet_shards(LABELS, 4, 0.1, s)) for s in range(10)]
    mixed = [_top_share(LABELS, dirichlet_shards(LABELS, 4, 100.0, s)) for s in range(10)]
    assert sum(skewed) / 10 > 0.7 and sum(mixed) / 10 < 0.35


def test_empty_devices_are_filled_from_the_largest_shard() -> None:
    # 3 examples for 3 devices: Dirichlet(0.01) gives nearly everything to one device, yet each gets one.
    for seed in range(30):
        shards = dirichlet_shards([0, 0, 1], 3, 0.01, seed)
        assert sorted(len(s) for s in shards) == [1, 1, 1]


def test_splits_are_deterministic_by_seed() -> None:
    assert dirichlet_shards(LABELS, 4, 0.5, 3) == dirichlet_shards(LABELS, 4, 0.5, 3)
    assert dirichlet_shards(LABELS, 4, 0.5, 3) != dirichlet_shards(LABELS, 4, 0.5, 4)
    assert class_shards(LABELS, 4, seed=3) == class_shards(LABELS, 4, seed=3)
    assert class_shards(LABELS, 4, seed=3) != class_shards(LABELS, 4, seed=4)


def test_class_shards_give_each_device_few_classes() -> None:
    for seed in range(10):
        shards = class_shards(LABELS, 4, shards_per_device=1, seed=seed)
        assert _is_partition(shards, len(LABELS))
        assert [len(h) for h in shard_histogram(LABELS, shards)] == [1, 1, 1, 1]  # 100-example shards
        shards = class_shards(LABELS, 4, shards_per_device=2, seed=seed)
        assert all(1 <= len(h) <= 2 for h in shard_histogram(LABELS, shards))
        assert sorted(len(s) for s in shards) == [100] * 4


def test_the_demo_task_splits() -> None:
    task = build_stdlib_task()
    labels = [example.label for example in task.train]
    shards = dirichlet_shards(labels, 4, 0.5, 0)
    assert _is_partition(shards, len(labels)) and all(shards)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dirichlet_shards(LABELS, 0, 0.5, 0), "devices must be an integer >= 1, got 0"),
        (lambda: dirichlet_shards(LABELS, 4, 0.0, 0), "alpha must be a positive finite number, got 0.0"),
        (lambda: dirichlet_shards(LABELS, 4, float("inf"), 0), "alpha must be a positive finite number"),
        (lambda: dirichlet_shards([0, 1], 3, 0.5, 0), "2 examples cannot give 3 non-empty shards"),
        (
            lambda: dirichlet_shards([0, "a"], 1, 0.5, 0),
            r"labels\[1\] must be an integer class label, got 'a'",
        ),
        (lambda: dirichlet_shards([0, True], 1, 0.5, 0), r"labels\[1\] must be an integer class label"),
        (lambda: dirichlet_shards("01", 1, 0.5, 0), "labels must be a sequence of integer class labels"),
        (lambda: dirichlet_shards(LABELS, 2, 0.5, None), "seed must be an integer, got None"),
        (lambda: class_shards(LABELS[:7], 4), "7 examples cannot give 8 non-empty shards"),
        (lambda: class_shards(LABELS, 4, shards_per_device=0), "shards_per_device must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_refused(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=message):
        call()
