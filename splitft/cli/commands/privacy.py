"""`splitft privacy audit`: run the privacy meter and print what a curious edge recovers."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitft.audit.config import AuditConfig
from splitft.audit.run import AuditReport, run_audits
from splitft.audit.sweep import sweep_part
from splitft.demo.sdk import default_model_dir
from splitft.errors import NotFound
from splitft.privacy.config import PrivacyConfig


def privacy_from(args: argparse.Namespace) -> PrivacyConfig:
    return PrivacyConfig(
        activation_clip=args.activation_clip,
        activation_noise=args.activation_noise,
        clip_scope=args.clip_scope,
        gradient_clip=args.gradient_clip,
        gradient_noise=args.gradient_noise,
        nopeek_weight=args.nopeek_weight,
        nopeek_warmup=args.nopeek_warmup,
        withhold_gradients=args.withhold_gradients,
        cca_weight=args.cca_weight,
        cca_target=args.cca_target,
        private_warmup=args.private_warmup,
        warmup_consistency=args.warmup_consistency,
        warmup_task=args.warmup_task,
        head_skip=args.head_skip,
    )


def _base(args: argparse.Namespace) -> AuditConfig:
    changes: dict[str, object] = {
        "model_dir": args.model_dir,
        "device_layers": args.device_layers,
        "head_layers": args.head_layers,
        "lora_rank": args.lora_rank,
        "seed": args.seed,
        "train_stride": args.train_stride,
    }
    if args.mlp_epochs is not None:
        changes["mlp_epochs"] = args.mlp_epochs
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.public_texts is not None:
        changes["public_texts"] = args.public_texts
    return AuditConfig.quick(**changes) if args.quick else AuditConfig(**changes)  # type: ignore[arg-type]


def audit(args: argparse.Namespace) -> int:
    """Audit one configuration (the options') or, with --sweep, every configuration of the curves."""
    base = _base(args)
    if args.sweep:
        configs = [replace(base, privacy=p, lora_rank=r or base.lora_rank) for p, r in sweep_part(args.part)]
    else:
        configs = [replace(base, privacy=privacy_from(args))]
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir()
    if not (model_dir / "config.json").is_file():
        raise NotFound(f"--model-dir {model_dir}: no config.json there")
    console = Console()

    def write(reports: list[AuditReport]) -> None:  # after each configuration: a long sweep keeps its results
        if args.json:
            rows = [{**r.to_dict(), "lora_rank": c.lora_rank} for r, c in zip(reports, configs, strict=False)]
            Path(args.json).write_text(json.dumps(rows, indent=2))

    reports = run_audits(configs, model_dir, on_report=write)
    print_reports(console, reports, [c.lora_rank for c in configs])
    if args.json:
        console.print(f"report written to {args.json}")
    return 0


def print_reports(console: Console, reports: list[AuditReport], ranks: list[int]) -> None:
    table = Table(title="what the edge recovers (top-1 / top-5; label inference: best attack vs chance)")
    for column in (
        "defense",
        "held-out acc",
        "tokens linear",
        "tokens MLP",
        "tokens aligned",
        "tokens trunk",
        "trunk aligned",
        "labels (grad)",
        "labels (output)",
        "oracle (output)",
        "labels (h_k)",
        "oracle (h_k)",
    ):
        table.add_column(column)
    for report, rank in zip(reports, ranks, strict=True):
        privacy = PrivacyConfig.from_dict(report.privacy).describe() + (
            f", LoRA r={rank}" if rank != 8 else ""
        )
        table.add_row(
            privacy,
            f"{report.accuracy:.1%}",
            _tokens(report, "linear"),
            _tokens(report, "mlp"),
            _tokens(report, "linear_aligned"),
            _tokens(report, "trunk_linear"),
            _tokens(report, "trunk_linear_aligned"),
            _grad_labels(report),
            f"{report.output_label_inference:.1%} vs {report.label_chance:.1%}",
            f"{report.output_label_oracle:.1%}",
            f"{report.input_label_inference:.1%} vs {report.label_chance:.1%}",
            f"{report.input_label_oracle:.1%}",
        )
    console.print(table)
    console.print(
        "tokens: first epoch -> last epoch (adapters near init -> trained); aligned: the linear decoder "
        "on the received h_k moved to the public mean and covariance (an edge adapting to the defense); "
        "trunk: a linear decoder on the trunk output the edge computed, trained on the public trunk's; "
        "oracle: the better linear probe trained with every label on the trunk output or on h_k ([CLS]; "
        "[CLS] and the mean over tokens; 5-fold CV); "
        f"{reports[0].scored_tokens:,} private tokens scored, decoders trained on "
        f"{reports[0].public_tokens:,} public ones"
    )


def _grad_labels(report: AuditReport) -> str:
    if report.privacy.get("withhold_gradients"):
        return "none sent"
    return f"{report.gradient_label_inference:.1%} vs {report.label_chance:.1%}"


def _tokens(report: AuditReport, decoder: str) -> str:
    first, last = report.tokens.get(f"{decoder}@first_epoch"), report.tokens.get(f"{decoder}@last_epoch")
    if first is None or last is None:
        return "-"
    return f"{first['top1']:.1%}/{first['top5']:.1%} -> {last['top1']:.1%}/{last['top5']:.1%}"
