"""`splitft emulator build`: write the emulator and print its JSON report."""

from __future__ import annotations

import argparse
import json
import sys

from splitft.emulator.data import demo_texts, encode, read_texts
from splitft.emulator.distill import DistillConfig
from splitft.emulator.make import build_emulator
from splitft.errors import InvalidArgument


def build(args: argparse.Namespace) -> int:
    """Check every option first (nothing is written on a refusal), then build."""
    distill = DistillConfig(steps=args.distill_steps, lr=args.lr, seed=args.seed)
    if args.data is not None and distill.steps == 0:
        raise InvalidArgument("--data is for distillation: give --distill-steps N > 0 too")
    train, heldout = None, None
    if distill.steps > 0:
        texts = read_texts(args.data) if args.data is not None else demo_texts()
        batches = encode(args.model_dir, texts, batch_size=args.batch_size, max_length=args.max_length)
        held = max(1, len(batches) // 10) if len(batches) > 1 else 0
        train, heldout = batches[: len(batches) - held], batches[len(batches) - held :] or None
    report = build_emulator(
        args.model_dir,
        args.out,
        device_layers=args.device_layers,
        head_layers=args.head_layers,
        keep=args.keep,
        distill_config=distill,
        train=train,
        heldout=heldout,
    )
    sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    return 0
