"""Validation of uploaded adapter archives (a gzip'd tar of a peft adapter directory).

The check streams: it gunzips with a bound on the bytes it produces, parses each 512-byte tar header
on its own (no pax, GNU long-name or sparse processing, which would read attacker-sized headers into
memory), and stops at a small member count. So a gzip or tar bomb costs at most the bounds below,
and the check runs in a worker thread, never on the event loop (see routes/device_side.py).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from splitft.errors import InvalidArgument, PayloadTooLarge

# A peft LoRA adapter, or a selection method's sparse deltas (see docs/methods.md): the files each
# layout must have, and those it may have. Nothing else is accepted.
ADAPTER_LAYOUTS = (
    {"adapter_config.json", "adapter_model.safetensors"},
    {"sparse_config.json", "sparse_deltas.safetensors"},
)
OPTIONAL_FILES: tuple[frozenset[str], ...] = (frozenset(), frozenset({"head.safetensors"}))
BLOCK = 512
_READ = 64 * 1024
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one upload may unpack to."""

    max_unpacked_bytes: int = 1024 * 1024 * 1024
    max_members: int = 8


class _Gunzip:
    """Reads the gunzipped bytes of `data`, refusing to produce more than `limit` of them."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data, self._pos, self._limit, self.produced = memoryview(data), 0, limit, 0
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._buffer = bytearray()

    def read_exact(self, size: int) -> bytes | None:
        """`size` bytes, or None at a clean end of stream; InvalidArgument when it ends mid-block."""
        while len(self._buffer) < size:
            if not self._fill(size - len(self._buffer)):
                if self._buffer:
                    raise InvalidArgument("adapter upload is not a readable tar.gz: truncated archive")
                return None
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def _fill(self, want: int) -> bool:
        try:
            pending: bytes | memoryview = self._inflate.unconsumed_tail
            if not pending and self._pos < len(self._data) and not self._inflate.eof:
                pending = self._data[self._pos : self._pos + _READ]
                self._pos += len(pending)
            if not pending:
                if not self._inflate.eof:
                    raise InvalidArgument("adapter upload is not a readable tar.gz: truncated gzip stream")
                return False
            chunk = self._inflate.decompress(pending, max(want, _READ))
        except zlib.error as exc:
            raise InvalidArgument(f"adapter upload is not a readable tar.gz: {exc}") from None
        self.produced += len(chunk)
        if self.produced > self._limit:
            raise PayloadTooLarge(f"adapter archive unpacks to more than {self._limit} bytes")
        self._buffer += chunk
        if self._inflate.eof and (self._inflate.unused_data or self._pos < len(self._data)):
            raise InvalidArgument("adapter upload has data after the end of its gzip stream")
        return True


def _members(stream: _Gunzip, limits: ArchiveLimits) -> Iterator[tarfile.TarInfo]:
    """Each member's header, its data skipped, until the end-of-archive block."""
    count = 0
    while True:
        block = stream.read_exact(BLOCK)
        if block is None:
            raise InvalidArgument("adapter upload is not a readable tar.gz: no end-of-archive marker")
        if block == bytes(BLOCK):
            _check_zero_tail(stream)
            return
        count += 1
        if count > limits.max_members:
            raise PayloadTooLarge(f"adapter archive holds more than {limits.max_members} members")
        try:
            member = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except (tarfile.TarError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"adapter upload is not a readable tar.gz: {exc}") from None
        yield member
        remaining = -(-member.size // BLOCK) * BLOCK
        while remaining > 0:
            step = min(remaining, _READ)
            if stream.read_exact(step) is None:
                raise InvalidArgument("adapter upload is not a readable tar.gz: truncated member")
            remaining -= step


def _check_zero_tail(stream: _Gunzip) -> None:
    """After the end marker a tar holds only zero padding."""
    while (block := stream.read_exact(BLOCK)) is not None:
        if block != bytes(BLOCK):
            raise InvalidArgument("adapter archive has data after its end-of-archive marker")


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name.removeprefix("./")
    if member.type not in _FILE_TYPES:
        kind = "a pax or GNU extended header" if member.type in tarfile.GNU_TYPES + (b"x", b"g") else ""
        raise InvalidArgument(
            f"adapter archive may hold only plain files, found {member.name!r} {kind}".rstrip()
        )
    if not name or name.startswith("/") or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"adapter archive may hold only top-level files, found {member.name!r}")
    return name


def check_adapter_archive(data: bytes, limits: ArchiveLimits | None = None) -> None:
    """InvalidArgument unless `data` is a .tar.gz holding exactly the files of one adapter layout;
    PayloadTooLarge when it unpacks beyond `limits`."""
    limits = limits or ArchiveLimits()
    if not data.startswith(b"\x1f\x8b"):
        raise InvalidArgument("adapter upload must be a gzip'd tar (application/gzip)")
    names: list[str] = []
    for member in _members(_Gunzip(data, limits.max_unpacked_bytes), limits):
        name = _member_name(member)
        if name in names:
            raise InvalidArgument(f"adapter archive holds {name!r} twice")
        names.append(name)
    _check_layout(set(names))


def _check_layout(names: set[str]) -> None:
    for required, optional in zip(ADAPTER_LAYOUTS, OPTIONAL_FILES, strict=True):
        if required <= names:
            extra = names - required - optional
            if extra:
                raise InvalidArgument(
                    f"adapter archive holds files no adapter has: {sorted(extra)} "
                    f"(allowed: {sorted(required | optional)})"
                )
            return
    wanted = " or ".join(str(sorted(layout)) for layout in ADAPTER_LAYOUTS)
    raise InvalidArgument(f"adapter archive lacks the files of an adapter: {wanted}; it has {sorted(names)}")
