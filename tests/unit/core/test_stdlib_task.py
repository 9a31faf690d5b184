"""Tests of the docstring-classification task built from the running Python's standard library."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import splitft
from splitft.data.stdlib_task import (
    DEFAULT_MAX_PER_CLASS,
    DEFAULT_PACKAGES,
    MAX_TEXT_CHARS,
    MIN_TEXT_CHARS,
    Example,
    TextTask,
    batches,
    build_stdlib_task,
    validation_split,
)

_DIGEST_SCRIPT = """
import hashlib, sys
{pre_imports}
from splitft.data.stdlib_task import build_stdlib_task
task = build_stdlib_task()
sys.stdout.write(hashlib.sha256(repr(task).encode()).hexdigest())
"""


@pytest.fixture(scope="module")
def task() -> TextTask:
    return build_stdlib_task()


def _digest(task: TextTask) -> str:
    return hashlib.sha256(repr(task).encode()).hexdigest()


def _digest_in_subprocess(hash_seed: str, pre_imports: str) -> str:
    package_root = str(Path(splitft.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    script = _DIGEST_SCRIPT.format(pre_imports=pre_imports)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_default_task_shape(task: TextTask) -> None:
    assert task.labels == DEFAULT_PACKAGES
    assert task.num_labels == len(DEFAULT_PACKAGES)
    assert len(task.train) > 3 * len(task.heldout) > 0
    for example in task.train + task.heldout:
        assert isinstance(example, Example)
        assert 0 <= example.label < task.num_labels
        assert MIN_TEXT_CHARS <= len(example.text) <= MAX_TEXT_CHARS
        assert example.text == " ".join(example.text.split())


def test_two_builds_are_equal(task: TextTask) -> None:
    assert build_stdlib_task() == task


def test_build_ignores_hash_seed_and_import_order(task: TextTask) -> None:
    first = _digest_in_subprocess("1", "")
    pre_imports = "import xml.dom.minidom, email.mime.text, logging.handlers, asyncio"
    second = _digest_in_subprocess("987", pre_imports)
    assert first == second == _digest(task)


def test_splits_are_disjoint_and_texts_unique(task: TextTask) -> None:
    train_texts = [example.text for example in task.train]
    heldout_texts = [example.text for example in task.heldout]
    assert len(set(train_texts)) == len(train_texts)
    assert len(set(heldout_texts)) == len(heldout_texts)
    assert not set(train_texts) & set(heldout_texts)


def test_splits_are_sorted(task: TextTask) -> None:
    for split in (task.train, task.heldout):
        assert list(split) == sorted(split, key=lambda example: (example.text, example.label))


def test_every_class_in_both_splits_and_balanced(task: TextTask) -> None:
    train_counts = Counter(example.label for example in task.train)
    heldout_counts = Counter(example.label for example in task.heldout)
    for label in range(task.num_labels):
        assert train_counts[label] > 0 and heldout_counts[label] > 0
        total = train_counts[label] + heldout_counts[label]
        assert total <= DEFAULT_MAX_PER_CLASS
        assert total >= 100, f"{task.labels[label]} yields only {total} examples"
        assert heldout_counts[label] == pytest.approx(0.2 * total, abs=1)


def test_per_class_cap_is_respected() -> None:
    capped = build_stdlib_task(max_per_class=20, heldout_fraction=0.25)
    counts = Counter(example.label for example in capped.train + capped.heldout)
    assert counts == {label: 20 for label in range(len(DEFAULT_PACKAGES))}
    assert Counter(example.label for example in capped.heldout) == {
        label: 5 for label in range(len(DEFAULT_PACKAGES))
    }


def test_cap_takes_a_stable_subset(task: TextTask) -> None:
    small = build_stdlib_task(max_per_class=40)
    large = build_stdlib_task(max_per_class=80)
    small_texts = {example.text for example in small.train + small.heldout}
    large_texts = {example.text for example in large.train + large.heldout}
    assert small_texts < large_texts


def test_smallest_cap_keeps_one_example_per_split() -> None:
    tiny = build_stdlib_task(["logging", "xml"], max_per_class=2)
    assert tiny.labels == ("logging", "xml")
    assert sorted(example.label for example in tiny.train) == [0, 1]
    assert sorted(example.label for example in tiny.heldout) == [0, 1]


def test_labels_follow_package_order(task: TextTask) -> None:
    reordered = build_stdlib_task(["xml", "asyncio"])
    assert reordered.labels == ("xml", "asyncio")
    default_names = {example.text: task.labels[example.label] for example in task.train + task.heldout}
    names = {example.text: reordered.labels[example.label] for example in reordered.train + reordered.heldout}
    common = names.keys() & default_names.keys()
    assert len(common) > 200
    assert all(names[text] == default_names[text] for text in common)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"packages": []}, "at least one"),
        ({"packages": "asyncio"}, "not the string"),
        ({"packages": ["asyncio", "asyncio"]}, "must not repeat"),
        ({"packages": ["asyncio", "no_such_package_xyz"]}, "not part of the Python standard library"),
        ({"packages": ["msvcrt" if sys.platform != "win32" else "termios"]}, "not installed"),
        ({"packages": ["xml", "xml.dom"]}, "overlap"),
        ({"packages": ["html"]}, "fewer than the 10"),
        ({"max_per_class": 1}, "max_per_class"),
        ({"max_per_class": 0}, "max_per_class"),
        ({"heldout_fraction": 0.0}, "heldout_fraction"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"heldout_fraction": -0.5}, "heldout_fraction"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_stdlib_task(**kwargs)  # type: ignore[arg-type]


def test_batches_cover_every_example_once(task: TextTask) -> None:
    examples = task.train
    seen: list[tuple[str, int]] = []
    sizes = []
    for texts, labels in batches(examples, 32, shuffle_seed=7):
        assert len(texts) == len(labels)
        sizes.append(len(texts))
        seen.extend(zip(texts, labels, strict=True))
    assert sorted(seen) == sorted((example.text, example.label) for example in examples)
    assert all(size == 32 for size in sizes[:-1]) and 0 < sizes[-1] <= 32


def test_batches_are_deterministic_with_a_seed(task: TextTask) -> None:
    first = list(batches(task.train, 16, shuffle_seed=3))
    assert first == list(batches(task.train, 16, shuffle_seed=3))
    assert first != list(batches(task.train, 16, shuffle_seed=4))
    in_order = [text for texts, _ in batches(task.train, 16) for text in texts]
    assert in_order == [example.text for example in task.train]
    assert [text for texts, _ in first for text in texts] != in_order


def test_batches_reject_bad_size(task: TextTask) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(task.train, 0))
    assert list(batches([], 4)) == []


def test_validation_split_is_disjoint_per_class_and_stable(task: TextTask) -> None:
    train, validation = validation_split(task.train, 0.15)
    assert sorted(train + validation, key=lambda e: e.text) == sorted(task.train, key=lambda e: e.text)
    assert not {e.text for e in train} & {e.text for e in validation}
    assert not {e.text for e in validation} & {e.text for e in task.heldout}  # test split untouched
    per_class, held = Counter(e.label for e in task.train), Counter(e.label for e in validation)
    for label, count in per_class.items():
        assert held[label] == min(max(1, int(count * 0.15 + 0.5)), count - 1)
    assert validation_split(task.train, 0.15) == (train, validation)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_validation_split_rejects_bad_fraction(task: TextTask, fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction must lie strictly between 0 and 1"):
        validation_split(task.train, fraction)


def test_validation_split_needs_two_examples_per_class() -> None:
    with pytest.raises(ValueError, match="class 0 has 1 example"):
        validation_split([Example("only one", 0), Example("a", 1), Example("b", 1)], 0.5)


def test_collecting_idlelib_texts_does_not_start_idle() -> None:
    """`idlelib.idle` runs IDLE when imported: under pytest it exited on pytest's own `-q` (the demo's
    privacy headline collects idlelib's docstrings as public text). A fresh interpreter, so no
    earlier import hides it."""
    code = (
        "import sys; sys.argv = ['pytest', '-q'];"
        "from splitft.data.stdlib_task import package_texts;"
        "texts = package_texts('idlelib');"
        "print(len(texts), 'idlelib.idle' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    count, imported = done.stdout.split()
    assert int(count) > 100 and imported == "False"
