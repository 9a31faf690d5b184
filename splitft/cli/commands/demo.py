"""`splitft demo`: the whole loop (control plane, edge, device agents) or, with --sdk, the SDK alone."""

from __future__ import annotations

import argparse

from splitft.demo.loop import LoopDemoConfig, run_loop_demo
from splitft.demo.sdk import DemoConfig, run_demo


def run(args: argparse.Namespace) -> int:
    """Run the demo the options describe."""
    common = dict(
        model_dir=args.model_dir,
        epochs=args.epochs,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        device_layers=args.device_layers,
        head_layers=args.head_layers,
        codec=args.codec,
        max_per_class=args.max_per_class,
        quantize=args.quantize,
    )
    if args.sdk:
        run_demo(DemoConfig(**common))
    else:
        loop = LoopDemoConfig(
            **common,
            devices=args.devices,
            alpha=args.alpha,
            federated=args.federated,
            rounds=args.rounds,
            local_steps=args.local_steps,
        )
        run_loop_demo(loop)
    return 0
