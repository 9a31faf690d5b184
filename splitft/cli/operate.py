"""`splitft jobs|devices|edges`: the control plane's operator REST API from the command line (parsers only).

Every command takes the same connection options; each falls back to the environment, then to a
config file (0600), which the handler resolves (`splitft.cli.commands.operator_client`), so the
parsers read nothing at build time.
"""

from __future__ import annotations

import argparse

from splitft.cli.args import handled_by

JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


def connection_options() -> argparse.ArgumentParser:
    """The options every operator command shares (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("control plane")
    group.add_argument(
        "--control-plane",
        default=None,
        metavar="URL",
        help="https:// URL (http:// only to loopback or --insecure); default: $SPLITFT_CONTROL_URL, "
        "else the config file's url",
    )
    group.add_argument(
        "--operator-key-file",
        default=None,
        metavar="FILE",
        help="file holding the operator API key (mode 0600); default: $SPLITFT_OPERATOR_KEY, else the "
        "config file's key (never on the command line: ps would show it)",
    )
    group.add_argument(
        "--ca",
        default=None,
        metavar="PEM",
        help="CA that verifies the control plane's HTTPS; default: $SPLITFT_CONTROL_CA, else the config "
        "file's ca, else the system's store",
    )
    group.add_argument(
        "--insecure", action="store_true", help="allow a plaintext http:// control plane on another host"
    )
    group.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML or JSON with url, key, ca, insecure (mode 0600); default: $SPLITFT_OPERATOR_CONFIG, "
        "else ~/.config/splitft/operator.yaml when it exists",
    )
    group.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    return parent


def register(commands: argparse._SubParsersAction) -> None:
    """Add `jobs ...`, `devices ...` and `edges list` to the top-level `commands`."""
    parent = connection_options()
    _register_jobs(commands, parent)
    devices = commands.add_parser("devices", help="operator: enroll, list and disable devices")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    create = dsub.add_parser("create", parents=[parent], help="create a device; prints its enrollment token")
    create.add_argument("name", help="the device's name (its certificate's CN)")
    handled_by(create, "operator:devices_create")
    handled_by(dsub.add_parser("list", parents=[parent], help="list devices"), "operator:devices_list")
    disable = dsub.add_parser("disable", parents=[parent], help="revoke a device (its sessions fail)")
    disable.add_argument("device", help="the device's id or name")
    handled_by(disable, "operator:devices_disable")
    edges = commands.add_parser("edges", help="operator: the edges and their load")
    esub = edges.add_subparsers(dest="edges_command", required=True)
    elist = esub.add_parser("list", parents=[parent], help="list edges, their load and free memory")
    handled_by(elist, "operator:edges_list")


def _register_jobs(commands: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    jobs = commands.add_parser("jobs", help="operator: create, follow and cancel training jobs")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    create = sub.add_parser("create", parents=[parent], help="create a job from a YAML or JSON file")
    create.add_argument("file", help="the job spec (POST /v1/jobs body), YAML or JSON; - reads stdin")
    create.add_argument("--watch", action="store_true", help="then follow it as `jobs watch` does")
    _watch_options(create)
    handled_by(create, "operator:jobs_create")
    listing = sub.add_parser("list", parents=[parent], help="list jobs, newest first")
    listing.add_argument("--state", choices=JOB_STATES, default=None)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    handled_by(listing, "operator:jobs_list")
    show = sub.add_parser("show", parents=[parent], help="a job, its sessions and (federated) rounds")
    show.add_argument("job", help="job id")
    handled_by(show, "operator:jobs_show")
    watch = sub.add_parser(
        "watch", parents=[parent], help="follow a job's progress per device until it ends (exit 0: succeeded)"
    )
    watch.add_argument("job", help="job id")
    _watch_options(watch)
    handled_by(watch, "operator:jobs_watch")
    cancel = sub.add_parser("cancel", parents=[parent], help="cancel a job (its edges close its sessions)")
    cancel.add_argument("job", help="job id")
    handled_by(cancel, "operator:jobs_cancel")
    adapter = sub.add_parser("adapter", parents=[parent], help="download a finished adapter (.tar.gz)")
    adapter.add_argument("job", help="job id")
    adapter.add_argument(
        "--device", default=None, help="that device's adapter (default: a federated job's global adapter)"
    )
    adapter.add_argument("--out", default=None, help="file to write (default: JOB-DEVICE-adapter.tar.gz)")
    adapter.add_argument("--force", action="store_true", help="replace an existing --out")
    handled_by(adapter, "operator:jobs_adapter")


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=_seconds, default=2.0, metavar="SECONDS", help="poll interval")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="one line per new report instead of progress bars (the default when stdout is not a terminal)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds like 2 or 0.5, got {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected 0.05 to 3600 seconds, got {text}")
    return value
