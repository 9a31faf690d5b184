"""Codec specs: the one place a codec string is parsed and validated.

Grammar (the same strings travel in the `Tensor.codec` header and in session options)::

    raw | fp16 | bf16 | int8 | int8:sr | int4 | topk:<fraction in (0, 1]>[:ef|:noef]
        | lowrank:<rank >= 1>[:ef|:noef]

`int4` is blockwise 4-bit (32 values per fp16 scale). `sr` asks for stochastic rounding (unbiased
int8, meant for gradients). Sessions choose one codec per direction: activations travel forward
(hidden states), gradients backward. topk and lowrank are gradient-only: a sparsified or low-rank
activation would change the forward pass itself.

`ef` / `noef` turn error feedback (`splitft.compress.feedback`) on or off. The default is what
`splitft bench converge` measured better: on for topk (without it, 1% top-k lost 42% of the loss
on the causal LM, with it 9.6%), off for lowrank (with it, rank 4 lost 8.4% against 4.6% without,
rank 8 3.8% against 2.3%). The canonical string omits the default. What crosses the wire here is
the gradient of the activations, so a residual lands on the next batch's examples, not on the same
parameters as in the convergence results for error feedback (see `feedback`): it is a heuristic
here, kept where it measured better.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from splitft.errors import InvalidArgument

ELEMENTWISE_CODECS: tuple[str, ...] = ("raw", "fp16", "bf16", "int8", "int4")
GRADIENT_ONLY_CODECS: tuple[str, ...] = ("topk", "lowrank")
DIRECTIONS: tuple[str, ...] = ("activations", "gradients")
ACTIVATION_GRAMMAR = "raw | fp16 | bf16 | int8 | int8:sr | int4"
GRAMMAR = ACTIVATION_GRAMMAR + " | topk:<fraction in (0, 1]>[:ef|:noef] | lowrank:<rank >= 1>[:ef|:noef]"
# Error feedback where a codec's string does not say (see the module docstring for the figures).
DEFAULT_ERROR_FEEDBACK = {"topk": True, "lowrank": False}

# A peer controls these strings; refuse long ones before any parsing (and keep messages short).
_MAX_SPEC_CHARS = 64
_DECIMAL = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_RANK = re.compile(r"[1-9]\d{0,5}")  # rank is clamped to min(rows, cols) anyway; 6 digits is plenty


@dataclass(frozen=True)
class CodecSpec:
    """One direction's codec, validated; `str(spec)` is its canonical wire string."""

    name: str  # one of ELEMENTWISE_CODECS or GRADIENT_ONLY_CODECS
    fraction: float | None = None  # topk: share of entries kept, in (0, 1]
    rank: int | None = None  # lowrank: rank of the P Q^T approximation
    stochastic: bool = False  # int8 only: stochastic rounding, so that E[decoded] == x
    # topk/lowrank only: carry what was dropped into the next step; None: the codec's default
    # (DEFAULT_ERROR_FEEDBACK), resolved to a bool when the spec is built.
    error_feedback: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in ELEMENTWISE_CODECS + GRADIENT_ONLY_CODECS:
            raise InvalidArgument(f"unknown codec {self.name!r}; supported: {GRAMMAR}")
        if (self.fraction is not None) != (self.name == "topk"):
            raise InvalidArgument("a fraction is given exactly for topk")
        if (self.rank is not None) != (self.name == "lowrank"):
            raise InvalidArgument("a rank is given exactly for lowrank")
        if self.fraction is not None and not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise InvalidArgument(f"topk fraction must be in (0, 1], got {self.fraction!r}")
        if self.rank is not None and not 1 <= self.rank < 10**6:
            raise InvalidArgument(f"lowrank rank must be an integer >= 1, got {self.rank!r}")
        if self.stochastic and self.name != "int8":
            raise InvalidArgument("stochastic rounding (':sr') exists only for int8")
        if self.error_feedback is not None and self.name not in GRADIENT_ONLY_CODECS:
            raise InvalidArgument("error feedback (':ef', ':noef') is only for topk and lowrank")
        if self.error_feedback is None:
            object.__setattr__(self, "error_feedback", DEFAULT_ERROR_FEEDBACK.get(self.name, False))

    def __str__(self) -> str:
        if self.name == "topk":
            text = f"topk:{self.fraction!r}"
        elif self.name == "lowrank":
            text = f"lowrank:{self.rank}"
        else:
            return "int8:sr" if self.stochastic else self.name
        if self.error_feedback == DEFAULT_ERROR_FEEDBACK[self.name]:
            return text
        return text + (":ef" if self.error_feedback else ":noef")

    @property
    def is_lossless(self) -> bool:
        return self.name == "raw"

    @property
    def is_stateful(self) -> bool:
        """Whether an encoder keeps state between steps: error feedback, a warm-started basis, or
        the random stream of stochastic rounding (reseeding it per step would repeat the noise)."""
        return self.name in GRADIENT_ONLY_CODECS or self.stochastic


def _fail(text: str, why: str) -> InvalidArgument:
    shown = text if len(text) <= _MAX_SPEC_CHARS else text[:_MAX_SPEC_CHARS] + "..."
    return InvalidArgument(f"invalid codec {shown!r}: {why}; supported: {GRAMMAR}")


def parse_codec(text: str) -> CodecSpec:
    """Parse and validate one codec string (see the module grammar)."""
    if not isinstance(text, str) or len(text) > _MAX_SPEC_CHARS:
        raise _fail(str(text), "not a codec string")
    name, *args = text.split(":")
    if name in ELEMENTWISE_CODECS and not args:
        return CodecSpec(name)
    if name == "int8" and args == ["sr"]:
        return CodecSpec("int8", stochastic=True)
    if name in GRADIENT_ONLY_CODECS and len(args) in (1, 2):
        if len(args) == 2 and args[1] not in ("ef", "noef"):
            raise _fail(text, f"the only options after {name}'s parameter are 'ef' and 'noef'")
        feedback = None if len(args) == 1 else args[1] == "ef"
        return _parse_parameter(text, name, args[0], error_feedback=feedback)
    if name in ELEMENTWISE_CODECS:
        raise _fail(text, f"{name} takes no options" if name != "int8" else "int8's only option is 'sr'")
    if name in GRADIENT_ONLY_CODECS:
        raise _fail(text, f"{name} needs a parameter")
    raise _fail(text, f"unknown codec {name!r}")


def _parse_parameter(text: str, name: str, arg: str, *, error_feedback: bool | None) -> CodecSpec:
    if name == "topk":
        if not _DECIMAL.fullmatch(arg) or not 0 < float(arg) <= 1:
            raise _fail(text, "topk's fraction must be a decimal number in (0, 1]")
        return CodecSpec("topk", fraction=float(arg), error_feedback=error_feedback)
    if not _RANK.fullmatch(arg):
        raise _fail(text, "lowrank's rank must be an integer >= 1 (at most 6 digits)")
    return CodecSpec("lowrank", rank=int(arg), error_feedback=error_feedback)


@dataclass(frozen=True)
class DirectionCodecs:
    """A session's codecs: `activations` travel forward, `gradients` backward."""

    activations: CodecSpec
    gradients: CodecSpec

    def __post_init__(self) -> None:
        if self.activations.name in GRADIENT_ONLY_CODECS:
            raise InvalidArgument(
                f"codec {str(self.activations)!r} is for gradients only; "
                f"activations take {ACTIVATION_GRAMMAR}"
            )

    @property
    def is_lossless(self) -> bool:
        return self.activations.is_lossless and self.gradients.is_lossless

    def to_wire(self) -> tuple[str, str]:
        """(activations, gradients) as canonical codec strings."""
        return str(self.activations), str(self.gradients)

    @classmethod
    def from_wire(cls, activations: str, gradients: str) -> DirectionCodecs:
        return cls(_parse_direction("activations", activations), _parse_direction("gradients", gradients))

    @property
    def family(self) -> str:
        """The codec names without parameters (`int8`, `activations=int8,gradients=topk`): a
        bounded set, for metric labels, whatever fractions and ranks peers choose."""
        act, grad = self.activations.name, self.gradients.name
        return act if act == grad else f"activations={act},gradients={grad}"

    def __str__(self) -> str:
        """One string for one field: `int8` when both agree, else `activations=A,gradients=G`."""
        act, grad = self.to_wire()
        return act if act == grad else f"activations={act},gradients={grad}"


def parse_codecs(codec: str | Mapping[str, str]) -> DirectionCodecs:
    """Both directions from `"int8"`, `"activations=int8,gradients=topk:0.01"` or a mapping.

    A mapping (or the `key=value` string form) may name only "activations" and "gradients"; a
    missing direction is "raw".
    """
    if isinstance(codec, str):
        if "=" not in codec:
            spec = parse_codec(codec)
            return DirectionCodecs(spec, spec)
        codec = _split_pairs(codec)
    if not isinstance(codec, Mapping):
        raise InvalidArgument(f"codec must be a string or a mapping of {' and '.join(DIRECTIONS)}")
    unknown = sorted(str(key) for key in codec if key not in DIRECTIONS)
    if unknown:
        raise InvalidArgument(f"unknown codec direction(s) {unknown}; allowed: {', '.join(DIRECTIONS)}")
    return DirectionCodecs.from_wire(codec.get("activations", "raw"), codec.get("gradients", "raw"))


def _parse_direction(direction: str, text: str) -> CodecSpec:
    try:
        return parse_codec(text)
    except InvalidArgument as err:
        raise InvalidArgument(f"{direction}: {err.message}") from None


def _split_pairs(text: str) -> dict[str, str]:
    if len(text) > 3 * _MAX_SPEC_CHARS:
        raise InvalidArgument("codec string too long")
    pairs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key in pairs:
            raise InvalidArgument(
                f"invalid codec {text!r}: expected 'activations=<codec>,gradients=<codec>', "
                "each direction at most once"
            )
        pairs[key] = value
    return pairs
