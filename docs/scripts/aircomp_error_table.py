"""The AirComp error tables of docs/federated.md: mean relative error against FedAvg on random updates.

Run: `.venv/bin/python docs/scripts/aircomp_error_table.py` (about 30 s on 2 shared cores). 50 seeds
per cell; a round with every device in deep fade is refused by aircomp_round and left out (its seed
is named).
"""

from __future__ import annotations

import sys

import numpy as np

from splitft.errors import FailedPrecondition
from splitft.federated import DEFAULT_TRUNCATION, aircomp_round

SNRS = (0, 10, 20, 30)
SEEDS = range(50)


def _updates(count: int, shared: bool, seed: int, entries: int = 20000) -> list[dict[str, np.ndarray]]:
    """A common direction (or none) plus each device's own part of equal power."""
    rng = np.random.default_rng(1000 + seed)
    common = rng.normal(size=entries) if shared else np.zeros(entries)
    return [{"w": (common + rng.normal(size=entries)).astype(np.float32)} for _ in range(count)]


def _cell(
    count: int, shared: bool, fading: str, truncation: float, snr: float
) -> tuple[list[float], list[float], list[int]]:
    errors, fractions, refused = [], [], []
    for seed in SEEDS:
        weights = [int(w) for w in np.random.default_rng(seed).integers(50, 150, size=count)]
        try:
            result = aircomp_round(
                _updates(count, shared, seed),
                weights,
                snr_db=snr,
                fading=fading,
                truncation=truncation,
                seed=seed,
            )
        except FailedPrecondition:
            refused.append(seed)
            continue
        errors.append(result.relative_error)
        fractions.append(len(result.participants) / count)
    return errors, fractions, refused


def main() -> None:
    out = sys.stdout.write
    out("| K | updates | fading | " + " | ".join(f"{s} dB" for s in SNRS) + " | devices in |\n")
    for count in (4, 10):
        for shared in (True, False):
            for fading in ("none", "rayleigh"):
                cells = [_cell(count, shared, fading, DEFAULT_TRUNCATION, snr) for snr in SNRS]
                means = " | ".join(f"{np.mean(e):.3f}" for e, _, _ in cells)
                kept = np.mean([f for _, fs, _ in cells for f in fs])
                refused = sorted({s for _, _, r in cells for s in r})
                name = "shared + own" if shared else "independent"
                out(f"| {count} | {name} | {fading} | {means} | {kept:.0%} | {refused or ''}\n")
    for count in (10, 4):  # K = 4: the bench's devices (its threshold is read off this table)
        out(
            f"\nK = {count}, shared + own, rayleigh: mean (median)\n| truncation | "
            + " | ".join(f"{s} dB" for s in SNRS)
        )
        out(" | devices in |\n")
        for truncation in (0.0, 0.01, 0.03, 0.1, 0.3):
            cells = [_cell(count, True, "rayleigh", truncation, snr) for snr in SNRS]
            means = " | ".join(f"{np.mean(e):.3f} ({np.median(e):.3f})" for e, _, _ in cells)
            out(f"| {truncation} | {means} | {np.mean([f for _, fs, _ in cells for f in fs]):.0%} |\n")


if __name__ == "__main__":
    main()
