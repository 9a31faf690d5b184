"""`splitft emulator build`: the layer-dropped (optionally distilled) emulator of a split (parser only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import handled_by


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `emulator` group to the top-level `commands`."""
    emulator = commands.add_parser(
        "emulator", help="emulators for offsite tuning: train device adapters with no edge"
    ).add_subparsers(dest="emulator_command", required=True)
    build = emulator.add_parser(
        "build",
        help="write a model directory whose trunk is uniformly layer-dropped to --keep blocks "
        "(device blocks, embeddings and head unchanged), optionally distilled; prints a JSON report",
    )
    build.add_argument(
        "--model-dir", required=True, metavar="DIR", help="the full model (config.json + safetensors)"
    )
    build.add_argument("--out", required=True, metavar="DIR", help="new directory for the emulator")
    build.add_argument("--keep", required=True, type=int, metavar="K", help="trunk blocks kept, 1..n")
    build.add_argument(
        "--device-layers", required=True, type=int, metavar="k", help="the split's device blocks"
    )
    build.add_argument(
        "--head-layers", type=int, default=0, metavar="j", help="the split's head blocks (default 0)"
    )
    build.add_argument(
        "--distill-steps",
        type=int,
        default=0,
        metavar="N",
        help="distillation steps (default 0: layer drop only)",
    )
    build.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="UTF-8 text, one example per line, to distil on (default: the demo task's docstrings)",
    )
    build.add_argument("--lr", type=float, default=1e-4, help="distillation learning rate (default 1e-4)")
    build.add_argument("--batch-size", type=int, default=8, help="distillation batch size (default 8)")
    build.add_argument("--max-length", type=int, default=64, help="tokens per example (default 64)")
    build.add_argument("--seed", type=int, default=0)
    handled_by(build, "emulator:build")
