"""Secure aggregation with pairwise additive masks (Bonawitz et al. 2017, without its dropout shares).

Each device of a round makes a fresh X25519 key pair and the control plane relays the public keys.
Devices i and j derive the same 32-byte seed from X25519(own private, peer public) through HKDF-SHA256
(bound to the job, round and attempt and to the two device names), and expand it with ChaCha20 into
a mask vector in Z/2^64. Device i sends its fixed-point weighted update (`fixedpoint.encode`) plus
the masks of the peers named after it and minus those named before it; in the sum over the round's
members every mask appears once with each sign and cancels exactly, so the control plane learns
sum_k w_k x_k and nothing it could attribute to one device. One masked vector alone is uniform in
Z/2^64 to anyone without one of the device's pairwise seeds.

ChaCha20 (a cryptographic stream cipher, `cryptography`) is the mask generator rather than a NumPy
bit generator: PCG64's state can be recovered from its outputs, ChaCha20's key cannot, and it costs
the same. Keys are single use (one pair per device, round and attempt), so the all-zero nonce is safe.

What it does not do: recover the masks of a device that drops out after the members are fixed
(SecAgg's Shamir shares of each key); the round is redone without it instead (docs/federated.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from splitft.errors import InvalidArgument
from splitft.federated.fixedpoint import Layout, add, decode_sum, encode, flatten, unflatten

KEY_BYTES = 32  # an X25519 public key, raw
MIN_MEMBERS = 2  # the "sum" of one update is that update: secure aggregation needs two or more
HKDF_INFO = b"splitft-secagg-v1"
_NONCE = bytes(16)  # ChaCha20's 16-byte counter+nonce: zero, the key being used once


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 key pair for one round (the private key never leaves the device)."""
    return X25519PrivateKey.generate()


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key, what the control plane relays."""
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_public_key(data: bytes) -> X25519PublicKey:
    """A peer's public key from its raw bytes; InvalidArgument unless 32 bytes."""
    if not isinstance(data, bytes) or len(data) != KEY_BYTES:
        raise InvalidArgument(f"an X25519 public key is {KEY_BYTES} raw bytes")
    return X25519PublicKey.from_public_bytes(data)


def pair_seed(private: X25519PrivateKey, me: str, peer: str, peer_key: bytes, context: str) -> bytes:
    """The 32-byte seed devices `me` and `peer` share: HKDF-SHA256 of their X25519 secret, bound to
    `context` (job, round, attempt) and to the pair (names sorted, so both derive the same)."""
    if me == peer:
        raise InvalidArgument(f"device {me!r} cannot pair with itself")
    public = check_public_key(peer_key)
    try:
        shared = private.exchange(public)
    except ValueError:  # an all-zero shared secret: a small-order point, never an honest key
        raise InvalidArgument(f"the public key of {peer!r} is not a usable X25519 key") from None
    first, second = sorted((me, peer))
    info = b"|".join((HKDF_INFO, context.encode(), first.encode(), second.encode()))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def mask_vector(seed: bytes, size: int) -> np.ndarray:
    """`size` uniform uint64 from ChaCha20 keyed by `seed` (little-endian, platform independent)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * size))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


@dataclass(frozen=True)
class MaskedUpdate:
    """What a device uploads: its masked vector and the layout to read the sum with."""

    layout: Layout
    vector: np.ndarray  # uint64, layout.size entries

    def to_bytes(self) -> bytes:
        return self.vector.astype("<u8").tobytes()


def mask_update(
    state: Mapping[str, Any],
    weight: int,
    *,
    me: str,
    private: X25519PrivateKey,
    members: Mapping[str, bytes],
    context: str,
) -> MaskedUpdate:
    """Device `me`'s masked contribution: encode(weight * state) + masks of later names - earlier.

    `members` maps every member's name (`me` included, with its own public key) to its public key.
    """
    if me not in members:
        raise InvalidArgument(f"device {me!r} is not among the round's members")
    if members[me] != public_bytes(private):
        raise InvalidArgument(f"the members' key of {me!r} is not this device's public key")
    if len(members) < MIN_MEMBERS:
        raise InvalidArgument(f"secure aggregation needs at least {MIN_MEMBERS} members, got {len(members)}")
    layout = Layout.of_state(state)
    vector = encode(flatten(state, layout), weight, len(members))
    for peer in sorted(members):
        if peer == me:
            continue
        mask = mask_vector(pair_seed(private, me, peer, members[peer], context), layout.size)
        vector = vector + mask if peer > me else vector - mask  # uint64: modulo 2^64
    return MaskedUpdate(layout, vector)


def read_masked(data: bytes, layout: Layout) -> np.ndarray:
    """An uploaded masked vector: exactly 8 bytes per layout entry, little-endian uint64."""
    if len(data) != 8 * layout.size:
        raise InvalidArgument(
            f"a masked update of this layout is {8 * layout.size} bytes ({layout.size} uint64), "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype="<u8").astype(np.uint64)


def unmask_sum(
    vectors: Sequence[np.ndarray], weights: Sequence[int], layout: Layout
) -> dict[str, np.ndarray]:
    """The FedAvg state dict from EVERY member's masked vector and the members' weights (clear)."""
    if len(vectors) < MIN_MEMBERS or len(vectors) != len(weights):
        raise InvalidArgument(f"need one masked vector per member, at least {MIN_MEMBERS}")
    for index, vector in enumerate(vectors):
        if vector.dtype != np.uint64 or vector.shape != (layout.size,):
            raise InvalidArgument(f"masked vector {index} is not {layout.size} uint64")
    return unflatten(decode_sum(add(vectors), int(sum(int(w) for w in weights))), layout)
