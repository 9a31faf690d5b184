"""Tensor codec: round trips per codec, chunking, and every malformed stream the assembler refuses."""

from __future__ import annotations

import pytest
import torch

from splitft.compress.encoder import TensorEncoder
from splitft.errors import InvalidArgument, ResourceExhausted
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import (
    DEFAULT_CHUNK_BYTES,
    TensorAssembler,
    encode,
    expected_bytes,
    parts_to_tensors,
    tensor_parts,
    tensors_to_parts,
)


def _roundtrip(tensor: torch.Tensor, codec: str, chunk_bytes: int = 1 << 20) -> torch.Tensor:
    return parts_to_tensors(tensor_parts("t", tensor, codec, chunk_bytes))["t"]


def _sample() -> torch.Tensor:
    return torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 10


def test_raw_is_bit_exact() -> None:
    x = _sample()
    out = _roundtrip(x, "raw")
    assert out.dtype == torch.float32
    assert torch.equal(out, x)


@pytest.mark.parametrize(("codec", "rel_err"), [("fp16", 2**-11), ("bf16", 2**-8)])
def test_lossy_codecs_have_bounded_error(codec: str, rel_err: float) -> None:
    x = _sample()
    out = _roundtrip(x, codec)
    assert out.dtype == torch.float32 and out.shape == x.shape
    # round-to-nearest: relative error at most half an ulp of the wire format's mantissa
    assert torch.all((out - x).abs() <= x.abs() * rel_err + 1e-6)
    assert not torch.equal(out, x)  # it really went through the lossy format


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16"])
def test_integer_and_bool_tensors_always_travel_raw(codec: str) -> None:
    ids = torch.tensor([[1, 2**40 + 3, -7]], dtype=torch.int64)
    mask = torch.tensor([[True, False, True]])
    parts = list(tensors_to_parts({"ids": ids, "mask": mask}, codec))
    assert [p.tensor.total_bytes for p in parts] == [ids.numel() * 8, mask.numel()]
    out = parts_to_tensors(parts)
    assert torch.equal(out["ids"], ids) and out["ids"].dtype == torch.int64
    assert torch.equal(out["mask"], mask) and out["mask"].dtype == torch.bool


def test_small_chunks_split_and_reassemble() -> None:
    x = _sample()  # 105 floats = 420 bytes
    parts = list(tensor_parts("t", x, "raw", chunk_bytes=100))
    kinds = [p.WhichOneof("part") for p in parts]
    assert kinds == ["tensor"] + ["chunk"] * 4
    assert len(parts[0].tensor.data) == 100 and parts[0].tensor.total_bytes == 420
    assert torch.equal(parts_to_tensors(parts)["t"], x)


def test_empty_tensor_roundtrips() -> None:
    x = torch.empty(0, 4)
    assert _roundtrip(x, "raw").shape == (0, 4)


def test_a_zero_dim_tensor_roundtrips() -> None:
    # An optimizer's step count is one (a session checkpoint carries it); it used to fail to encode.
    for x in (torch.tensor(7.0), torch.tensor(3, dtype=torch.int64)):
        out = _roundtrip(x, "raw")
        assert out.shape == () and out.dtype == x.dtype and torch.equal(out, x)


def _header(**fields: object) -> pb.TensorPart:
    base: dict[str, object] = dict(
        name="t", shape=[2, 2], dtype="float32", codec="raw", total_bytes=16, data=b"\0" * 16
    )
    base.update(fields)
    return pb.TensorPart(tensor=pb.Tensor(**base))


def _assemble(*parts: pb.TensorPart, max_tensor_bytes: int = 1 << 30) -> dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for part in parts:
        assembler.add(part)
    return assembler.finish()


def _chunk(data: bytes) -> pb.TensorPart:
    return pb.TensorPart(chunk=pb.TensorChunk(data=data))


def test_well_formed_header_assembles() -> None:
    assert torch.equal(_assemble(_header())["t"], torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([_chunk(b"\0" * 4)], "before any tensor header"),
        ([_header(data=b"\0" * 12)], "truncated"),
        ([_header(data=b"\0" * 8), _chunk(b"\0" * 4)], "truncated"),
        ([_header(total_bytes=12, data=b"\0" * 12)], "needs 16 bytes"),
        ([_header(data=b"\0" * 17)], "more bytes"),
        ([_header(data=b"\0" * 12), _chunk(b"\0" * 8)], "more bytes"),
        ([_header(dtype="complex64")], "unknown dtype"),
        ([_header(codec="int2")], "unknown codec"),
        ([_header(shape=[-2, -2])], "invalid shape"),
        ([_header(), _header()], "sent twice"),
        ([_header(name="")], "without a name"),
        ([pb.TensorPart()], "empty tensor part"),
    ],
    ids=[
        "chunk-first",
        "truncated-header",
        "truncated-chunks",
        "size-mismatch",
        "too-many-header",
        "too-many-chunks",
        "dtype",
        "codec",
        "negative-dim",
        "duplicate",
        "no-name",
        "empty-part",
    ],
)
def test_assembler_rejects_malformed_streams(parts: list[pb.TensorPart], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _assemble(*parts)


def test_declared_size_over_limit_is_resource_exhausted() -> None:
    # Refused at the header, before any byte of the payload is buffered.
    with pytest.raises(ResourceExhausted, match="limit is 8"):
        _assemble(_header(), max_tensor_bytes=8)
    with pytest.raises(ResourceExhausted):
        _assemble(_header(shape=[1 << 38], total_bytes=1 << 40, data=b""))


def test_expected_bytes_follows_wire_dtype() -> None:
    assert expected_bytes((2, 3), torch.float32, "raw") == 24
    assert expected_bytes((2, 3), torch.float32, "fp16") == 12
    assert expected_bytes((2, 3), torch.int64, "bf16") == 48


def test_expected_bytes_for_every_codec_string() -> None:
    assert expected_bytes((2, 3), torch.float32, "int8:sr") == 2 * 2 + 6
    assert expected_bytes((100,), torch.float32, "topk:0.07") == 7 * 8
    assert expected_bytes((16, 8), torch.float32, "lowrank:2:noef") == 2 * 2 * (16 + 8)
    assert expected_bytes((2, 3), torch.int64, "topk:0.5") == 48
    assert len(encode(torch.randn(100), "topk:0.07")) == 56


@pytest.mark.parametrize("codec", ["int8:sr", "topk:0.01", "topk:0.2:noef", "lowrank:4", "lowrank:2:ef"])
def test_encoder_parts_round_trip_with_chunks(codec: str) -> None:
    encoder = TensorEncoder(codec, seed=0)
    grad = torch.randn(4, 32, 64)
    ids = torch.arange(8).reshape(2, 4)
    parts = list(tensors_to_parts({"grad": grad, "ids": ids}, encoder, chunk_bytes=64))
    headers = [p.tensor for p in parts if p.WhichOneof("part") == "tensor"]
    assert [(h.name, h.codec) for h in headers] == [("grad", codec), ("ids", "raw")]
    assert len(parts) > 3  # the gradient's payload really was chunked
    out = parts_to_tensors(parts)
    assert torch.equal(out["ids"], ids)
    assert out["grad"].shape == grad.shape and out["grad"].dtype == grad.dtype
    assert float((out["grad"] - grad).norm() / grad.norm()) < 1.0


def test_encoder_state_carries_across_messages() -> None:
    encoder = TensorEncoder("topk:0.1")
    grad = torch.randn(8, 16)
    first = parts_to_tensors(tensors_to_parts({"grad": grad}, encoder))["grad"]
    second = parts_to_tensors(tensors_to_parts({"grad": grad}, encoder))["grad"]
    residual = encoder.residual("grad")
    assert residual is not None
    assert torch.allclose(first + second + residual, 2 * grad, atol=1e-6)


@pytest.mark.parametrize("codec", ["int8:sr", "topk:0.01", "lowrank:4:noef"])
def test_stateful_codec_names_need_an_encoder(codec: str) -> None:
    with pytest.raises(InvalidArgument, match="pass a TensorEncoder"):
        list(tensors_to_parts({"grad": torch.randn(2, 2)}, codec))


def test_unknown_codec_name_fails_before_any_part() -> None:
    with pytest.raises(InvalidArgument, match="unknown codec 'int2'"):
        next(tensors_to_parts({"x": torch.randn(2)}, "int2"))


def test_default_chunking_of_a_large_compressed_payload() -> None:
    grad = torch.randn(64, 128, 1024)  # 32 MiB raw; topk:0.2 sends 8 * 1677722 bytes = 3.2 chunks
    parts = list(tensor_parts("grad", grad, TensorEncoder("topk:0.2:noef")))
    assert len(parts) == 1 + (parts[0].tensor.total_bytes - 1) // DEFAULT_CHUNK_BYTES == 4
    out = parts_to_tensors(parts)["grad"]
    assert int((out != 0).sum()) == parts[0].tensor.total_bytes // 8


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (dict(codec="topk:0.5", total_bytes=24, data=b"\0" * 24), "as float32/topk:0.5 needs 16 bytes"),
        (dict(codec="topk:0.5", total_bytes=12, data=b"\0" * 12), "needs 16 bytes"),
        (dict(codec="lowrank:2", total_bytes=8, data=b"\0" * 8), "needs 16 bytes"),
        (dict(codec="lowrank:1", total_bytes=20, data=b"\0" * 20), "needs 8 bytes"),
        (dict(codec="lowrank:1", total_bytes=8, data=b"\0" * 6), "truncated: received 6 of 8"),
        (dict(codec="topk:2"), r"tensor 't': invalid codec 'topk:2'"),
        (dict(codec="int8:noef"), "int8's only option"),
    ],
)
def test_assembler_checks_compressed_payloads(fields: dict, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        _assemble(_header(**fields))


def test_assembler_names_the_tensor_when_topk_indices_are_bad() -> None:
    # shape [2, 2] at topk:0.5 -> k = 2: indices [1, 1] are not ascending
    data = torch.tensor([1, 1], dtype=torch.int32).numpy().tobytes() + b"\0" * 8
    with pytest.raises(InvalidArgument, match="tensor 't': topk payload: indices are not strictly ascending"):
        _assemble(_header(codec="topk:0.5", total_bytes=16, data=data))


def test_decoded_size_is_bounded_too() -> None:
    # 8 bytes of topk payload that would decode to 4 TiB of zeros
    header = _header(shape=[1 << 40], codec="topk:0.000001", total_bytes=8, data=b"\0" * 8)
    with pytest.raises(ResourceExhausted, match="decodes to"):
        _assemble(header)
