"""`splitft plan front|run|project`: the Pareto front of points, the split planner, and a plan on another
device class (parsers only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import byte_size, codec_direction, handled_by, name_list, positive_float
from splitft.model.schemes import PRECISIONS


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `plan` group to the top-level `commands`."""
    plan = commands.add_parser("plan", help="choose the split per device class").add_subparsers(
        dest="plan_command", required=True
    )
    front = plan.add_parser("front", help="the Pareto front of a JSON list of points (JSON)")
    front.add_argument("--input", required=True, help='a JSON list of objects: {"name": ..., numbers...}')
    front.add_argument("--maximize", type=name_list, action="append", default=[], help="fields; repeatable")
    front.add_argument("--minimize", type=name_list, action="append", default=[], help="fields; repeatable")
    handled_by(front, "plan:front")
    _register_run(plan)
    project = plan.add_parser(
        "project", help="a plan.json's measurements on another device class: table (and --out's files)"
    )
    project.add_argument("--plan", required=True, help="a plan.json from `splitft plan run`")
    _device_class_arguments(project)
    project.add_argument("--out", default=None, help="also write OUT/plan.json and OUT/front.png")
    handled_by(project, "plan:project")


def _device_class_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device-memory", type=byte_size, required=True, help="memory for the model: 512MB")
    parser.add_argument("--uplink-mbps", type=positive_float, required=True)
    parser.add_argument("--downlink-mbps", type=positive_float, required=True)
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--device-flops", type=positive_float, help="device FLOP/s (vs the plan machine)")
    speed.add_argument("--speed-factor", type=positive_float, help="device speed / plan machine (default 1)")


def _register_run(plan: argparse._SubParsersAction) -> None:
    run = plan.add_parser(
        "run",
        help="measure split candidates for a model and a device class: table, plan.json, front.png",
    )
    run.add_argument("--model-dir", required=True, help="a Hugging Face sequence-classification model")
    run.add_argument("--model", default=None, help="its name on the edges (default: the directory's name)")
    _device_class_arguments(run)
    run.add_argument("--data", default=None, help='JSONL {"text", "label"} (default: the demo task)')
    run.add_argument("--out", required=True, help="writes OUT/plan.json and OUT/front.png")
    run.add_argument("--max-candidates", type=int, default=12, help="measured candidates at most")
    run.add_argument("--budget-s", type=positive_float, default=900.0, help="wall-clock bound of the run")
    run.add_argument(
        "--splits", type=name_list, default=None, help="K:J pairs, e.g. 1:0,2:1 (default: a few)"
    )
    run.add_argument("--ranks", type=name_list, default=["4", "16"], help="LoRA ranks, e.g. 4,16")
    for direction, default in (("activations", "raw,int8"), ("gradients", "raw,int8")):
        run.add_argument(
            f"--{direction}-codecs",
            type=codec_direction(direction),
            default=codec_direction(direction)(default),
            help=f"{direction} codecs, comma-separated (default {default})",
        )
    run.add_argument("--precisions", type=name_list, default=list(PRECISIONS), help="fp32,bf16,int8")
    run.add_argument("--train-steps", type=int, default=12, help="steps of each candidate's quality run")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-length", type=int, default=64)
    run.add_argument("--eval-examples", type=int, default=64, help="held-out examples scored")
    run.add_argument("--lr", type=positive_float, default=1e-3)
    run.add_argument("--loss-tolerance", type=float, default=0.05, help="recommendation rule (relative)")
    run.add_argument("--threads", type=int, default=1, help="torch threads in the edge and each worker")
    run.add_argument("--seed", type=int, default=0)
    handled_by(run, "plan:run")
