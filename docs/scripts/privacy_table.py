"""Print docs/privacy.md's tables from a folder of `splitft privacy audit --json` reports.

Usage: python docs/scripts/privacy_table.py docs/results/privacy-stop32 [--reference undefended-j1]

The reports are named CONFIG-seedS.json; each row's "points lost" is against the reference
configuration's report of the same seed (negative: gained). One row per report, then one summary
row per configuration (the range over its seeds, and the mean of the points lost).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

NAME = re.compile(r"^(?P<config>.+)-seed(?P<seed>\d+)\.json$")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _load(folder: Path) -> dict[str, dict[int, dict]]:
    reports: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        match = NAME.match(path.name)
        if match is None:
            continue
        (report,) = json.loads(path.read_text())
        reports.setdefault(match["config"], {})[int(match["seed"])] = report
    return reports


def _worst(report: dict, phase: str) -> float:
    return max(row["top1"] for key, row in report["tokens"].items() if key.endswith(phase))


def _cells(report: dict, lost: float | None) -> list[str]:
    trunk = max(row["top1"] for key, row in report["tokens"].items() if key.startswith("trunk_"))
    gradient = (
        "none sent"
        if report["privacy"].get("withhold_gradients")
        else f"{report['gradient_label_inference']:.1%}"
    )
    return [
        f"{report['accuracy']:.1%}" + ("" if lost is None else f" ({lost:+.1f})"),
        f"{_worst(report, 'first_epoch'):.1%} / {_worst(report, 'last_epoch'):.1%}",
        f"{trunk:.1%}",
        gradient,
        f"{report['output_label_inference']:.1%} / {report['output_label_oracle']:.1%}",
        f"{report['input_label_inference']:.1%} / {report['input_label_oracle']:.1%}",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--reference", default="undefended-j1", help="the configuration points are lost against"
    )
    args = parser.parse_args(argv)
    reports = _load(args.folder)
    if not reports:
        sys.stderr.write(f"no CONFIG-seedS.json reports in {args.folder}\n")
        return 2
    reference = reports.get(args.reference, {})
    _out(
        "| configuration | seed | held-out accuracy (points lost) | worst decoder, first / last epoch "
        "| trunk decoder | labels: gradient | labels: trunk output, attack / oracle "
        "| labels: h_k, attack / oracle |"
    )
    _out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = []
    for config, seeds in reports.items():
        losts = []
        for seed, report in sorted(seeds.items()):
            base = reference.get(seed)
            lost = (
                None
                if base is None or config == args.reference
                else 100 * (base["accuracy"] - report["accuracy"])
            )
            if lost is not None:
                losts.append(lost)
            _out(f"| {config} | {seed} | " + " | ".join(_cells(report, lost)) + " |")
        accuracies = [r["accuracy"] for r in seeds.values()]
        tokens = [max(_worst(r, "first_epoch"), _worst(r, "last_epoch")) for r in seeds.values()]
        outputs = [r["output_label_inference"] for r in seeds.values()]
        mean = f", mean lost {sum(losts) / len(losts):+.1f}, worst {max(losts):+.1f}" if losts else ""
        summary.append(
            f"- {config} ({len(seeds)} seeds): accuracy {min(accuracies):.1%} to {max(accuracies):.1%}"
            f"{mean}; worst decoder at most {max(tokens):.1%}; trunk-output labels {min(outputs):.1%} to "
            f"{max(outputs):.1%} (chance {max(r['label_chance'] for r in seeds.values()):.1%})"
        )
    _out()
    _out("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
