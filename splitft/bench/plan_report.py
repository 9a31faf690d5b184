"""The planner's outputs: the table on stdout and the plot of the front (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from splitft.plan.choice import PlanFile, Projected


def render_table(plan: PlanFile, console: Console | None = None) -> None:
    """Every candidate: its projected figures (measured ones) or its status and reason."""
    console = console or Console(width=200)
    cls = plan.device_class
    title = f"plan for {plan.model}" + (
        f": device {cls.memory_bytes / 2**20:.0f} MiB, up {cls.uplink_mbps:g} Mbit/s, "
        f"down {cls.downlink_mbps:g} Mbit/s, speed x{cls.speed(plan.host_flops):.3g}"
        if cls
        else ""
    )
    table = Table(title=title)
    for column in ("candidate", "fits", "front", "held-out loss", "acc", "peak MiB", "KiB/step", "step s"):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    table.add_column("status")
    projected = {p.name: p for p in plan.projected}
    front = set(plan.front)
    skipped: dict[str, int] = {}
    for result in plan.candidates:
        p = projected.get(result.name)
        mark = " *" if result.name == plan.recommended else ""
        if result.status == "skipped":  # one line per reason below, not one row each
            skipped[result.reason] = skipped.get(result.reason, 0) + 1
        elif p is None:
            table.add_row(result.name, "", "", "", "", "", "", "", f"{result.status}: {result.reason}")
        else:
            table.add_row(result.name + mark, *_cells(p, p.name in front), "measured")
    console.print(table)
    for reason, count in skipped.items():
        console.print(f"{count} more candidates not measured: {reason}")
    console.print(f"recommended: {plan.recommended or 'none fits'} (rule: {plan.rule})")


def _cells(p: Projected, on_front: bool) -> list[str]:
    acc = f"{p.held_out_accuracy:.3f}" if p.held_out_accuracy is not None else ""
    return [
        "yes" if p.fits else "no",
        "yes" if on_front else "",
        f"{p.held_out_loss:.4f}",
        acc,
        f"{p.device_peak_mb:.1f}",
        f"{p.bytes_per_step / 1024:.1f}",
        f"{p.step_time_s:.4f}",
    ]


def write_plot(plan: PlanFile, path: Path) -> None:
    """Held-out loss against device peak memory, colour: projected step time; the front ringed, the
    device's memory a vertical line, the recommended point a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    points = plan.projected
    if points:
        xs, ys = [p.device_peak_mb for p in points], [p.held_out_loss for p in points]
        scatter = ax.scatter(xs, ys, c=[p.step_time_s for p in points], cmap="viridis", s=40, zorder=3)
        fig.colorbar(scatter, ax=ax, label="projected step time (s)")
        front = [p for p in points if p.name in set(plan.front)]
        ax.scatter(
            [p.device_peak_mb for p in front],
            [p.held_out_loss for p in front],
            s=140,
            facecolors="none",
            edgecolors="tab:red",
            label="front (loss, memory, step time)",
            zorder=4,
        )
        for p in front:
            ax.annotate(
                p.name,
                (p.device_peak_mb, p.held_out_loss),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
        chosen = [p for p in points if p.name == plan.recommended]
        if chosen:
            ax.scatter(
                [chosen[0].device_peak_mb],
                [chosen[0].held_out_loss],
                marker="*",
                s=260,
                c="tab:orange",
                edgecolors="black",
                label=f"recommended: {chosen[0].name}",
                zorder=5,
            )
    title = f"splitft plan: {plan.model}"
    if plan.device_class is not None:
        memory = plan.device_class.memory_bytes / 2**20
        if memory <= 1.5 * max([p.device_peak_mb for p in points], default=0.0):
            ax.axvline(memory, color="gray", linestyle="--", label="device memory")
        else:  # far right of every point: a line there would squash them against the axis
            title += f" (device memory {memory:.0f} MiB: every point fits)"
    ax.set_xlabel("device peak memory (MiB, over the runtime)")
    ax.set_ylabel("held-out loss after the short run")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
