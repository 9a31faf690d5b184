"""`splitft bench ...`: run a benchmark and print its report (JSON, or a Markdown table)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from splitft.bench.control import ControlBenchConfig, run_control_bench
from splitft.bench.converge import DEFAULT_CONVERGE_CODECS, ConvergeBenchConfig, run_converge_bench
from splitft.bench.edge import QUICK, EdgeBenchConfig, run_edge_bench
from splitft.bench.edge_report import markdown_table as edge_markdown_table
from splitft.bench.federated import QUICK as FEDERATED_QUICK
from splitft.bench.federated import FederatedBenchConfig, run_federated_bench
from splitft.bench.federated_report import markdown_table as federated_markdown_table
from splitft.bench.federated_report import merge_reports as merge_federated_reports
from splitft.bench.federated_select import markdown_table as selection_markdown_table
from splitft.bench.federated_select import select_by_validation
from splitft.bench.fewshot import QUICK as FEWSHOT_QUICK
from splitft.bench.fewshot import FewshotBenchConfig, run_fewshot_bench
from splitft.bench.fewshot import markdown_table as fewshot_markdown_table
from splitft.bench.generate import QUICK as GENERATE_QUICK
from splitft.bench.generate import GenerateBenchConfig, run_generate_bench
from splitft.bench.generate import markdown_table as generate_markdown_table
from splitft.bench.memory import MemoryBenchConfig, run_memory_bench
from splitft.bench.methods import QUICK as METHODS_QUICK
from splitft.bench.methods import MethodsBenchConfig, markdown_table, run_methods_bench
from splitft.bench.offsite import QUICK as OFFSITE_QUICK
from splitft.bench.offsite import OffsiteBenchConfig, run_offsite_bench
from splitft.bench.offsite import markdown_table as offsite_markdown_table
from splitft.bench.quantize import QuantizeBenchConfig, run_quantize_bench
from splitft.bench.quantize import markdown_table as quantize_markdown_table
from splitft.bench.resume import ResumeBenchConfig, run_resume_bench
from splitft.bench.resume import markdown_table as resume_markdown_table
from splitft.bench.sessions import SessionsBenchConfig, run_sessions_bench
from splitft.bench.sparse import SparseBenchConfig, run_sparse_bench
from splitft.bench.step import StepBenchConfig, run_step_bench
from splitft.bench.vit import QUICK as VIT_QUICK
from splitft.bench.vit import VitBenchConfig, run_vit_bench
from splitft.bench.vit import markdown_table as vit_markdown_table
from splitft.bench.wire import DEFAULT_WIRE_CODECS, WireBenchConfig, run_wire_bench
from splitft.errors import InvalidArgument

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A benchmark config from the options named like its fields, plus `overrides`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **overrides})


def _print(report: str) -> int:
    sys.stdout.write(report + "\n")
    return 0


def _report(args: argparse.Namespace, report: str, table: Callable[[str], str]) -> int:
    """The JSON `report` written to `--json` when given, and printed, or its `table` with `--markdown`
    (the options of `splitft.cli.args.add_report_options`)."""
    if args.json:
        with open(args.json, "w") as out:
            out.write(report + "\n")
    return _print(table(report) if args.markdown else report)


def _parsed(table: Callable[[dict[str, Any]], str]) -> Callable[[str], str]:
    """A table of the parsed report, for `_report`, from one that takes the parsed report."""
    return lambda report: table(json.loads(report))


def step(args: argparse.Namespace) -> int:
    """`bench step`: step time in one process vs split over loopback."""
    return _print(run_step_bench(config_from_args(StepBenchConfig, args)))


def wire(args: argparse.Namespace) -> int:
    """`bench wire`: bytes per step per codec."""
    codecs = tuple(args.codec or DEFAULT_WIRE_CODECS)
    return _print(run_wire_bench(config_from_args(WireBenchConfig, args, codecs=codecs)))


def converge(args: argparse.Namespace) -> int:
    """`bench converge`: held-out loss after N steps per codec vs raw."""
    codecs = tuple(args.codec or DEFAULT_CONVERGE_CODECS)
    return _print(run_converge_bench(config_from_args(ConvergeBenchConfig, args, codecs=codecs)))


def memory(args: argparse.Namespace) -> int:
    """`bench memory`: device peak memory vs the whole model in one process."""
    return _print(run_memory_bench(config_from_args(MemoryBenchConfig, args)))


def sessions(args: argparse.Namespace) -> int:
    """`bench sessions`: aggregate edge throughput with N concurrent sessions."""
    return _print(run_sessions_bench(config_from_args(SessionsBenchConfig, args)))


def _preset_config(cls: type[T], args: argparse.Namespace, quick: dict[str, Any]) -> T:
    """A config from the options given (None: not given), else `quick`'s value with `--quick`,
    else the field's default."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    preset = quick if args.quick else {}
    fields = [f for f in dataclasses.fields(cls) if f.name in given or f.name in preset]
    return cls(**{f.name: given.get(f.name, preset.get(f.name)) for f in fields})


def edge_config(args: argparse.Namespace) -> EdgeBenchConfig:
    """`bench edge`'s config: the options given, else `--quick`'s preset, else the full grid."""
    return _preset_config(EdgeBenchConfig, args, QUICK)


def edge(args: argparse.Namespace) -> int:
    """`bench edge`: the edge's capacity with N synthetic devices, batching on vs off."""
    return _report(args, run_edge_bench(edge_config(args)), edge_markdown_table)


def methods(args: argparse.Namespace) -> int:
    """`bench methods`: LoRA vs TaskEdge vs TinyTrain and baselines; --markdown prints the table."""
    report = run_methods_bench(_preset_config(MethodsBenchConfig, args, METHODS_QUICK))
    return _report(args, report, markdown_table)


def sparse(args: argparse.Namespace) -> int:
    """`bench sparse`: a TaskEdge session's edge memory and step time, sparse vs dense delta."""
    return _print(run_sparse_bench(config_from_args(SparseBenchConfig, args)))


def fewshot(args: argparse.Namespace) -> int:
    """`bench fewshot`: TinyTrain on few-shot episodes vs last-layer and full fine-tuning."""
    report = run_fewshot_bench(_preset_config(FewshotBenchConfig, args, FEWSHOT_QUICK))
    return _report(args, report, fewshot_markdown_table)


def vit(args: argparse.Namespace) -> int:
    """`bench vit`: TaskEdge vs LoRA at 0.05-0.5% of a pretrained ViT, on held-out digit tasks."""
    report = run_vit_bench(_preset_config(VitBenchConfig, args, VIT_QUICK))
    return _report(args, report, vit_markdown_table)


def control(args: argparse.Namespace) -> int:
    """`bench control`: job-status latency of the control plane under concurrent load."""
    return _print(run_control_bench(config_from_args(ControlBenchConfig, args, db_url=args.db)))


def quantize(args: argparse.Namespace) -> int:
    """`bench quantize`: fp32 vs bf16 vs int8 vs nf4 frozen weights; --markdown prints the tables."""
    config = config_from_args(
        QuantizeBenchConfig, args, schemes=tuple(args.schemes), memory_shapes=tuple(args.memory_shapes)
    )
    return _report(args, run_quantize_bench(config), _parsed(quantize_markdown_table))


def federated(args: argparse.Namespace) -> int:
    """`bench federated`: independent vs FedAvg vs AirComp vs centralized on non-IID shards."""
    if args.select:
        selection = select_by_validation([_read_report(path, "--select") for path in args.select])
        if args.json:
            with open(args.json, "w") as out:
                out.write(selection + "\n")
        return _print(selection_markdown_table(selection) if args.markdown else selection)
    if args.merge:
        report = merge_federated_reports([_read_report(path) for path in args.merge])
    else:
        report = run_federated_bench(_preset_config(FederatedBenchConfig, args, FEDERATED_QUICK))
    return _report(args, report, federated_markdown_table)


def _read_report(path: str, option: str = "--merge") -> str:
    """A JSON report's text, or InvalidArgument naming the option and the file."""
    try:
        text = open(path).read()
        json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{option}: cannot read the report {path}: {exc}") from None
    return text


def resume(args: argparse.Namespace) -> int:
    """`bench resume`: step time with checkpoints every N steps vs none, size, kill to resumed step."""
    report = run_resume_bench(config_from_args(ResumeBenchConfig, args, every=tuple(args.every)))
    return _report(args, report, _parsed(resume_markdown_table))


def generate(args: argparse.Namespace) -> int:
    """`bench generate`: generate() with key/value caches on both sides vs without."""
    overrides = GENERATE_QUICK if args.quick else {}
    report = run_generate_bench(config_from_args(GenerateBenchConfig, args, **overrides))
    return _print(generate_markdown_table(json.loads(report)) if args.markdown else report)


def offsite(args: argparse.Namespace) -> int:
    """`bench offsite`: zero-shot vs offsite-tuned plug-in vs split (trunk frozen, trunk LoRA)."""
    report = run_offsite_bench(_preset_config(OffsiteBenchConfig, args, OFFSITE_QUICK))
    return _report(args, report, offsite_markdown_table)
