"""The audit's settings (torch-free: the CLI builds them)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from splitft.errors import InvalidArgument
from splitft.privacy.config import PrivacyConfig


@dataclass(frozen=True)
class AuditConfig:
    """One split training of the demo task, attacked as a curious edge would attack it."""

    model_dir: str | None = None  # None: the demo's packaged all-MiniLM-L6-v2
    device_layers: int = 2
    head_layers: int = 1
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 64
    lr: float = 2e-3
    lora_rank: int = 8
    max_per_class: int = 160  # the demo task's size (and its 128 held-out examples)
    train_stride: int = 1  # train on every n-th training example (a cheaper run, same held-out set)
    public_texts: int = 3000  # public docstrings the decoders train on
    mlp_epochs: int = 4
    known_per_class: int = 8  # labels the label attacker knows
    seed: int = 0
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def __post_init__(self) -> None:
        checks = {
            "device_layers": self.device_layers >= 1,
            "head_layers": self.head_layers >= 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "max_length": self.max_length >= 8,
            "lr": self.lr > 0,
            "lora_rank": self.lora_rank >= 1,
            "max_per_class": self.max_per_class >= 4,
            "train_stride": self.train_stride >= 1,
            "public_texts": self.public_texts >= 10,
            "mlp_epochs": self.mlp_epochs >= 0,
            "known_per_class": self.known_per_class >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidArgument(f"audit: {name} out of range: {getattr(self, name)!r}")

    @classmethod
    def quick(cls, **changes: object) -> AuditConfig:
        """A run of seconds to a minute (the e2e test's): a small task, one epoch, few public texts."""
        base = cls(
            epochs=1, max_per_class=24, public_texts=300, mlp_epochs=1, known_per_class=2, max_length=32
        )
        return replace(base, **changes)  # type: ignore[arg-type]
