"""`splitft demo`: fine-tune a real pretrained model split across a local edge (parser only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import codec, handled_by
from splitft.model.schemes import QUANTIZE_SCHEMES


def register(commands: argparse._SubParsersAction) -> None:
    """Add `demo` to the top-level `commands`."""
    demo = commands.add_parser("demo", help="fine-tune a real pretrained model split across a local edge")
    demo.add_argument(
        "--model-dir", default=None, help="a supported model (default: packaged all-MiniLM-L6-v2)"
    )
    demo.add_argument(
        "--sdk",
        action="store_true",
        help="one device driving the SDK directly (no control plane), with a per-step progress bar",
    )
    demo.add_argument("--devices", type=int, default=3, help="device agents in the whole-loop demo")
    demo.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="whole loop: Dirichlet alpha of the devices' class shares (non-IID; small is more skewed)",
    )
    demo.add_argument(
        "--no-federated",
        dest="federated",
        action="store_false",
        help="whole loop: skip the federated job that follows the independent one",
    )
    demo.add_argument("--rounds", type=int, default=3, help="federated job: rounds")
    demo.add_argument("--local-steps", type=int, default=6, help="federated job: steps per device and round")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--max-length", type=int, default=64)
    demo.add_argument("--lr", type=float, default=2e-3)
    demo.add_argument("--device-layers", type=int, default=2)
    demo.add_argument("--head-layers", type=int, default=1)
    demo.add_argument(
        "--codec",
        type=codec,
        default="raw",
        help="wire codec, e.g. int8 or activations=int8,gradients=lowrank:8 (default raw)",
    )
    demo.add_argument(
        "--quantize",
        choices=QUANTIZE_SCHEMES,
        default="none",
        help="frozen weights in int8 or nf4: the edge's trunk, and with --sdk the device's blocks too",
    )
    demo.add_argument("--max-per-class", type=int, default=160)
    demo.add_argument("--out", default="runs/demo", help="where the adapter and logs go")
    handled_by(demo, "demo:run")
