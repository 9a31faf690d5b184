"""`splitft device enroll|run`: the device agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from device_client.agent import run_device
from device_client.agent.credentials import enroll as enroll_device
from device_client.retry import RetryPolicy

logger = logging.getLogger("splitft")


def enroll(args: argparse.Namespace) -> int:
    """Trade a one-time enrollment token for a credential file."""
    credential = enroll_device(
        args.control_plane, args.token, args.out, force=args.force, ca_file=args.ca, insecure=args.insecure
    )
    sys.stdout.write(
        f"enrolled as {credential.device_name} ({credential.device_id}); credential in {args.out}\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Poll for sessions and train them until stopped (SIGTERM, SIGINT) or --max-sessions; 1 if any failed."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    summary = run_device(
        args.credential,
        args.data,
        args.model_dir,
        control_plane=args.control_plane,
        max_sessions=args.max_sessions,
        poll_interval=args.poll_interval,
        insecure=args.insecure,
        stop=stop,
        record_dir=args.record_dir,
        checkpoint_dir=args.checkpoint_dir,
        edge_retry=RetryPolicy(budget_s=args.edge_retry_budget),
    )
    logger.info(
        "device agent done: %d sessions completed, %d failed", len(summary.completed), len(summary.failed)
    )
    return 1 if summary.failed else 0
