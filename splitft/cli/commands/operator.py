"""`splitft jobs|devices|edges ...`: the operator REST API from the command line."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from splitft.cli.commands.operator_client import OperatorClient, resolve
from splitft.cli.commands.watch import watch_job
from splitft.errors import InvalidArgument, NotFound, SplitftError
from splitft.security.files import PUBLIC_MODE, write_file

MAX_JOB_FILE_BYTES = 1024 * 1024


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string (it wants `1.0e-3`); a job file means the number."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_job_file(name: str) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (`-`: stdin); the server validates its fields."""
    try:
        text = sys.stdin.read(MAX_JOB_FILE_BYTES + 1) if name == "-" else _read_bounded(Path(name))
    except FileNotFoundError:
        raise NotFound(f"job file {name} does not exist") from None
    if len(text) > MAX_JOB_FILE_BYTES:
        raise InvalidArgument(f"job file {name} is larger than {MAX_JOB_FILE_BYTES} bytes")
    try:
        data = json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=_SpecLoader)  # noqa: S506
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if name.endswith(".json") else "YAML"
        raise InvalidArgument(f"job file {name} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"job file {name} must hold a mapping (the POST /v1/jobs body)")
    return data


def _read_bounded(path: Path) -> str:
    with path.open(encoding="utf-8") as f:
        return f.read(MAX_JOB_FILE_BYTES + 1)


Handler = Callable[[argparse.Namespace], int]


def plain_errors(handler: Handler) -> Handler:
    """The server's reason (or the refusal) on one plain stderr line and exit 2: an operator greps it,
    and the log handler would wrap or shorten a long message."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except SplitftError as exc:
            sys.stderr.write(f"error: {exc.message}\n")
            return 2

    return run


def _client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient(resolve(args))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _console() -> Console:
    # Piped or captured output is not cut to 80 columns: a table stays one row per line for grep.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)


def _print_answer(args: argparse.Namespace, answer: Any, line: str) -> None:
    """The server's answer as JSON with --json, else one line about it."""
    if args.json:
        _print_json(answer)
    else:
        _console().print(line)


def _print_table(
    args: argparse.Namespace, answer: Any, columns: Sequence[str], rows: Iterable[Sequence[str]]
) -> None:
    """The server's answer as JSON with --json, else a table of `rows` (read only for the table)."""
    if args.json:
        _print_json(answer)
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


@plain_errors
def jobs_create(args: argparse.Namespace) -> int:
    """POST /v1/jobs with the file's spec; prints the new job (and follows it with --watch)."""
    spec = load_job_file(args.file)
    with _client(args) as client:
        job = client.post("/v1/jobs", spec)
        _print_answer(
            args, job, f"job {job['id']} ({job['name']}) created: {job['state']} {job['reason']}".rstrip()
        )
        if args.watch:
            return watch_job(client, job["id"], interval=args.interval, plain=args.plain or args.json)
    return 0


@plain_errors
def jobs_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    with _client(args) as client:
        jobs = client.get("/v1/jobs", **params)
    columns = ("id", "name", "state", "mode", "model", "devices", "sessions", "created", "reason")
    _print_table(args, jobs, columns, (_job_row(job) for job in jobs))
    return 0


def _job_row(job: dict[str, Any]) -> tuple[str, ...]:
    sessions = job["sessions"]
    done = sum(s["state"] == "succeeded" for s in sessions)
    return (
        job["id"],
        job["name"],
        job["state"],
        job["spec"].get("mode", "independent"),
        job["spec"]["model"],
        str(len(job["spec"]["devices"])),
        f"{done}/{len(sessions)} succeeded",
        job["created_at"][:19],
        job["reason"],
    )


@plain_errors
def jobs_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(f"/v1/jobs/{args.job}")
        federated = job["spec"].get("mode") == "federated"
        rounds = client.get(f"/v1/jobs/{args.job}/rounds") if federated else []
    if args.json:
        _print_json({**job, "rounds": rounds} if federated else job)
        return 0
    console = _console()
    spec = job["spec"]
    console.print(f"job {job['id']} ({job['name']}): {job['state']} {job['reason']}".rstrip())
    console.print(
        f"model {spec['model']}, device_layers {spec['device_layers']}, head_layers {spec['head_layers']}, "
        f"mode {spec.get('mode', 'independent')}, created {job['created_at'][:19]}"
    )
    table = Table(
        "session", "device", "round", "edge", "state", "attempts", "adapter", "reason", title="sessions"
    )
    for s in job["sessions"]:
        table.add_row(
            s["id"],
            s["device"],
            "-" if s["round"] is None else str(s["round"]),
            s["edge_id"] or "-",
            s["state"],
            str(s["attempts"]),
            "yes" if s["has_adapter"] else "no",
            s["reason"],
        )
    console.print(table)
    if rounds:
        rtable = Table(
            "round", "state", "participants", "missed", "mean loss", "bytes up / down", title="rounds"
        )
        for r in rounds:
            loss = "-" if r["mean_loss"] is None else f"{r['mean_loss']:.4f}"
            rtable.add_row(
                str(r["number"]),
                r["state"],
                ", ".join(r["participants"]),
                ", ".join(r["missed"]),
                loss,
                f"{r['bytes_up']:,} / {r['bytes_down']:,}",
            )
        console.print(rtable)
    return 0


@plain_errors
def jobs_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return watch_job(client, args.job, interval=args.interval, plain=args.plain or args.json)


@plain_errors
def jobs_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post(f"/v1/jobs/{args.job}/cancel")
    _print_answer(args, job, f"job {job['id']} {job['state']}")
    return 0


@plain_errors
def jobs_adapter(args: argparse.Namespace) -> int:
    """Download a device's adapter, or a federated job's global one, as the server's .tar.gz."""
    which = args.device or "global"
    out = Path(args.out or f"{args.job}-{which}-adapter.tar.gz")
    if out.exists() and not args.force:  # before the download: a refusal costs nothing
        raise InvalidArgument(f"refusing to overwrite {out} (pass --force to replace it)")
    path = f"/v1/jobs/{args.job}/adapters/{args.device}" if args.device else f"/v1/jobs/{args.job}/adapter"
    with _client(args) as client:
        data = client.call("GET", path).content
    write_file(out, data, force=args.force, mode=PUBLIC_MODE)
    sys.stdout.write(f"{out} ({len(data):,} bytes)\n")
    return 0


@plain_errors
def devices_create(args: argparse.Namespace) -> int:
    """Create a device; its one-time enrollment token is printed once (it is not stored in clear)."""
    with _client(args) as client:
        created = client.post("/v1/devices", {"name": args.name})
    if args.json:
        _print_json(created)
    else:
        sys.stdout.write(
            f"device {created['name']} ({created['id']}) created; enrollment token (shown once):\n"
            f"{created['enrollment_token']}\n"
        )
    return 0


@plain_errors
def devices_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        devices = client.get("/v1/devices")
    rows = (
        (
            d["id"],
            d["name"],
            d["status"],
            d["created_at"][:19],
            (d["enrolled_at"] or "-")[:19],
            (d["disabled_at"] or "-")[:19],
        )
        for d in devices
    )
    _print_table(args, devices, ("id", "name", "status", "created", "enrolled", "disabled"), rows)
    return 0


@plain_errors
def devices_disable(args: argparse.Namespace) -> int:
    """Disable a device named by id or by name."""
    with _client(args) as client:
        devices = client.get("/v1/devices")
        match = [d for d in devices if args.device in (d["id"], d["name"])]
        if not match:
            raise NotFound(f"no device with id or name {args.device!r}")
        device = client.post(f"/v1/devices/{match[0]['id']}/disable")
    _print_answer(args, device, f"device {device['name']} ({device['id']}) {device['status']}")
    return 0


@plain_errors
def edges_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        edges = client.get("/v1/edges")
    columns = (
        "id",
        "name",
        "address",
        "status",
        "models",
        "sessions",
        "free memory",
        "memory limit",
        "heartbeat",
    )
    _print_table(args, edges, columns, (_edge_row(e) for e in edges))
    return 0


def _edge_row(edge: dict[str, Any]) -> tuple[str, ...]:
    cap = edge["capacity"]
    return (
        edge["id"],
        edge["name"],
        edge["address"],
        edge["status"],
        ", ".join(edge["models"]),
        f"{edge['active_sessions']}/{cap['max_sessions']}",
        _bytes(cap["memory_free_bytes"]),
        _bytes(cap["memory_limit_bytes"]) if cap["memory_limit_bytes"] else "-",
        (edge["last_heartbeat_at"] or "-")[:19],
    )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
