"""The device's local training data (device_client/agent/datasets.py): JSONL, SDK sequences, batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_client.agent.datasets import TextExample, as_examples, epoch_batches, load_jsonl, training_batches
from splitft.data.stdlib_task import Example
from splitft.errors import InvalidArgument, NotFound


def test_jsonl_loads_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": 0}\n\n{"text": "bad", "label": 1, "extra": true}\n')
    assert load_jsonl(path) == [TextExample("good", 0), TextExample("bad", 1)]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"text": "x", "label": 0', "not valid JSON"),
        ('["x", 0]', "expected a JSON object"),
        ('{"label": 0}', 'missing "text"'),
        ('{"text": "x"}', 'missing "label"'),
        ('{"text": "   ", "label": 0}', '"text" is empty'),
        ('{"text": 3, "label": 0}', '"text" must be a string'),
        ('{"text": "x", "label": "1"}', "integer class index, got str"),
        ('{"text": "x", "label": 1.5}', "integer class index, got float"),
        ('{"text": "x", "label": true}', "integer class index, got bool"),
        ('{"text": "x", "label": -1}', "must be >= 0"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n\n' + line + "\n")
    with pytest.raises(InvalidArgument, match=match) as caught:
        load_jsonl(path)
    assert caught.value.message.startswith(f"{path}:3: ")


def test_jsonl_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InvalidArgument, match="no examples"):
        load_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 0}\n')
    with pytest.raises(InvalidArgument, match=r"latin1.jsonl:2: not UTF-8"):
        load_jsonl(tmp_path / "latin1.jsonl")


def test_sdk_datasets_are_coerced_and_checked() -> None:
    got = as_examples([Example("a", 1), {"text": "b", "label": 0}, ("c", 2), TextExample("d", 0)])
    assert got == [TextExample("a", 1), TextExample("b", 0), TextExample("c", 2), TextExample("d", 0)]
    with pytest.raises(InvalidArgument, match=r"^example 1: \"label\" must be >= 0"):
        as_examples([("a", 0), ("b", -2)])
    with pytest.raises(InvalidArgument, match="empty"):
        as_examples([])


def test_batches_are_deterministic_per_seed_and_epoch() -> None:
    examples = [TextExample(f"t{i}", i % 3) for i in range(10)]

    def order(seed: int, epoch: int) -> list[str]:
        return [t for texts, _ in epoch_batches(examples, 4, seed=seed, epoch=epoch) for t in texts]

    assert order(7, 0) == order(7, 0)
    assert sorted(order(7, 0)) == sorted(e.text for e in examples)  # each example once per epoch
    assert order(7, 0) != order(7, 1) and order(7, 0) != order(8, 0)
    sizes = [len(texts) for texts, _ in epoch_batches(examples, 4, seed=7, epoch=0)]
    assert sizes == [4, 4, 2]
    first = next(epoch_batches(examples, 4, seed=7, epoch=0))
    assert first[1] == [int(t[1:]) % 3 for t in first[0]]  # labels stay with their texts
    assert len(list(training_batches(examples, 4, seed=7, epochs=2))) == 6
    endless = training_batches(examples, 4, seed=7)
    assert len([next(endless) for _ in range(10)]) == 10
