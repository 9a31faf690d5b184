"""`splitft control serve|migrate|keys`: the REST control plane and its operator API keys."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from splitft.errors import InvalidArgument
from splitft.security.trust import is_loopback
from splitft_control.app import create_app
from splitft_control.migrate import migrated_store
from splitft_control.settings import ControlSettings

logger = logging.getLogger("splitft")


def serve(args: argparse.Namespace) -> int:
    """Serve the control plane with uvicorn until stopped: HTTPS with --certs, else plaintext HTTP."""
    settings = _settings(args)
    tls = settings.tls_files()  # checked before anything starts: a missing file is a CLI error
    if tls is None and not is_loopback(args.host):
        logger.warning(
            "serving the control plane over plaintext HTTP: bearer secrets and the CA cross the network "
            "in clear; give --certs DIR for HTTPS unless a TLS-terminating proxy is in front"
        )
    app = create_app(settings)
    certfile, keyfile = (str(tls[0]), str(tls[1])) if tls else (None, None)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        timeout_graceful_shutdown=10,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations and exit."""
    migrated_store(_settings(args))
    return 0


def keys(args: argparse.Namespace) -> int:
    """`control keys create|list|revoke`."""
    store = migrated_store(_settings(args))
    if args.keys_command == "create":
        row, key = store.create_api_key(name=args.name)
        sys.stdout.write(f"{row.id} {key}\n")
    elif args.keys_command == "revoke":
        store.revoke_api_key(key_id=args.id)
    else:
        table = Table("id", "name", "created", "revoked")
        for row in store.list_api_keys():
            table.add_row(row.id, row.name, str(row.created_at), str(row.revoked_at or ""))
        Console().print(table)
    return 0


def _settings(args: argparse.Namespace) -> ControlSettings:
    """The settings from the environment, with the options given on the command line on top."""
    overrides = {
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "db_url": args.db,
        "dev_mode": True if getattr(args, "dev", False) else None,
        "certs_dir": Path(args.certs_dir) if getattr(args, "certs_dir", None) else None,
        "tls_certs_dir": Path(args.certs) if getattr(args, "certs", None) else None,
    }
    try:
        return ControlSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise InvalidArgument("; ".join(e["msg"] for e in exc.errors())) from None
