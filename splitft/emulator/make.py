"""`build_emulator`: the layer-dropped emulator of a split, optionally distilled, as one call."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from splitft.emulator.build import EmulatorSize, replace_blocks, write_emulator
from splitft.emulator.distill import Batch, DistillConfig, distill, evaluate_distance
from splitft.emulator.layout import EmulatorLayout
from splitft.model.loading import load_span

logger = logging.getLogger(__name__)


@dataclass
class EmulatorReport:
    """What `build_emulator` made: its layout, size and, when distilled, the losses."""

    out: str
    layout: EmulatorLayout
    size: EmulatorSize
    distillation: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "num_layers": self.layout.num_layers,
            "device_layers": self.layout.device_layers,
            "head_layers": self.layout.head_layers,
            "keep": self.layout.keep,
            "kept_trunk_blocks": self.layout.kept,
            "emulator_layers": self.layout.emulator_layers,
            "size": {**asdict(self.size), "ratio": self.size.ratio},
            "distillation": self.distillation,
        }


def _whole(model_dir: Path) -> Any:
    """The whole task model of `model_dir` (a head absent from the checkpoint initialised: only the
    blocks' outputs are used here)."""
    return load_span(model_dir, lambda _root, _family: None, init_missing=True)


def build_emulator(
    model_dir: str | Path,
    out: str | Path,
    *,
    device_layers: int,
    head_layers: int,
    keep: int,
    distill_config: DistillConfig | None = None,
    train: list[Batch] | None = None,
    heldout: list[Batch] | None = None,
) -> EmulatorReport:
    """Write the emulator of `model_dir` for the split (k, j) to `out`, keeping `keep` trunk blocks;
    with `distill_config.steps > 0`, distil its trunk on `train` and report the normalized MSE on
    `heldout` (default: `train`) before and after."""
    layout, size = write_emulator(
        model_dir, out, device_layers=device_layers, head_layers=head_layers, keep=keep
    )
    report = EmulatorReport(str(out), layout, size)
    if distill_config is None or distill_config.steps == 0:
        return report
    report.distillation = _distill_into(
        Path(model_dir), Path(out), layout, distill_config, train or [], heldout
    )
    layout = replace(layout, distillation=report.distillation)
    layout.save(Path(out))
    report.layout = layout
    return report


def _distill_into(
    model_dir: Path,
    out: Path,
    layout: EmulatorLayout,
    config: DistillConfig,
    train: list[Batch],
    heldout: list[Batch] | None,
) -> dict[str, Any]:
    full, emulator = _whole(model_dir), _whole(out)
    check = heldout or train
    before = evaluate_distance(full.root, emulator.root, full.family, layout, check)
    losses = distill(full.root, emulator.root, full.family, layout, train, config)
    after = evaluate_distance(full.root, emulator.root, full.family, layout, check)
    blocks = full.family.blocks(emulator.root)
    trunk = range(layout.device_layers, layout.device_layers + layout.keep)

    def trained(index: int, name: str) -> torch.Tensor | None:
        return blocks[index].get_parameter(name) if index in trunk else None

    changed = replace_blocks(out, emulator.config, emulator.family, trained)
    logger.info("distilled %d trunk tensors: normalized MSE %.5f -> %.5f", changed, before, after)
    tail = losses[-10:]
    return {
        "steps": config.steps,
        "lr": config.lr,
        "seed": config.seed,
        "heldout_batches": len(check),
        "heldout_normalized_mse_before": round(before, 6),
        "heldout_normalized_mse_after": round(after, 6),
        "train_loss_first": round(losses[0], 6),
        "train_loss_last_10": round(sum(tail) / len(tail), 6),
    }
