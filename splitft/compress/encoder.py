"""Per-direction encoding with state, stateless decoding.

A session holds one `TensorEncoder` per direction it sends (the device: activations forward and
gradients backward; the edge likewise). The encoder owns what must persist between steps: the error
feedback residual and PowerSGD's warm-start basis, one of each per tensor name, and a generator
seeded from the session, so stochastic rounding and the first basis are reproducible per session.
The receiver needs none of it: `decode_payload` rebuilds a tensor from the codec string in the
header, the shape, the dtype and the bytes, and validates the size before touching the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from splitft.compress import elementwise, lowrank, topk
from splitft.compress.feedback import ErrorFeedback
from splitft.compress.spec import ELEMENTWISE_CODECS, CodecSpec, parse_codec
from splitft.errors import InvalidArgument

RAW = CodecSpec("raw")


class _Stream:
    """State for one tensor name: residual and (for lowrank) the warm-start basis."""

    def __init__(self, spec: CodecSpec, generator: torch.Generator) -> None:
        self.feedback = ErrorFeedback() if spec.error_feedback else None
        self.powersgd = lowrank.PowerSGD(spec.rank, generator) if spec.rank is not None else None


class TensorEncoder:
    """Encodes one direction's tensors under one codec, keeping per-name state between calls."""

    def __init__(self, spec: CodecSpec | str, seed: int = 0) -> None:
        self.spec = parse_codec(spec) if isinstance(spec, str) else spec
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._streams: dict[str, _Stream] = {}

    def encode(self, tensor: torch.Tensor, key: str = "") -> tuple[str, bytes]:
        """(codec string for the header, payload). `key` (the tensor's name) selects the state.

        Integer and bool tensors always go raw, whatever the codec. A tensor on an accelerator is
        copied to the CPU first: the payload is bytes in host memory.
        """
        tensor = tensor.detach().cpu()
        if not tensor.dtype.is_floating_point:
            return str(RAW), elementwise.raw_bytes(tensor)
        if self.spec.name in ELEMENTWISE_CODECS:
            return str(self.spec), elementwise.encode(tensor, self.spec, self._generator)
        stream = self._streams.setdefault(key, _Stream(self.spec, self._generator))
        x = stream.feedback.compensate(tensor) if stream.feedback else tensor.detach()
        payload = self._compress(x, stream)
        if stream.feedback:
            # Record exactly what the receiver will rebuild (same decoder, same dtype).
            sent = decode_payload(str(self.spec), payload, tuple(tensor.shape), tensor.dtype)
            stream.feedback.record(x, sent)
        return str(self.spec), payload

    def _compress(self, x: torch.Tensor, stream: _Stream) -> bytes:
        if stream.powersgd is not None:
            return stream.powersgd.encode(x)
        assert self.spec.fraction is not None  # CodecSpec guarantees it for topk
        return topk.encode(x, self.spec.fraction)

    def residual(self, key: str = "") -> torch.Tensor | None:
        """What error feedback still owes the receiver for tensor `key` (None: nothing yet)."""
        stream = self._streams.get(key)
        return stream.feedback.residual if stream and stream.feedback else None

    def reset(self) -> None:
        """Forget residuals and bases (e.g. when a session restarts its steps)."""
        self._streams.clear()

    def state(self) -> tuple[bytes, dict[str, torch.Tensor]]:
        """Everything this encoder carries between steps, for a checkpoint: its generator's state
        and, per tensor name, the error-feedback residual ("residual/NAME") and the low-rank
        warm-start basis ("basis/NAME"). `load_state` on an encoder of the same codec continues
        exactly where this one is."""
        tensors: dict[str, torch.Tensor] = {}
        for key, stream in self._streams.items():
            if stream.feedback is not None and stream.feedback.residual is not None:
                tensors[f"residual/{key}"] = stream.feedback.residual.detach().to("cpu", copy=True)
            if stream.powersgd is not None and stream.powersgd.q is not None:
                tensors[f"basis/{key}"] = stream.powersgd.q.detach().to("cpu", copy=True)
        return bytes(self._generator.get_state().numpy().tobytes()), tensors

    def load_state(self, generator: bytes, tensors: Mapping[str, torch.Tensor]) -> None:
        """Continue from `state()`'s output; everything is checked before anything changes, and a
        state this codec cannot carry (a residual without error feedback, a basis of another rank)
        is InvalidArgument."""
        rng = generator_state(generator, "encoder generator")
        if tensors and self.spec.name in ELEMENTWISE_CODECS:
            raise InvalidArgument(
                f"encoder state {sorted(tensors)[:3]} does not fit codec {str(self.spec)!r}: it keeps none"
            )
        streams: dict[str, _Stream] = {}
        for name, tensor in tensors.items():
            kind, _, key = name.partition("/")
            if kind not in ("residual", "basis") or not tensor.dtype.is_floating_point:
                raise InvalidArgument(f"encoder state {name!r}: not a residual/ or basis/ float tensor")
            stream = streams.setdefault(key, _Stream(self.spec, self._generator))
            if kind == "residual" and stream.feedback is not None:
                stream.feedback.residual = tensor.detach().clone()
            elif kind == "basis" and stream.powersgd is not None and _fits_basis(tensor, self.spec):
                stream.powersgd.q = tensor.detach().to(torch.float32, copy=True)
            else:
                raise InvalidArgument(f"encoder state {name!r} does not fit codec {str(self.spec)!r}")
        self._generator.set_state(rng)
        self._streams = streams


def _fits_basis(tensor: torch.Tensor, spec: CodecSpec) -> bool:
    return tensor.dim() == 2 and spec.rank is not None and 1 <= tensor.shape[1] <= spec.rank


def generator_state(data: bytes, what: str) -> torch.Tensor:
    """A CPU `torch.Generator` state from its bytes, checked by loading it into a scratch generator
    (a wrong length is InvalidArgument naming `what`)."""
    state = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    )
    try:
        torch.Generator().set_state(state)
    except (RuntimeError, ValueError) as exc:
        raise InvalidArgument(f"{what}: not a CPU generator state ({len(data)} bytes): {exc}") from None
    return state


def payload_bytes(spec: CodecSpec, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """The exact payload size of a tensor of `shape`/`dtype` under `spec`."""
    if not dtype.is_floating_point:
        return elementwise.payload_bytes(shape, dtype, RAW)
    if spec.fraction is not None:
        return topk.payload_bytes(shape, spec.fraction)
    if spec.rank is not None:
        return lowrank.payload_bytes(shape, spec.rank)
    return elementwise.payload_bytes(shape, dtype, spec)


def decode_payload(
    codec: str | CodecSpec, data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """Rebuild a tensor from its header's codec string and its payload; bad input is InvalidArgument."""
    spec = parse_codec(codec) if isinstance(codec, str) else codec
    want = payload_bytes(spec, shape, dtype)
    if len(data) != want:
        raise InvalidArgument(
            f"codec {str(spec)!r}, shape {list(shape)}: payload of {len(data)} bytes, expected {want}"
        )
    if not dtype.is_floating_point:
        return elementwise.decode(data, shape, dtype, RAW)
    if spec.fraction is not None:
        return topk.decode(data, shape, dtype, spec.fraction)
    if spec.rank is not None:
        return lowrank.decode(data, shape, dtype, spec.rank)
    return elementwise.decode(data, shape, dtype, spec)
