"""`splitft device enroll|run`: the device agent (parsers only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import byte_size, handled_by, positive_float


def register(commands: argparse._SubParsersAction) -> None:
    """Add `device enroll` and `device run` to the top-level `commands`."""
    device = commands.add_parser("device", help="the device agent").add_subparsers(
        dest="device_command", required=True
    )
    _register_enroll(device)
    _register_run(device)


def _register_enroll(device: argparse._SubParsersAction) -> None:
    enroll = device.add_parser("enroll", help="trade an enrollment token for a credential file")
    enroll.add_argument(
        "--control-plane",
        required=True,
        metavar="URL",
        help="https:// (http:// only to loopback or --insecure)",
    )
    enroll.add_argument(
        "--token",
        required=True,
        help="the one-time enrollment token from POST /v1/devices (it pins the CA the device will trust)",
    )
    enroll.add_argument(
        "--ca",
        default=None,
        metavar="PEM",
        help="CA that verifies the control plane's HTTPS (default: the CA the token pins, else the system's)",
    )
    enroll.add_argument(
        "--insecure", action="store_true", help="allow a plaintext http:// control plane on another host"
    )
    enroll.add_argument("--out", required=True, help="credential file to write (0600)")
    enroll.add_argument("--force", action="store_true")
    handled_by(enroll, "device:enroll")


def _register_run(device: argparse._SubParsersAction) -> None:
    run = device.add_parser("run", help="poll for sessions and train them on local data")
    run.add_argument("--control-plane", default=None, metavar="URL", help="default: the credential file's")
    run.add_argument("--credential", required=True, help="credential file from `device enroll`")
    run.add_argument("--data", required=True, help='JSONL with {"text": ..., "label": int} per line')
    run.add_argument(
        "--model-dir",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="local model directory for a model name the jobs use; repeatable",
    )
    run.add_argument("--max-sessions", type=int, default=None, help="exit after this many sessions")
    run.add_argument("--poll-interval", type=float, default=2.0)
    run.add_argument(
        "--insecure",
        action="store_true",
        help="dial edges in plaintext and allow a plaintext http:// control plane on another host "
        "(local experiments)",
    )
    run.add_argument(
        "--record-dir",
        default=None,
        help="also keep each session's adapter and evaluation logits on a few examples here",
    )
    run.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where sessions of jobs with checkpoint_every keep their last checkpoint, to resume after "
        "their edge dies (default: a temporary directory, removed when the agent exits)",
    )
    run.add_argument(
        "--edge-retry-budget",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long the edge may be unreachable before the session is reported and resumed elsewhere",
    )
    run.add_argument(
        "--class-memory",
        type=byte_size,
        default=None,
        help='this device\'s class for split "auto" '
        "jobs (docs/planning.md): memory for the model, e.g. 512MB; with the two links",
    )
    run.add_argument("--class-uplink-mbps", type=positive_float, default=None)
    run.add_argument("--class-downlink-mbps", type=positive_float, default=None)
    speed = run.add_mutually_exclusive_group()
    speed.add_argument("--class-speed-factor", type=positive_float, default=None, help="vs the plan machine")
    speed.add_argument("--class-flops", type=positive_float, default=None, help="this device's FLOP/s")
    handled_by(run, "device:run")
