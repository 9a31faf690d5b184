"""The one serialization boundary for tensors: torch tensors <-> `splitft.v1.TensorPart` streams.

Tensors travel as raw little-endian bytes with shape, dtype and codec, never as repeated floats.
Lossy codecs apply to floating tensors only; masks and position ids always travel raw. A tensor
whose payload exceeds `chunk_bytes` is split into a `Tensor` header plus `TensorChunk`s.
Protobuf types never travel past this module: callers see dicts of tensors.

The header's `codec` is a full codec string (`splitft.compress.spec`: "int8", "int8:sr",
"topk:0.01", "lowrank:4", ...), so the receiver decodes any of them without session state. Senders
pass a codec name (stateless, as before) or a `TensorEncoder`, which keeps error feedback and
warm starts per tensor name between steps; topk and lowrank need the latter.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from splitft.compress import CodecSpec, parse_codec
from splitft.compress.encoder import RAW, TensorEncoder, decode_payload, payload_bytes
from splitft.errors import InvalidArgument, ResourceExhausted
from splitft.v1 import dataplane_pb2 as pb

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
_MAX_DIMS = 8

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("splitft's wire format is little-endian; this host is big-endian")


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in _DTYPE_NAMES:
        raise InvalidArgument(f"dtype {dtype} cannot travel; supported: {', '.join(DTYPES)}")
    return _DTYPE_NAMES[dtype]


def encode(tensor: torch.Tensor, codec: str) -> bytes:
    """Encoded payload of `tensor` under `codec`, one-shot: no state carries over to another call."""
    return TensorEncoder(codec).encode(tensor)[1]


def decode(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype, codec: str) -> torch.Tensor:
    """Inverse of `encode` for any codec string; a payload of the wrong size is InvalidArgument."""
    return decode_payload(codec, data, shape, dtype)


def expected_bytes(shape: tuple[int, ...], dtype: torch.dtype, codec: str) -> int:
    return payload_bytes(parse_codec(codec), shape, dtype)


def _encoder(codec: str | TensorEncoder) -> TensorEncoder:
    if isinstance(codec, TensorEncoder):
        return codec
    encoder = TensorEncoder(codec)
    if encoder.spec.is_stateful:
        # A fresh encoder per message would silently drop the residual and the warm start.
        raise InvalidArgument(f"codec {codec!r} keeps state between steps; pass a TensorEncoder")
    return encoder


def _part_of(message: Any) -> pb.TensorPart:
    return message if isinstance(message, pb.TensorPart) else message.part


def tensor_parts(
    name: str,
    tensor: torch.Tensor,
    codec: str | TensorEncoder,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    into: Callable[[], Any] = pb.TensorPart,
) -> Iterator[Any]:
    """Stream one tensor as a header part followed by chunk parts.

    `codec` is a stateless codec name (raw, fp16, bf16, int8, int4) or a session's `TensorEncoder`,
    whose state for this tensor is keyed by `name` (int8:sr, topk and lowrank need one). `into` makes
    each message: `pb.TensorPart` itself (the default) or a message with a `part` field, such as
    `pb.TrainRequest`, whose part is filled in place, so the payload is copied once, into the message
    that is sent, not again for each message it would otherwise be wrapped in.
    """
    wire_codec, payload = _encoder(codec).encode(tensor, key=name)
    message = into()
    header = _part_of(message).tensor
    header.SetInParent()
    header.name = name
    header.shape.extend(tensor.shape)
    header.dtype = dtype_name(tensor.dtype)
    header.codec = wire_codec
    header.total_bytes = len(payload)
    header.data = payload[:chunk_bytes]
    yield message
    for offset in range(chunk_bytes, len(payload), chunk_bytes):
        message = into()
        _part_of(message).chunk.data = payload[offset : offset + chunk_bytes]
        yield message


def tensors_to_parts(
    tensors: Mapping[str, torch.Tensor],
    codec: str | TensorEncoder,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    into: Callable[[], Any] = pb.TensorPart,
) -> Iterator[Any]:
    encoder = _encoder(codec)  # one encoder for all tensors, so a bad codec fails before any part
    for name, tensor in tensors.items():
        yield from tensor_parts(name, tensor, encoder, chunk_bytes, into=into)


class TensorAssembler:
    """Rebuilds tensors from a stream of parts, validating everything a peer could get wrong."""

    def __init__(
        self,
        max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
        max_tensors: int = 4096,
        *,
        max_total_bytes: int | None = None,
        names: frozenset[str] | None = None,
    ) -> None:
        self.max_tensor_bytes = max_tensor_bytes
        self.max_tensors = max_tensors
        # Bounds on all tensors together (payload and decoded size), and the names a receiver expects:
        # both are checked on each tensor's header, before any of its payload is buffered.
        self.max_total_bytes = max_total_bytes
        self.names = names
        self._declared = 0
        self._decoded = 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.bytes_received = 0
        self._header: pb.Tensor | None = None
        self._layout: tuple[tuple[int, ...], torch.dtype, CodecSpec] = ((), torch.float32, RAW)
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
        if self.names is not None and header.name not in self.names:
            raise InvalidArgument(f"unexpected tensor {header.name[:64]!r}; expected {sorted(self.names)}")
        self._layout = _check_header(header, self.max_tensor_bytes)
        self._check_total(header)
        self._header = header
        self._buffer = bytearray()
        self._append(header.data)

    def _check_total(self, header: pb.Tensor) -> None:
        if self.max_total_bytes is None:
            return
        shape, dtype, _ = self._layout
        self._declared += header.total_bytes
        self._decoded += math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if max(self._declared, self._decoded) > self.max_total_bytes:
            raise ResourceExhausted(
                f"request of more than {self.max_total_bytes} bytes (tensor {header.name!r} brings it to "
                f"{max(self._declared, self._decoded)}); the edge's limit is --max-request-bytes"
            )

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
        shape, dtype, spec = self._layout
        if len(self._buffer) != header.total_bytes:
            got, want = len(self._buffer), header.total_bytes
            raise InvalidArgument(f"tensor {header.name!r} truncated: received {got} of {want} bytes")
        try:
            self.tensors[header.name] = decode_payload(spec, self._buffer, shape, dtype)
        except InvalidArgument as err:  # a payload of the right size with bad content (topk indices)
            raise InvalidArgument(f"tensor {header.name!r}: {err.message}") from None
        self._buffer = bytearray()


def _check_header(header: pb.Tensor, max_tensor_bytes: int) -> tuple[tuple[int, ...], torch.dtype, CodecSpec]:
    """(shape, dtype, codec) of a header that is consistent, before any of its payload is buffered."""
    name = header.name
    if header.dtype not in DTYPES:
        raise InvalidArgument(
            f"tensor {name!r}: unknown dtype {header.dtype!r}; supported: {', '.join(DTYPES)}"
        )
    try:
        spec = parse_codec(header.codec)
    except InvalidArgument as err:
        raise InvalidArgument(f"tensor {name!r}: {err.message}") from None
    shape = tuple(int(d) for d in header.shape)
    if any(d < 0 for d in shape) or len(shape) > _MAX_DIMS:
        raise InvalidArgument(f"tensor {name!r}: invalid shape {list(shape)}")
    dtype = DTYPES[header.dtype]
    # topk and lowrank decode to far more than they send: bound what the receiver allocates too.
    dense = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if dense > max_tensor_bytes:
        raise ResourceExhausted(f"tensor {name!r}: decodes to {dense} bytes; limit is {max_tensor_bytes}")
    want = payload_bytes(spec, shape, dtype)
    if want != header.total_bytes:
        raise InvalidArgument(
            f"tensor {name!r}: shape {list(shape)} as {header.dtype}/{header.codec} needs {want} bytes, "
            f"header declares {header.total_bytes}"
        )
    return shape, dtype, spec


def parts_to_tensors(
    parts: Iterable[pb.TensorPart], max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
) -> dict[str, torch.Tensor]:
    assembler = TensorAssembler(max_tensor_bytes)
    for part in parts:
        assembler.add(part)
    return assembler.finish()
