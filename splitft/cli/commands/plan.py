"""`splitft plan front|run|project`: the Pareto front of a JSON list of points, the split planner, and a
plan projected onto another device class."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from splitft.errors import InvalidArgument, NotFound
from splitft.plan.front import Objectives, pareto_front


def front(args: argparse.Namespace) -> int:
    """Print the front of `--input`'s points as JSON, best first by the first objective."""
    objectives = Objectives(
        tuple(name for group in args.maximize for name in group),
        tuple(name for group in args.minimize for name in group),
    )
    points = _read_points(Path(args.input))
    chosen = pareto_front(points, objectives.maximize, objectives.minimize)
    first = objectives.names[0]
    best_first = sorted(chosen, key=lambda p: float(p[first]), reverse=first in objectives.maximize)
    out = [{"name": p["name"], **{name: p[name] for name in objectives.names}} for p in best_first]
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


def _read_points(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects, each with a string `name`; InvalidArgument naming what is wrong."""
    if not path.is_file():
        raise NotFound(f"--input {path}: no such file")
    try:
        points = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"--input {path}: not JSON ({exc})") from None
    if not isinstance(points, list):
        raise InvalidArgument(f"--input {path}: expected a JSON list of objects, got {type(points).__name__}")
    names: set[str] = set()
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            raise InvalidArgument(f"--input {path}: point #{i} is not an object")
        name = point.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"--input {path}: point #{i} has no string field 'name'")
        if name in names:
            raise InvalidArgument(f"--input {path}: point {name!r} appears twice")
        names.add(name)
    return points


def run(args: argparse.Namespace) -> int:
    """Measure the candidates, print the table, write plan.json and front.png."""
    from splitft.bench.plan import PlanConfig, run_plan
    from splitft.bench.plan_report import render_table

    config = PlanConfig.from_args(args)
    plan = run_plan(config)
    render_table(plan)
    return 0


def project(args: argparse.Namespace) -> int:
    """Project a plan file's measurements onto another device class: table, and files with --out."""
    from pydantic import ValidationError

    from splitft.bench.plan_report import render_table, write_plot
    from splitft.plan.choice import PlanFile, plan_for_class

    source = Path(args.plan)
    if not source.is_file():
        raise NotFound(f"--plan {source}: no such file")
    try:
        plan = PlanFile.model_validate_json(source.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise InvalidArgument(f"--plan {source}: not a plan file: {exc.errors()[0]['msg']}") from None
    planned = plan_for_class(plan, device_class(args))
    render_table(planned)
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.json").write_text(planned.model_dump_json(indent=2) + "\n")
        write_plot(planned, out / "front.png")
    return 0


def device_class(args: argparse.Namespace) -> Any:
    """The device class of `plan run|project`'s arguments (InvalidArgument when inconsistent)."""
    from pydantic import ValidationError

    from splitft.plan.choice import DeviceClass

    try:
        return DeviceClass(
            memory_bytes=args.device_memory,
            uplink_mbps=args.uplink_mbps,
            downlink_mbps=args.downlink_mbps,
            speed_factor=args.speed_factor,
            flops=args.device_flops,
        )
    except ValidationError as exc:
        raise InvalidArgument(f"device class: {exc.errors()[0]['msg']}") from None
