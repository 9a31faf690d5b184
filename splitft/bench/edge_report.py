"""`splitft bench edge`'s report: windows to cells, ratios with their spread, targets, tables.

A cell is one (model, shape, N, batching) over all rounds: trunk tokens per second (median, min and
max over rounds), step latency percentiles over every step of every round, errors, the edge's CPU
use and peak memory. Ratios are taken per round (both windows of a ratio ran in the same round),
then summarised over rounds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from typing import Any

from splitft.bench.edge_device import WindowResult

MODES = ("on", "off")  # --batching on / off, one edge each
KIB_PER_MIB = 1024
# The issue's targets on a 2-core CPU.
BATCHING_TARGET = {"sessions": 8, "batch": 1, "tokens": 64, "min_ratio": 2.0}
HELD_TARGET_SESSIONS = 32
DROPOUT_TARGET = {"sessions": 2, "min_ratio": 1.6}


def window_summary(results: list[WindowResult], start: float, tokens_per_step: int) -> dict[str, Any]:
    """One window's figures from each device's steps: a device's rate is its completed steps over
    the time from the window's start to the end of its last step; the aggregate is their sum."""
    rates = [len(r.steps) / (r.steps[-1][1] - start) for r in results if r.steps]
    return {
        "steps": sum(len(r.steps) for r in results),
        "tokens_per_s": round(sum(rates) * tokens_per_step, 1),
        "errors": sum(r.errors for r in results),
        "error_samples": [s for r in results for s in r.error_samples][:5],
        "step_seconds": [end - began for r in results for began, end in r.steps],
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank `q` quantile (0 < q <= 1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of per-round values, and the values themselves."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "rounds": [round(v, digits) for v in values],
    }


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / KIB_PER_MIB, 1)


def _mode_cell(windows: list[dict[str, Any]], n: int, held_kib: int | None) -> dict[str, Any]:
    steps = [s for w in windows for s in w["step_seconds"]]
    cores = [w["edge_cpu_cores"] for w in windows if w["edge_cpu_cores"] is not None]
    device_cores = [w["devices_cpu_cores"] for w in windows if w["devices_cpu_cores"] is not None]
    # The first round goes up in N: no larger N has left its heap behind in the edge yet.
    peak = windows[0]["edge_peak_kib"]
    active = None if peak is None or held_kib is None else round((peak - held_kib) / n / KIB_PER_MIB, 2)
    return {
        "tokens_per_s": spread([w["tokens_per_s"] for w in windows], 1),
        "steps": len(steps),
        "step_ms_p50": round(1000 * percentile(steps, 0.5), 2) if steps else None,
        "step_ms_p90": round(1000 * percentile(steps, 0.9), 2) if steps else None,
        "errors": sum(w["errors"] for w in windows),
        "error_samples": [s for w in windows for s in w["error_samples"]][:5],
        "edge_cpu_cores": round(statistics.median(cores), 2) if cores else None,
        "devices_cpu_cores": round(statistics.median(device_cores), 2) if device_cores else None,
        "edge_peak_mib": _mib(peak),
        "active_mib_per_session": active,
        "shared_forward_fraction": _median_of(w.get("shared_forward_fraction") for w in windows),
    }


def _median_of(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _ratio(numerators: list[float], denominators: list[float]) -> dict[str, Any] | None:
    pairs = [(a, b) for a, b in zip(numerators, denominators, strict=True) if b > 0]
    return spread([a / b for a, b in pairs]) if pairs else None


def _cells(group: dict[str, Any], sessions: list[int]) -> list[dict[str, Any]]:
    by_key: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for window in sorted(group["windows"], key=lambda w: w["round"]):
        by_key.setdefault((window["sessions"], window["mode"]), []).append(window)
    fewest = min(sessions)
    per_round = {key: [w["tokens_per_s"] for w in ws] for key, ws in by_key.items()}
    cells = []
    for n in sessions:
        cell: dict[str, Any] = {"model": group["model"], "shape": group["shape"], "sessions": n}
        for mode in MODES:
            cell[mode] = _mode_cell(by_key[(n, mode)], n, group["memory"][mode]["held_kib"])
            cell[mode]["vs_fewest_sessions"] = _ratio(per_round[(n, mode)], per_round[(fewest, mode)])
        cell["on_vs_off"] = _ratio(per_round[(n, "on")], per_round[(n, "off")])
        cells.append(cell)
    return cells


def _memory(group: dict[str, Any], most: int) -> list[dict[str, Any]]:
    rows = []
    for mode in MODES:
        m = group["memory"][mode]
        peaks = [w["edge_peak_kib"] for w in group["windows"] if w["mode"] == mode and w["edge_peak_kib"]]
        idle, held = m["idle_kib"], m["held_kib"]
        rows.append(
            {
                "model": group["model"],
                "shape": group["shape"],
                "mode": mode,
                "sessions_held": most,
                "idle_mib": _mib(idle),
                "held_mib": _mib(held),
                "peak_mib": _mib(max([m["open_peak_kib"] or 0, *peaks]) or None),
                "held_mib_per_session": None
                if idle is None or held is None
                else round((held - idle) / most / KIB_PER_MIB, 2),
                "peak_reset": m["peak_reset"],
            }
        )
    return rows


def _targets(
    cells: list[dict[str, Any]], groups: list[dict[str, Any]], models: dict[str, Any], fewest: int
) -> dict[str, list[dict[str, Any]]]:
    open_errors = {(g["model"], g["shape"]): g["open_errors"] for g in groups}
    b = BATCHING_TARGET
    batching = [
        {"model": c["model"], "on_vs_off": c["on_vs_off"]["median"]}
        for c in cells
        if c["sessions"] == b["sessions"] and c["shape"] == f"{b['batch']}x{b['tokens']}" and c["on_vs_off"]
    ]
    for check in batching:
        check["met"] = check["on_vs_off"] >= b["min_ratio"]
    held = []
    for c in (c for c in cells if c["sessions"] == HELD_TARGET_SESSIONS):
        errors = c["on"]["errors"] + c["off"]["errors"] + open_errors[(c["model"], c["shape"])]
        held.append({"model": c["model"], "shape": c["shape"], "errors": errors, "met": errors == 0})
    dropout = [
        {"model": c["model"], "shape": c["shape"], "batching": mode, "vs_1_session": ratio["median"]}
        for c in cells
        if fewest == 1 and c["sessions"] == DROPOUT_TARGET["sessions"] and models[c["model"]]["dropout"] > 0
        for mode in MODES
        if (ratio := c[mode]["vs_fewest_sessions"])
    ]
    for check in dropout:
        check["met"] = check["vs_1_session"] >= DROPOUT_TARGET["min_ratio"]
    return {
        "batching_on_vs_off_at_8_sessions_1x64_at_least_2": batching,
        "32_sessions_zero_errors": held,
        "dropout_model_2_sessions_vs_1_at_least_1_6": dropout,
    }


def build_report(
    config: dict[str, Any], models: dict[str, Any], groups: list[dict[str, Any]], *, seconds: float
) -> dict[str, Any]:
    """The JSON report from the groups' raw windows (which it leaves out)."""
    import os

    sessions = list(config["sessions"])
    cells = [cell for group in groups for cell in _cells(group, sessions)]
    return {
        "benchmark": "edge",
        "config": config,
        "cpus": os.cpu_count(),
        "models": {
            name: {k: v for k, v in info.items() if k != "lora_config_json"} for name, info in models.items()
        },
        "baseline_sessions": min(sessions),
        "results": cells,
        "memory": [row for group in groups for row in _memory(group, max(sessions))],
        "open_errors": {f"{g['model']} {g['shape']}": g["open_errors"] for g in groups},
        "open_error_samples": [s for g in groups for s in g["open_error_samples"]][:5],
        "errors_total": sum(g["open_errors"] for g in groups)
        + sum(c[m]["errors"] for c in cells for m in MODES),
        "targets": _targets(cells, groups, models, min(sessions)),
        "seconds": round(seconds, 1),
    }


def markdown_table(report_json: str | dict[str, Any]) -> str:
    """The report as Markdown: throughput and latency per cell, memory per group, the targets."""
    report = json.loads(report_json) if isinstance(report_json, str) else report_json
    fewest = report["baseline_sessions"]
    dtype = report["config"].get("dtype", "float32")
    trunk = "" if dtype == "float32" else f" ({dtype} trunk)"
    rows = [
        f"| model | batch x tokens | N | tokens/s on | tokens/s off | on / off | p50 / p90 ms on "
        f"| p50 / p90 ms off | on, off vs N={fewest} | edge peak MiB on / off "
        "| MiB per active session on / off | edge cores on / off | shared forwards on | errors |",
        "|" + " --- |" * 14,
    ]
    for c in report["results"]:
        on, off = c["on"], c["off"]
        scaling = "{} / {}".format(*(_median(c[m]["vs_fewest_sessions"], "{:.2f}x") for m in MODES))
        rows.append(
            f"| {c['model']}{trunk} | {c['shape']} | {c['sessions']} | {_tps(on)} | {_tps(off)} "
            f"| {_spread_text(c['on_vs_off'])} | {on['step_ms_p50']} / {on['step_ms_p90']} "
            f"| {off['step_ms_p50']} / {off['step_ms_p90']} | {scaling} "
            f"| {on['edge_peak_mib']} / {off['edge_peak_mib']} "
            f"| {on['active_mib_per_session']} / {off['active_mib_per_session']} "
            f"| {on['edge_cpu_cores']} / {off['edge_cpu_cores']} | {on.get('shared_forward_fraction')} "
            f"| {on['errors'] + off['errors']} |"
        )
    columns = ("model", "batch x tokens", "batching", "sessions held", "idle MiB", "held MiB", "peak MiB")
    rows += ["", "| " + " | ".join(columns) + " | MiB per held session |", "|" + " --- |" * 8]
    for m in report["memory"]:
        rows.append(
            f"| {m['model']} | {m['shape']} | {m['mode']} | {m['sessions_held']} | {m['idle_mib']} "
            f"| {m['held_mib']} | {m['peak_mib']} | {m['held_mib_per_session']} |"
        )
    rows.append("")
    for name, checks in report["targets"].items():
        for check in checks:
            detail = ", ".join(f"{k} {v}" for k, v in check.items() if k != "met")
            rows.append(f"- {name}: {detail}: {'met' if check['met'] else 'NOT met'}")
    return "\n".join(rows)


def _tps(mode: dict[str, Any]) -> str:
    t = mode["tokens_per_s"]
    return f"{t['median']:.0f} ({t['min']:.0f}-{t['max']:.0f})"


def _median(ratio: dict[str, Any] | None, fmt: str) -> str:
    return "-" if ratio is None else fmt.format(ratio["median"])


def _spread_text(ratio: dict[str, Any] | None) -> str:
    return "-" if ratio is None else f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"
