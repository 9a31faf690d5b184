"""The one serialization boundary for tensors: torch tensors <-> `splitft.v1.TensorPart` streams.

Tensors travel as raw little-endian bytes with shape, dtype and codec, never as repeated floats.
Lossy codecs apply to floating tensors only; masks and position ids always travel raw. A tensor
whose payload exceeds `chunk_bytes` is split into a `Tensor` header plus `TensorChunk`s.
Protobuf types never travel past this module: callers see dicts of tensors.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Mapping

import torch

from splitft import int8
from splitft.errors import InvalidArgument, ResourceExhausted
from splitft.v1 import dataplane_pb2 as pb

CODECS: tuple[str, ...] = ("raw", "fp16", "bf16", "int8")
LOSSLESS_CODECS: frozenset[str] = frozenset({"raw"})

# Chunk size for streams; well under the channel's message limit (MESSAGE_LIMIT_BYTES).
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
MESSAGE_LIMIT_BYTES = 8 * 1024 * 1024
# Refuse any single tensor above this (an activation of 1 GiB is already absurd for one step).
DEFAULT_MAX_TENSOR_BYTES = 1 << 30

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_WIRE_DTYPE = {"fp16": torch.float16, "bf16": torch.bfloat16}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("splitft's wire format is little-endian; this host is big-endian")


def check_codec(codec: str) -> str:
    """Return `codec` if supported, else raise InvalidArgument naming the supported ones."""
    if codec not in CODECS:
        raise InvalidArgument(f"unknown codec {codec!r}; supported: {', '.join(CODECS)}")
    return codec


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise InvalidArgument(f"dtype {dtype} cannot travel; supported: {', '.join(DTYPES)}")
    return _DTYPE_NAMES[dtype]


def _wire_dtype(dtype: torch.dtype, codec: str) -> torch.dtype:
    """The dtype a tensor has on the wire: lossy codecs only touch floating tensors."""
    if codec in _WIRE_DTYPE and dtype.is_floating_point:
        return _WIRE_DTYPE[codec]
    return dtype


def encode(tensor: torch.Tensor, codec: str) -> bytes:
    """Encoded payload of `tensor` under `codec`."""
    if codec == "int8" and tensor.dtype.is_floating_point:
        return int8.quantize(tensor)
    wire = tensor.detach().to(device="cpu", dtype=_wire_dtype(tensor.dtype, codec)).contiguous()
    return wire.view(torch.uint8).numpy().tobytes() if wire.numel() else b""


def decode(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype, codec: str) -> torch.Tensor:
    """Inverse of `encode`; the caller has checked that `data` has the expected length."""
    if codec == "int8" and dtype.is_floating_point:
        return int8.dequantize(data, shape, dtype)
    wire_dtype = _wire_dtype(dtype, codec)
    if not data:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(data) if isinstance(data, bytes) else data, dtype=wire_dtype)
    return flat.reshape(shape).to(dtype)


def expected_bytes(shape: tuple[int, ...], dtype: torch.dtype, codec: str) -> int:
    if codec == "int8" and dtype.is_floating_point:
        return int8.int8_bytes(shape)
    itemsize = torch.empty((), dtype=_wire_dtype(dtype, codec)).element_size()
    return math.prod(shape) * itemsize


def tensor_parts(
    name: str, tensor: torch.Tensor, codec: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[pb.TensorPart]:
    """Stream one tensor as a header part followed by chunk parts."""
    payload = encode(tensor, codec)
    header = pb.Tensor(
        name=name,
        shape=list(tensor.shape),
        dtype=dtype_name(tensor.dtype),
        codec=codec,
        total_bytes=len(payload),
        data=payload[:chunk_bytes],
    )
    yield pb.TensorPart(tensor=header)
    for offset in range(chunk_bytes, len(payload), chunk_bytes):
        yield pb.TensorPart(chunk=pb.TensorChunk(data=payload[offset : offset + chunk_bytes]))


def tensors_to_parts(
    tensors: Mapping[str, torch.Tensor], codec: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[pb.TensorPart]:
    for name, tensor in tensors.items():
        yield from tensor_parts(name, tensor, codec, chunk_bytes)


class TensorAssembler:
    """Rebuilds tensors from a stream of parts, validating everything a peer could get wrong."""

    def __init__(self, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES, max_tensors: int = 4096) -> None:
        self.max_tensor_bytes = max_tensor_bytes
        self.max_tensors = max_tensors
        self.tensors: dict[str, torch.Tensor] = {}
        self.bytes_received = 0
        self._header: pb.Tensor | None = None
        self._buffer = bytearray()

    def add(self, part: pb.TensorPart) -> None:
        kind = part.WhichOneof("part")
        if kind == "tensor":
            self._flush()
            self._start(part.tensor)
        elif kind == "chunk":
            if self._header is None:
                raise InvalidArgument("tensor chunk received before any tensor header")
            self._append(part.chunk.data)
        else:
            raise InvalidArgument("empty tensor part")

    def finish(self) -> dict[str, torch.Tensor]:
        self._flush()
        return self.tensors

    def _start(self, header: pb.Tensor) -> None:
        if len(self.tensors) >= self.max_tensors:
            raise ResourceExhausted(f"more than {self.max_tensors} tensors in one stream")
        if not header.name:
            raise InvalidArgument("tensor without a name")
        if header.name in self.tensors:
            raise InvalidArgument(f"tensor {header.name!r} sent twice")
        if header.total_bytes > self.max_tensor_bytes:
            raise ResourceExhausted(
                f"tensor {header.name!r}: {header.total_bytes} bytes; limit is {self.max_tensor_bytes}"
            )
        self._header = header
        self._buffer = bytearray()
        self._append(header.data)

    def _append(self, data: bytes) -> None:
        assert self._header is not None  # guarded by callers
        self._buffer += data
        self.bytes_received += len(data)
        if len(self._buffer) > self._header.total_bytes:
            raise InvalidArgument(
                f"tensor {self._header.name!r}: more bytes than the declared {self._header.total_bytes}"
            )

    def _flush(self) -> None:
        header, self._header = self._header, None
        if header is None:
            return
        self.tensors[header.name] = _decode_checked(header, self._buffer)
        self._buffer = bytearray()


def _decode_checked(header: pb.Tensor, data: bytearray) -> torch.Tensor:
    name = header.name
    if header.dtype not in DTYPES:
        raise InvalidArgument(
            f"tensor {name!r}: unknown dtype {header.dtype!r}; supported: {', '.join(DTYPES)}"
        )
    if header.codec not in CODECS:
        raise InvalidArgument(
            f"tensor {name!r}: unknown codec {header.codec!r}; supported: {', '.join(CODECS)}"
        )
    shape = tuple(int(d) for d in header.shape)
    if any(d < 0 for d in shape) or len(shape) > 8:
        raise InvalidArgument(f"tensor {name!r}: invalid shape {list(shape)}")
    dtype = DTYPES[header.dtype]
    want = expected_bytes(shape, dtype, header.codec)
    if want != header.total_bytes:
        raise InvalidArgument(
            f"tensor {name!r}: shape {list(shape)} as {header.dtype}/{header.codec} needs {want} bytes, "
            f"header declares {header.total_bytes}"
        )
    if len(data) != want:
        raise InvalidArgument(f"tensor {name!r} truncated: received {len(data)} of {want} bytes")
    return decode(data, shape, dtype, header.codec)


def parts_to_tensors(
    parts: Iterable[pb.TensorPart], max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for part in parts:
        assembler.add(part)
    return assembler.finish()
