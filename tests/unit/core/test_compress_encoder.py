"""TensorEncoder / decode_payload: state per name, reproducible per seed, raw for non-floats, sizes."""

from __future__ import annotations

import pytest
import torch

from splitft.compress import parse_codec
from splitft.compress.encoder import TensorEncoder, decode_payload, payload_bytes
from splitft.errors import InvalidArgument

SHAPE = (8, 128, 512)  # batch x tokens x hidden
RAW_BYTES = 8 * 128 * 512 * 4


@pytest.mark.parametrize("codec", ["raw", "fp16", "int8", "int8:sr", "topk:0.01", "lowrank:4"])
def test_integer_and_bool_tensors_always_go_raw(codec: str) -> None:
    encoder = TensorEncoder(codec)
    ids = torch.tensor([[1, 2**40, -3]])
    mask = torch.tensor([True, False])
    for tensor in (ids, mask):
        name, payload = encoder.encode(tensor, key="x")
        assert name == "raw"
        assert torch.equal(decode_payload(name, payload, tuple(tensor.shape), tensor.dtype), tensor)
    # A peer may label an integer tensor with any codec: it is still raw bytes.
    assert torch.equal(decode_payload("topk:0.5", encoder.encode(ids)[1], (1, 3), torch.int64), ids)


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16", "int8", "int8:sr", "topk:0.01", "lowrank:4"])
def test_header_string_is_the_canonical_spec(codec: str) -> None:
    name, payload = TensorEncoder(codec).encode(torch.randn(4, 8))
    assert name == codec and len(payload) == payload_bytes(parse_codec(codec), (4, 8), torch.float32)


def test_stochastic_rounding_is_reproducible_per_seed() -> None:
    x = torch.randn(16, 32)
    first = [TensorEncoder("int8:sr", seed=5).encode(x)[1] for _ in range(2)]
    assert first[0] == first[1]
    assert TensorEncoder("int8:sr", seed=6).encode(x)[1] != first[0]
    encoder = TensorEncoder("int8:sr", seed=5)
    assert encoder.encode(x)[1] != encoder.encode(x)[1]  # the generator advances between steps


def test_state_is_kept_per_tensor_name() -> None:
    encoder = TensorEncoder("topk:0.25")
    a, b = torch.randn(4, 4), torch.randn(2, 8)
    encoder.encode(a, key="a")
    encoder.encode(b, key="b")  # another shape under another name: a's residual survives
    residual = encoder.residual("a")
    assert residual is not None and residual.shape == (4, 4)
    assert int((residual != 0).sum()) == 12
    encoder.reset()
    assert encoder.residual("a") is None


def test_noef_keeps_no_residual() -> None:
    encoder = TensorEncoder("topk:0.25:noef")
    encoder.encode(torch.randn(4, 4), key="g")
    assert encoder.residual("g") is None


def test_wire_bytes_of_gradient_codecs() -> None:
    g = torch.randn(*SHAPE)
    _, sparse = TensorEncoder("topk:0.01").encode(g)
    _, lowrank = TensorEncoder("lowrank:4").encode(g)
    assert len(sparse) <= 0.02 * RAW_BYTES + 8  # ceil(0.01 * numel) may add one entry
    assert len(lowrank) == 2 * 4 * (1024 + 512) < 0.006 * RAW_BYTES


def test_int8_activations_and_topk_gradients_are_under_15_percent_of_raw() -> None:
    """One step moves hidden states both ways forward and gradients both ways backward."""
    x = torch.randn(*SHAPE)
    forward = 2 * len(TensorEncoder("int8").encode(x)[1])
    backward = 2 * len(TensorEncoder("topk:0.01").encode(x)[1])
    assert (forward + backward) / (4 * RAW_BYTES) < 0.15


@pytest.mark.parametrize(
    ("codec", "shape", "size", "match"),
    [
        ("raw", (2, 3), 23, "expected 24"),
        ("fp16", (2, 3), 24, "expected 12"),
        ("int8", (2, 3), 6, "expected 10"),
        ("int8:sr", (2, 3), 11, "expected 10"),
        ("topk:0.5", (2, 3), 25, "expected 24"),
        ("lowrank:1", (2, 3), 0, "expected 10"),
        ("lowrank:9", (2, 3), 41, "expected 20"),
    ],
)
def test_wrong_payload_sizes_are_invalid_argument(codec: str, shape: tuple, size: int, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        decode_payload(codec, b"\x01" * size, shape, torch.float32)


@pytest.mark.parametrize("codec", ["int3", "topk", "topk:0", "lowrank:x", "", "raw:sr"])
def test_unknown_codec_strings_are_invalid_argument(codec: str) -> None:
    with pytest.raises(InvalidArgument, match="supported"):
        decode_payload(codec, b"", (0,), torch.float32)


def test_garbage_of_the_right_size_never_crashes() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        garbage = torch.randint(0, 256, (8 * 6,), generator=gen, dtype=torch.uint8).numpy().tobytes()
        try:
            out = decode_payload("topk:0.5", garbage, (3, 4), torch.float32)
        except InvalidArgument:
            continue
        assert out.shape == (3, 4)
    lowrank = decode_payload("lowrank:2", b"\xff" * 2 * 2 * (3 + 4), (3, 4), torch.float32)
    assert lowrank.shape == (3, 4)  # NaNs decode as NaNs; the size is all that can be wrong


def test_float16_and_bfloat16_gradients_decode_to_their_dtype() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        g = torch.randn(6, 10).to(dtype)
        for codec in ("topk:0.2", "lowrank:2", "int8:sr"):
            name, payload = TensorEncoder(codec).encode(g)
            assert decode_payload(name, payload, (6, 10), dtype).dtype == dtype


@pytest.mark.parametrize(
    ("codec", "stateful"),
    [("raw", False), ("topk:0.05:noef", False), ("int8:sr", True), ("topk:0.05", True), ("lowrank:2", True)],
)
def test_state_moves_an_encoder_on_exactly(codec: str, stateful: bool) -> None:
    """A checkpoint's encoder state: a new encoder (another seed) loaded with it encodes the next
    tensors byte for byte as the original goes on to; without it, a stateful codec's would not."""
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(2, 6, 16, generator=generator) for _ in range(6)]
    original = TensorEncoder(codec, seed=1)
    for x in tensors[:3]:
        original.encode(x, key="grad")
    generator_state, state = original.state()
    resumed = TensorEncoder(codec, seed=99)
    resumed.load_state(generator_state, state)
    unrestored = TensorEncoder(codec, seed=99)
    expected = [original.encode(x, key="grad") for x in tensors[3:]]
    assert [resumed.encode(x, key="grad") for x in tensors[3:]] == expected
    assert ([unrestored.encode(x, key="grad") for x in tensors[3:]] != expected) == stateful


def test_state_that_does_not_fit_the_codec_is_refused_and_changes_nothing() -> None:
    encoder = TensorEncoder("lowrank:2", seed=1)
    encoder.encode(torch.randn(2, 4, 8), key="g")
    before = encoder.state()
    generator_state = before[0]
    cases = [
        (b"\0" * 3, {}, "not a CPU generator state"),
        (generator_state, {"basis/g": torch.zeros(8, 3)}, "does not fit codec"),  # rank 3 > 2
        (generator_state, {"basis/g": torch.zeros(8)}, "does not fit codec"),
        (generator_state, {"other/g": torch.zeros(2)}, "not a residual/ or basis/"),
        (generator_state, {"residual/g": torch.zeros(2, dtype=torch.int64)}, "not a residual/ or basis/"),
    ]
    for generator, tensors, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            encoder.load_state(generator, tensors)
    after = encoder.state()
    assert after[0] == before[0] and all(torch.equal(after[1][k], v) for k, v in before[1].items())
    with pytest.raises(InvalidArgument, match="keeps none"):
        TensorEncoder("int8").load_state(generator_state, {"residual/g": torch.zeros(2)})
    with pytest.raises(InvalidArgument, match="does not fit codec"):
        TensorEncoder("topk:0.1:noef").load_state(generator_state, {"residual/g": torch.zeros(2)})
