"""Argument types and helpers the command-group parsers share (light: no model stack)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from splitft.compress import parse_codecs  # torch-free: only the spec parser
from splitft.errors import InvalidArgument
from splitft.memory.units import parse_bytes

CODEC_HELP = "a codec to measure, e.g. int8 or activations=int8,gradients=topk:0.01; repeat (default: all)"


def codec(text: str) -> str:
    """A codec argument in its canonical form; argparse turns the error into a usage message (exit 2)."""
    try:
        return str(parse_codecs(text))
    except InvalidArgument as err:
        raise argparse.ArgumentTypeError(err.message) from None


def byte_size(text: str) -> int:
    """A byte count: an integer, or with a binary suffix (`512M`, `8G`, `1.5GiB`)."""
    try:
        return parse_bytes(text)
    except InvalidArgument as err:
        raise argparse.ArgumentTypeError(err.message) from None


def device_memory(text: str) -> dict[str, int]:
    """Memory per device like `0=70G,1=70G,cpu=100G`."""
    found: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        device, sep, size = item.partition("=")
        if not sep or not device.strip():
            raise argparse.ArgumentTypeError(f"expected DEVICE=BYTES like 0=70G, got {item!r}")
        found[device.strip()] = byte_size(size)
    if not found:
        raise argparse.ArgumentTypeError(f"expected DEVICE=BYTES,... like 0=70G,1=70G, got {text!r}")
    return found


def session_counts(text: str) -> list[int]:
    """Concurrent session counts like `1,2,4,8`."""
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,4,8, got {text!r}") from None


def name_list(text: str) -> list[str]:
    """A comma-separated list like `llama,bert` or `1x64,4x64`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return names


def handled_by(parser: argparse.ArgumentParser, handler: str) -> argparse.ArgumentParser:
    """Run `handler` ("module:function" in `splitft.cli.commands`) when this command is chosen.

    A name, not the function: the command modules import the model stack, the edge or the control
    plane at module level, and `main` imports only the one the chosen command needs.
    """
    parser.set_defaults(handler=handler)
    return parser


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def codec_direction(direction: str) -> Callable[[str], list[str]]:
    """A comma-separated list of one direction's codecs (`activations` or `gradients`), canonical."""

    def parse(text: str) -> list[str]:
        names = name_list(text)
        try:
            return [str(getattr(parse_codecs({direction: name}), direction)) for name in names]
        except InvalidArgument as err:
            raise argparse.ArgumentTypeError(err.message) from None

    return parse


def add_model_shape(
    parser: argparse.ArgumentParser,
    *,
    layers: int,
    hidden: int,
    batch: int,
    tokens: int,
    families: list[str] | None = None,
    tokens_help: str | None = None,
) -> None:
    """A bench's synthetic model and batch: `--family` (first of `families` the default; none when
    the bench has one family), `--layers`, `--hidden`, `--batch`, `--tokens`, in that order."""
    if families is not None:
        parser.add_argument("--family", default=families[0], choices=families)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--tokens", type=int, default=tokens, help=tokens_help)


def add_split_layers(parser: argparse.ArgumentParser, *, head_layers: int) -> None:
    """Where a bench splits its model: `--device-layers` (1) on the device, `--head-layers` after the edge."""
    parser.add_argument("--device-layers", type=int, default=1)
    parser.add_argument("--head-layers", type=int, default=head_layers)


def add_report_options(parser: argparse.ArgumentParser, *, tables: bool = False) -> None:
    """`--json PATH` (the report also written there) and `--markdown` (the report's table, or
    `tables`, printed instead of the JSON): last among a bench's options."""
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the JSON report here")
    shown = "tables" if tables else "table"
    parser.add_argument("--markdown", action="store_true", help=f"print the {shown} instead of JSON")
