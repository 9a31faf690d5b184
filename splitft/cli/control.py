"""`splitft control serve|migrate|keys`: the REST control plane (parsers only)."""

from __future__ import annotations

import argparse

from splitft.cli.args import handled_by


def register(commands: argparse._SubParsersAction) -> None:
    """Add `control serve`, `control migrate` and `control keys create|list|revoke` to `commands`."""
    control = commands.add_parser("control", help="the REST control plane").add_subparsers(
        dest="control_command", required=True
    )
    cserve = control.add_parser("serve", help="serve the control plane (FastAPI + uvicorn)")
    cserve.add_argument("--host", default="127.0.0.1")
    cserve.add_argument("--port", type=int, default=8080)
    cserve.add_argument(
        "--certs",
        default=None,
        metavar="DIR",
        help="serve HTTPS with DIR/control.pem and DIR/control.key (`certs init`); "
        "DIR/ca.key also signs device CSRs unless --certs-dir says otherwise",
    )
    cserve.add_argument("--certs-dir", default=None, help="deployment CA that signs device CSRs")
    cserve.add_argument(
        "--dev", action="store_true", help="allow weak or missing secrets (local experiments)"
    )
    handled_by(cserve, "control:serve")
    cmigrate = handled_by(
        control.add_parser("migrate", help="apply database migrations and exit"), "control:migrate"
    )
    ckeys = control.add_parser("keys", help="operator API keys").add_subparsers(
        dest="keys_command", required=True
    )
    kcreate = ckeys.add_parser("create", help="create a key; prints its id and the key once")
    kcreate.add_argument("--name", required=True)
    klist = ckeys.add_parser("list", help="list keys")
    krevoke = ckeys.add_parser("revoke", help="revoke a key by id")
    krevoke.add_argument("--id", required=True)
    for sub in (cserve, cmigrate, kcreate, klist, krevoke):
        sub.add_argument(
            "--db", default=None, metavar="URL", help="SQLAlchemy URL (default: SQLite in --data-dir)"
        )
        sub.add_argument("--data-dir", default=None, help="default: ./splitft-data or $SPLITFT_DATA_DIR")
    for sub in (kcreate, klist, krevoke):
        handled_by(sub, "control:keys")
