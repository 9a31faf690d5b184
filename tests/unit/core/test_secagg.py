"""Secure aggregation's library (splitft.federated.secagg, fixedpoint): pairwise masks cancel exactly,
the unmasked sum is FedAvg within the fixed-point error, one masked vector tells nothing of its
update, and bad input is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.federated import fedavg
from splitft.federated.fixedpoint import FRACTION_BITS, Layout, add, encode, max_weighted_entry
from splitft.federated.secagg import (
    generate_private_key,
    mask_update,
    mask_vector,
    pair_seed,
    public_bytes,
    read_masked,
    unmask_sum,
)

CONTEXT = "job-1:0:0"


def _states(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "base_model.model.layer.0.lora_A.weight": rng.normal(0, 0.5, (4, 16)).astype(np.float32),
            "base_model.model.layer.0.lora_B.weight": rng.normal(0, 1e-3, (16, 4)).astype(np.float32),
            "base_model.model.classifier.bias": rng.normal(0, 2, (3,)).astype(np.float64),
        }
        for _ in range(count)
    ]


def _round(states: list[dict[str, np.ndarray]], weights: list[int]) -> list:
    names = [f"phone-{i}" for i in range(len(states))]
    keys = {name: generate_private_key() for name in names}
    members = {name: public_bytes(key) for name, key in keys.items()}
    return [
        mask_update(state, weight, me=name, private=keys[name], members=members, context=CONTEXT)
        for name, state, weight in zip(names, states, weights, strict=True)
    ]


def test_masks_cancel_exactly_in_the_sum() -> None:
    states, weights = _states(4), [3, 10, 1, 250]
    masked = _round(states, weights)
    plain = [
        encode(np.concatenate([s[k].astype(np.float64).ravel() for k in sorted(s)]), w, 4)
        for s, w in zip(states, weights, strict=True)
    ]
    assert np.array_equal(add([m.vector for m in masked]), add(plain))  # bit for bit
    assert not any(np.array_equal(m.vector, p) for m, p in zip(masked, plain, strict=True))


def test_the_unmasked_sum_is_fedavg_within_the_fixed_point_error() -> None:
    states, weights = _states(5, seed=1), [7, 1, 120, 33, 2]
    masked = _round(states, weights)
    result = unmask_sum([m.vector for m in masked], weights, masked[0].layout)
    expected = fedavg(states, [float(w) for w in weights])
    assert sorted(result) == sorted(expected)
    for key, value in expected.items():
        assert result[key].dtype == value.dtype  # float32 stays float32, float64 float64
        np.testing.assert_allclose(result[key], value, rtol=0, atol=1e-6, err_msg=key)
        # the documented bound: K * 2^-25 / W per entry, plus float32's own rounding of the result
        gap = np.abs(result[key].astype(np.float64) - value.astype(np.float64)).max()
        assert gap <= 5 * 2.0 ** -(FRACTION_BITS + 1) / sum(weights) + np.finfo(value.dtype).eps * 4


def test_one_masked_vector_reveals_nothing_obvious_of_its_update() -> None:
    rng = np.random.default_rng(2)
    big = {"w": rng.normal(0, 1, (20_000,)).astype(np.float32)}
    states = [big, {"w": rng.normal(0, 1, (20_000,)).astype(np.float32)}, {"w": np.zeros(20_000, np.float32)}]
    masked = _round(states, [5, 5, 5])[0].vector
    as_real = masked.view(np.int64).astype(np.float64)
    assert abs(np.corrcoef(as_real, big["w"])[0, 1]) < 0.05  # uncorrelated with the update
    top_bits = (masked >> np.uint64(63)).astype(np.float64)
    assert abs(top_bits.mean() - 0.5) < 0.02  # the sign bit is a coin flip, unlike the encoding's
    plain = encode(big["w"].astype(np.float64), 5, 3)
    assert np.corrcoef(plain.view(np.int64).astype(np.float64), big["w"])[0, 1] > 0.99


def test_pair_seeds_agree_both_ways_and_bind_the_context() -> None:
    a, b = generate_private_key(), generate_private_key()
    ab = pair_seed(a, "a", "b", public_bytes(b), CONTEXT)
    assert ab == pair_seed(b, "b", "a", public_bytes(a), CONTEXT)
    assert ab != pair_seed(a, "a", "b", public_bytes(b), "job-1:0:1")  # another attempt, other masks
    assert np.array_equal(mask_vector(ab, 5), mask_vector(ab, 8)[:5])
    assert mask_vector(ab, 1000).std() > 0


def test_the_overflow_bound_and_non_finite_values_are_refused() -> None:
    bound = max_weighted_entry(4)
    assert bound == 2.0 ** (63 - FRACTION_BITS) / 4
    with pytest.raises(FailedPrecondition, match="fixed-point bound"):
        encode(np.array([bound / 10]), 10, 4)
    encode(np.array([bound / 10 * 0.99]), 10, 4)
    with pytest.raises(FailedPrecondition, match="non-finite"):
        encode(np.array([np.nan]), 1, 2)
    with pytest.raises(InvalidArgument, match="weight"):
        encode(np.array([1.0]), 0, 2)


def test_bad_members_keys_and_sizes_are_refused() -> None:
    state = _states(1)[0]
    me, peer = generate_private_key(), generate_private_key()
    members = {"a": public_bytes(me), "b": public_bytes(peer)}
    with pytest.raises(InvalidArgument, match="not among"):
        mask_update(state, 1, me="c", private=me, members=members, context=CONTEXT)
    with pytest.raises(InvalidArgument, match="not this device's public key"):
        mask_update(state, 1, me="b", private=me, members=members, context=CONTEXT)
    with pytest.raises(InvalidArgument, match="at least 2"):
        mask_update(state, 1, me="a", private=me, members={"a": public_bytes(me)}, context=CONTEXT)
    with pytest.raises(InvalidArgument, match="32 raw bytes"):
        mask_update(state, 1, me="a", private=me, members={**members, "b": b"short"}, context=CONTEXT)
    with pytest.raises(InvalidArgument, match="not a usable X25519 key"):
        mask_update(state, 1, me="a", private=me, members={**members, "b": bytes(32)}, context=CONTEXT)
    layout = Layout.of_state(state)
    with pytest.raises(InvalidArgument, match=f"{8 * layout.size} bytes"):
        read_masked(b"\0" * (8 * layout.size - 8), layout)
    with pytest.raises(InvalidArgument, match="one masked vector per member"):
        unmask_sum([np.zeros(layout.size, np.uint64)], [1], layout)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "list of 1 to"),
        ([["a", [2], "int8"]], "dtype must be one of"),
        ([["a", [-1], "float32"]], "sizes in"),
        ([["b", [1], "float32"], ["a", [1], "float32"]], "sorted order"),
        ([["a", [1], "float32"], ["a", [1], "float32"]], "unique"),
        ([["a", [0], "float32"]], "between 1 and"),
        ([["a", [2**31, 2], "float32"]], "between 1 and"),
        ([["a", 3, "float32"]], "shape must be a list"),
    ],
)
def test_a_bad_layout_is_refused_naming_the_entry(raw: list, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Layout.from_json(raw)
