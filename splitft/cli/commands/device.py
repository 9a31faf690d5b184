"""`splitft device enroll|run`: the device agent."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

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
        device_class=_device_class(args),
    )
    logger.info(
        "device agent done: %d sessions completed, %d failed", len(summary.completed), len(summary.failed)
    )
    return 1 if summary.failed else 0


def _device_class(args: argparse.Namespace) -> Any:
    """The class `--class-*` give (all three of memory and links, or none); None without them."""
    from splitft.errors import InvalidArgument
    from splitft.plan.choice import DeviceClass

    given = (args.class_memory, args.class_uplink_mbps, args.class_downlink_mbps)
    speed = (args.class_speed_factor, args.class_flops)
    if all(v is None for v in (*given, *speed)):
        return None
    if any(v is None for v in given):
        raise InvalidArgument(
            "a device class needs --class-memory, --class-uplink-mbps and --class-downlink-mbps"
        )
    try:
        return DeviceClass(
            memory_bytes=args.class_memory,
            uplink_mbps=args.class_uplink_mbps,
            downlink_mbps=args.class_downlink_mbps,
            speed_factor=args.class_speed_factor,
            flops=args.class_flops,
        )
    except ValueError as exc:  # pydantic's ValidationError: e.g. --class-memory 0
        raise InvalidArgument(f"device class: {exc}") from None
