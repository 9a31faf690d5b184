"""The emulator's layer drop and index mapping (splitft.emulator.layout): Offsite-Tuning's rule,
the device and head blocks' indices, and the refusals."""

from __future__ import annotations

import pytest

from splitft.emulator.layout import EmulatorLayout, kept_trunk_indices
from splitft.errors import InvalidArgument, NotFound


@pytest.mark.parametrize(
    ("n", "keep", "expected"),
    [
        (4, 2, [0, 3]),
        (4, 4, [0, 1, 2, 3]),
        (10, 4, [0, 3, 6, 9]),
        (5, 3, [0, 2, 4]),
        (8, 3, [0, 4, 7]),  # round(3.5) = 4 (half to even)
        (6, 4, [0, 2, 3, 5]),  # 5/3: 1.67 -> 2, 3.33 -> 3
        (3, 1, [0]),
    ],
)
def test_uniform_drop_keeps_round_i_n_minus_1_over_k_minus_1(n: int, keep: int, expected: list[int]) -> None:
    assert kept_trunk_indices(n, keep) == expected


@pytest.mark.parametrize(("n", "keep"), [(4, 0), (4, 5), (4, -1), (1, 2)])
def test_keep_out_of_range_is_refused_naming_the_range(n: int, keep: int) -> None:
    with pytest.raises(InvalidArgument, match=f"between 1 and the trunk's {n} blocks, got {keep}"):
        kept_trunk_indices(n, keep)


def test_keep_must_be_an_int() -> None:
    with pytest.raises(InvalidArgument, match="keep must be an int"):
        kept_trunk_indices(4, True)  # type: ignore[arg-type]


def test_layout_maps_device_and_head_blocks_to_the_full_models_indices() -> None:
    layout = EmulatorLayout.for_split(12, 2, 2, 3)  # trunk 2..9 (n = 8): keeps 2, 6, 9
    assert layout.kept == [2, 6, 9]
    assert layout.emulator_layers == 7
    assert layout.source_indices() == [0, 1, 2, 6, 9, 10, 11]
    assert [layout.is_trunk(i) for i in range(7)] == [False, False, True, True, True, False, False]
    with pytest.raises(InvalidArgument, match="outside the emulator's 7 blocks"):
        layout.full_index(7)


@pytest.mark.parametrize(
    ("k", "j", "reason"),
    [
        (0, 1, "device_layers must be >= 1"),
        (3, 1, "must leave at least one trunk block"),
        (1, -1, "head_layers must be >= 0"),
    ],
)
def test_a_split_that_does_not_fit_the_model_is_refused(k: int, j: int, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=reason):
        EmulatorLayout.for_split(4, k, j, 1)


def test_layout_round_trips_and_a_bad_file_is_refused(tmp_path) -> None:
    layout = EmulatorLayout.for_split(6, 1, 1, 2, "/models/full")
    layout.save(tmp_path)
    assert EmulatorLayout.load(tmp_path) == layout
    (tmp_path / "splitft_emulator.json").write_text(
        '{"format": 1, "num_layers": 6, "device_layers": 1, "head_layers": 1, "kept": [0]}'
    )
    with pytest.raises(InvalidArgument, match="not trunk blocks"):
        EmulatorLayout.load(tmp_path)
    (tmp_path / "splitft_emulator.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not a valid emulator description"):
        EmulatorLayout.load(tmp_path)
    with pytest.raises(NotFound, match="is not an emulator"):
        EmulatorLayout.load(tmp_path / "nothing")
