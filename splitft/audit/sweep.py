"""The configurations of docs/privacy.md's curves: (privacy config, LoRA rank or None for the default)."""

from __future__ import annotations

from splitft.privacy.config import PrivacyConfig

SWEEP: list[tuple[PrivacyConfig, int | None]] = [
    (PrivacyConfig(), None),
]
