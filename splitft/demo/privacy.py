"""The privacy audit's headline in the demo: one cheap number for the demo's configuration."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from splitft.data.stdlib_task import TextTask
from splitft.demo.sdk import DemoConfig
from splitft.privacy.headline import headline_recovery


def print_privacy_headline(console: Console, model_dir: Path, task: TextTask, config: DemoConfig) -> float:
    """The privacy audit's headline for this configuration, cheaply (splitft.privacy.headline)."""
    sample = [example.text for example in task.train[:: max(1, len(task.train) // 160)]]
    recovery = headline_recovery(model_dir, sample, config.device_layers, max_length=config.max_length)
    console.print(
        f"[bold]privacy[/]: the edge sees h_{config.device_layers}; a linear decoder trained on public "
        f"docstrings reads [bold]{recovery:.0%}[/] of the device's tokens from it (no defense on; "
        "`splitft privacy audit` for the full report and the defenses, docs/privacy.md)"
    )
    return round(recovery, 4)
