"""Non-IID splits of a labelled data set across devices, so that cooperation between them matters.

Two standard schemes, both seeded (the same arguments give the same split on every run and
platform: only ``random.Random`` is used) and both giving every device at least one example:

* ``dirichlet_shards``: for each class, the share of each device is drawn from Dirichlet(alpha, ...,
  alpha) (Hsu, Qi, Brown 2019). Small alpha (0.1) gives each device a few dominant classes, large
  alpha (100) nearly the IID mix.
* ``class_shards``: the pathological split of McMahan et al. (2017): examples sorted by label, cut
  into ``devices * shards_per_device`` contiguous shards of equal size (to one example), and each
  device dealt ``shards_per_device`` of them at random, so it sees about that many classes.

Both return, for each device, the sorted indices of its examples in ``labels``.
"""

from __future__ import annotations

import math
import operator
import random
from collections import Counter
from collections.abc import Sequence

from splitft.errors import InvalidArgument


def dirichlet_shards(labels: Sequence[int], devices: int, alpha: float, seed: int) -> list[list[int]]:
    """Split ``range(len(labels))`` across ``devices`` with Dirichlet(alpha) class shares.

    Per class (in sorted label order) its indices are shuffled, shares q ~ Dir(alpha) are drawn, and
    the class is cut into counts that sum exactly to its size (largest remainders). Non-empty
    guarantee: a device left with nothing then takes one example from the largest shard (the lowest
    device index among equals), an example of that shard's most common class, until none is empty;
    a shard that gives always has two or more, since there are at least as many examples as devices.
    Raises InvalidArgument for fewer examples than devices, alpha <= 0, or bad labels.
    """
    label_list = _check(labels, devices, seed, needed=devices)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < alpha < math.inf):
        raise InvalidArgument(f"alpha must be a positive finite number, got {alpha!r}")
    rng = random.Random(seed)
    shards: list[list[int]] = [[] for _ in range(devices)]
    for label in sorted(set(label_list)):
        members = [i for i, value in enumerate(label_list) if value == label]
        rng.shuffle(members)
        start = 0
        for device, count in enumerate(_apportion(len(members), _dirichlet(rng, alpha, devices))):
            shards[device].extend(members[start : start + count])
            start += count
    _fill_empty(shards, label_list)
    return [sorted(shard) for shard in shards]


def class_shards(
    labels: Sequence[int], devices: int, *, shards_per_device: int = 2, seed: int = 0
) -> list[list[int]]:
    """McMahan et al.'s split: label-sorted shards, ``shards_per_device`` of them dealt to each device.

    Within a class the order is shuffled first, so which examples of a class land in which shard
    depends on ``seed`` too. Every device is non-empty because every shard is: there must be at
    least ``devices * shards_per_device`` examples (InvalidArgument otherwise).
    """
    if isinstance(shards_per_device, bool) or not isinstance(shards_per_device, int) or shards_per_device < 1:
        raise InvalidArgument(f"shards_per_device must be an integer >= 1, got {shards_per_device!r}")
    label_list = _check(labels, devices, seed, needed=devices * shards_per_device)
    rng = random.Random(seed)
    order = list(range(len(label_list)))
    rng.shuffle(order)
    order.sort(key=lambda i: label_list[i])  # stable: shuffled within each class
    count = devices * shards_per_device
    bounds = [len(order) * j // count for j in range(count + 1)]
    pieces = [order[bounds[j] : bounds[j + 1]] for j in range(count)]
    dealt = list(range(count))
    rng.shuffle(dealt)
    return [
        sorted(i for j in dealt[d * shards_per_device : (d + 1) * shards_per_device] for i in pieces[j])
        for d in range(devices)
    ]


def shard_histogram(labels: Sequence[int], shards: Sequence[Sequence[int]]) -> list[dict[int, int]]:
    """Examples per label on each device (labels with none left out), to report how skewed a split is."""
    return [dict(sorted(Counter(labels[i] for i in shard).items())) for shard in shards]


def _check(labels: Sequence[int], devices: int, seed: int, *, needed: int) -> list[int]:
    """Labels as ints, after checking the arguments shared by both splits."""
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise InvalidArgument(f"devices must be an integer >= 1, got {devices!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument(f"seed must be an integer, got {seed!r}")
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise InvalidArgument(
            f"labels must be a sequence of integer class labels, got {type(labels).__name__}"
        )
    values = []
    for index, label in enumerate(labels):
        try:
            if isinstance(label, bool):
                raise TypeError
            values.append(operator.index(label))
        except TypeError:
            raise InvalidArgument(f"labels[{index}] must be an integer class label, got {label!r}") from None
    if len(values) < needed:
        raise InvalidArgument(
            f"{len(values)} examples cannot give {needed} non-empty shards; need at least {needed}"
        )
    return values


def _dirichlet(rng: random.Random, alpha: float, size: int) -> list[float]:
    """One draw of Dir(alpha, ..., alpha) from normalized Gamma(alpha, 1) variates."""
    draws = [rng.gammavariate(alpha, 1.0) for _ in range(size)]
    total = sum(draws)
    if total <= 0:  # every variate underflowed (tiny alpha): the limit alpha -> 0 is one device
        chosen = rng.randrange(size)
        return [1.0 if k == chosen else 0.0 for k in range(size)]
    return [d / total for d in draws]


def _apportion(total: int, shares: list[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``shares`` (largest remainders first)."""
    exact = [total * share for share in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def _fill_empty(shards: list[list[int]], labels: list[int]) -> None:
    """Give each empty shard one example from the largest shard (its most common class's last one)."""
    for device in range(len(shards)):
        if shards[device]:
            continue
        donor = max(range(len(shards)), key=lambda k: (len(shards[k]), -k))
        common = Counter(labels[i] for i in shards[donor]).most_common(1)[0][0]
        position = max(p for p, i in enumerate(shards[donor]) if labels[i] == common)
        shards[device].append(shards[donor].pop(position))
