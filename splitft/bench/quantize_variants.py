"""The variants `splitft bench quantize` compares (fp32, bf16, int8, nf4) and helpers its parts share."""

from __future__ import annotations

from typing import Any

from splitft.bench.common import spread
from splitft.errors import InvalidArgument
from splitft.model.placement import Placement
from splitft.model.quantize import check_available
from splitft.model.schemes import QUANTIZE_SCHEMES

# The variants by name (the `--schemes` of the command): the quantization schemes, and bf16 (no
# quantization, both sides' spans in bfloat16). Every ratio is to `none` (fp32).
VARIANTS = ("none", "bf16", *(s for s in QUANTIZE_SCHEMES if s != "none"))
LABELS = {"none": "fp32", "bf16": "bf16", "int8": "int8", "nf4": "nf4"}


def quantize_of(variant: str) -> str:
    """The quantization scheme of a variant (`none` for bf16)."""
    return "none" if variant == "bf16" else variant


def dtype_of(variant: str) -> str:
    """The spans' dtype of a variant (float32 but for bf16)."""
    return "bfloat16" if variant == "bf16" else "float32"


def check_variant(variant: str) -> None:
    """InvalidArgument unless `variant` runs on this CPU (bf16: probed; a scheme: its library)."""
    if variant == "bf16":
        Placement(dtype="bfloat16").resolve()
    else:
        check_available(variant, "cpu")


def parse_shape(shape: str) -> tuple[int, int]:
    """ "8x128" -> (8, 128): a batch and its tokens."""
    batch, _, tokens = shape.partition("x")
    if not (batch.isdigit() and tokens.isdigit() and int(batch) > 0 and int(tokens) > 0):
        raise InvalidArgument(f"a memory shape is BATCHxTOKENS with both >= 1, e.g. 1x32; got {shape!r}")
    return int(batch), int(tokens)


def order(schemes: tuple[str, ...], round_index: int) -> tuple[str, ...]:
    return schemes if round_index % 2 == 0 else schemes[::-1]


def with_ratios(samples: dict[str, list[float]], digits: int) -> dict[str, Any]:
    """Each variant's spread, by label, with its median over fp32's."""
    fp32 = spread(samples["none"], digits)["median"]
    rows = {LABELS[s]: spread(v, digits) for s, v in samples.items()}
    return {label: {**row, "vs_fp32": round(row["median"] / fp32, 3)} for label, row in rows.items()}
