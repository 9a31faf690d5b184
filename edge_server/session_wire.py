"""What the transport keeps per session: its codecs, parsed once at OpenSession, the encoders
of what this edge sends, and the window of answers to requests a device may retry
(`edge_server.replay`).

The compute (`edge_server.session.TrunkSession`) never sees the wire; the session manager keeps a
`SessionWire` next to each session and the servicer encodes with it, under the session's lock
(the encoders carry state from one step to the next).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_server.replay import ReplayWindow
from splitft.compress import DirectionCodecs
from splitft.compress.encoder import TensorEncoder

# The edge's send directions, by the tensor each one carries.
HIDDEN = "hidden"  # trunk outputs, with the activations codec
GRAD = "grad"  # input gradients, with the gradients codec


@dataclass
class SessionWire:
    """One session's codecs, its per-direction encoders (error feedback, random streams) and its
    replay window."""

    codecs: DirectionCodecs
    encoders: dict[str, TensorEncoder]
    replay: ReplayWindow = field(default_factory=ReplayWindow)

    @classmethod
    def open(cls, codecs: DirectionCodecs, seed: int, replay_bytes: int | None = None) -> SessionWire:
        """Fresh encoders for a new session; each direction's random stream is seeded from `seed`.
        `replay_bytes` bounds the answers kept for retries (default: one request's limit)."""
        encoders = {
            HIDDEN: TensorEncoder(codecs.activations, seed=seed ^ 0xAC7),
            GRAD: TensorEncoder(codecs.gradients, seed=seed ^ 0x6AD),
        }
        replay = ReplayWindow() if replay_bytes is None else ReplayWindow(replay_bytes)
        return cls(codecs, encoders, replay)

    @property
    def label(self) -> str:
        """The codec names without parameters: the bounded metric label (see `DirectionCodecs.family`)."""
        return self.codecs.family

    def __str__(self) -> str:
        return str(self.codecs)
