"""The privacy meter end to end: train tapped, then attack what the edge received.

Token recovery: a linear and an MLP decoder trained on public docstrings through the public device
blocks (transformed by the job's privacy config, which the edge knows), applied to the h_k the edge
received in the first epoch (adapters near their initialisation) and in the last (adapters trained).
The trunk decoder: the edge also computes the trunk's output for every h_k it receives, so it trains a
linear decoder from the public trunk's output (public text through the public device blocks and the
public trunk) to the token and applies it to those outputs (plain and aligned, first and last epoch).
Label inference: per epoch, on the gradient the edge received for the trunk output at position 0
([CLS]), on the trunk output it computed there, and on the h_k it received there; beside them the
oracle probes, linear probes trained on those trunk outputs and h_k (at [CLS], and at [CLS] with the
mean over the tokens) with every true label (cross-validated): what a linear reader that knew the
labels would get from them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig

from splitft.audit.config import AuditConfig
from splitft.audit.train import Epoch, Recording, train_tapped
from splitft.data.stdlib_task import build_stdlib_task
from splitft.privacy.adaptive import coral_align
from splitft.privacy.inversion import (
    Decoder,
    TokenSet,
    concat,
    fit_linear,
    fit_mlp,
    public_token_set,
    token_set,
)
from splitft.privacy.labels import infer_labels, oracle_probe
from splitft.privacy.public_text import public_texts
from splitft.privacy.transforms import cls_and_mean

logger = logging.getLogger(__name__)


@dataclass
class AuditReport:
    """What a curious edge recovers; fractions in [0, 1]."""

    privacy: dict[str, object]
    accuracy: float  # held-out, after training, with the defenses on
    tokens: dict[str, dict[str, float]] = field(default_factory=dict)  # decoder@phase -> top1/top5
    labels: dict[str, dict[str, float]] = field(default_factory=dict)  # signal@epoch -> attacks
    scored_tokens: int = 0
    public_tokens: int = 0
    seconds: float = 0.0

    @property
    def token_recovery(self) -> float:
        """The headline: the best decoder's top-1 recovery, first or last epoch."""
        return max((row["top1"] for row in self.tokens.values()), default=0.0)

    @property
    def gradient_label_inference(self) -> float:
        return self._best_attack("gradient")

    @property
    def output_label_inference(self) -> float:
        return self._best_attack("output")

    @property
    def input_label_inference(self) -> float:
        """The attacks on the h_k the edge received (at [CLS])."""
        return self._best_attack("input")

    @property
    def output_label_oracle(self) -> float:
        """The oracle probes on the trunk output (all labels known, cross-validated): the better of
        [CLS] alone and [CLS] with the mean over tokens, best epoch."""
        return self._best_oracle("output")

    @property
    def input_label_oracle(self) -> float:
        """The same probes on the h_k the edge received."""
        return self._best_oracle("input")

    def _best_attack(self, signal: str) -> float:
        return max((row["best"] for key, row in self.labels.items() if key.startswith(signal)), default=0.0)

    def _best_oracle(self, signal: str) -> float:
        rows = [row for key, row in self.labels.items() if key.startswith(signal)]
        return max((max(row.get("oracle", 0.0), row.get("oracle_pooled", 0.0)) for row in rows), default=0.0)

    @property
    def label_chance(self) -> float:
        return max((row["chance"] for row in self.labels.values()), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "token_recovery": self.token_recovery,
            "gradient_label_inference": self.gradient_label_inference,
            "output_label_inference": self.output_label_inference,
            "output_label_oracle": self.output_label_oracle,
            "input_label_inference": self.input_label_inference,
            "input_label_oracle": self.input_label_oracle,
            "label_chance": self.label_chance,
        }


class PublicCache:
    """Public token vectors per (layer, clip, trunk): the expensive part, shared by the configurations
    of a sweep. h_k (`trunk=False`), or the public trunk's output on h_k as the device sends it."""

    def __init__(self, model_dir: Path, texts: list[str], max_length: int) -> None:
        self.model_dir, self.texts, self.max_length = model_dir, texts, max_length
        self.layers = int(AutoConfig.from_pretrained(str(model_dir), local_files_only=True).num_hidden_layers)
        self._sets: dict[tuple[object, ...], TokenSet] = {}

    def get(self, config: AuditConfig, *, trunk: bool = False) -> TokenSet:
        p = config.privacy
        blocks = self.layers - config.device_layers - config.head_layers if trunk else 0
        noise = (p.activation_noise, config.seed) if trunk else None  # the trunk's input is noised
        key = (config.device_layers, p.activation_clip, p.clip_scope, blocks, noise)
        if key not in self._sets:
            self._sets[key] = public_token_set(
                self.model_dir,
                self.texts,
                config.device_layers,
                privacy=p,
                max_length=self.max_length,
                trunk_blocks=blocks,
                seed=config.seed,
            )
        return self._sets[key]


def _private_tokens(recording: Recording, epoch: Epoch, *, trunk: bool = False) -> TokenSet:
    """The epoch's token vectors the edge had: the h_k received, or (`trunk`) the trunk output computed."""
    tensors = recording.tap.returned_hidden if trunk else recording.tap.sent_hidden
    sets = [
        token_set(tensors[i], ids, mask, recording.special_ids)
        for i, ids, mask in zip(epoch.forwards, epoch.input_ids, epoch.masks, strict=True)
    ]
    return concat(sets)


def _label_rows(recording: Recording, epoch: Epoch, known: int, seed: int) -> dict[str, dict[str, float]]:
    labels = torch.cat(epoch.labels)
    outputs = torch.cat([recording.tap.returned_hidden[i][:, 0, :] for i in epoch.forwards])
    inputs = torch.cat([recording.tap.sent_hidden[i][:, 0, :] for i in epoch.forwards])
    signals = {"output": outputs, "input": inputs}
    if len(recording.tap.sent_grads) > 0:  # none when the device withholds them
        signals["gradient"] = torch.cat([recording.tap.sent_grads[i][:, 0, :] for i in epoch.backwards])
    rows = {}
    for name, features in signals.items():
        attack = infer_labels(features, labels, known_per_class=known, seed=seed)
        rows[name] = {**asdict(attack), "best": attack.best}
    for name, tensors in (("output", recording.tap.returned_hidden), ("input", recording.tap.sent_hidden)):
        rows[name]["oracle"] = oracle_probe(signals[name], labels, seed=seed)
        rows[name]["oracle_pooled"] = oracle_probe(_pooled(tensors, epoch), labels, seed=seed)
    return rows


def _pooled(tensors: list[torch.Tensor], epoch: Epoch) -> torch.Tensor:
    """Each example's vector (the trunk output, or h_k) at [CLS] beside its mean over the real tokens
    (the device's head reads every position, so the class need not sit at [CLS] alone)."""
    return torch.cat(
        [cls_and_mean(tensors[i], mask) for i, mask in zip(epoch.forwards, epoch.masks, strict=True)]
    )


def _decode(
    report: AuditReport,
    rows: tuple[str, str],
    decoders: dict[str, Decoder],
    sets: tuple[TokenSet, TokenSet],
    noise: float,
) -> None:
    """Each decoder's row for one phase, `rows` = (prefix of the row names, phase), on `sets` =
    (private, public), and the adaptive edge's: the private distribution aligned with the public one,
    then decoded linearly."""
    (prefix, phase), (private, public) = rows, sets
    for name, decoder in decoders.items():
        top1, top5 = decoder.recovery(private)
        report.tokens[f"{prefix}{name}@{phase}"] = {"top1": top1, "top5": top5}
    top1, top5 = decoders["linear"].recovery(coral_align(private, public, noise_std=noise))
    report.tokens[f"{prefix}linear_aligned@{phase}"] = {"top1": top1, "top5": top5}


def attack(config: AuditConfig, recording: Recording, public: TokenSet, trunk: TokenSet) -> AuditReport:
    """Every attack on one recording; `public` / `trunk`: public h_k / the public trunk's output."""
    p = config.privacy
    noise = p.activation_noise * p.activation_clip if p.activation_clip is not None else 0.0
    decoders: dict[str, Decoder] = {"linear": fit_linear(public, noise_std=noise)}
    if config.mlp_epochs > 0:
        decoders["mlp"] = fit_mlp(public, noise_std=noise, epochs=config.mlp_epochs, seed=config.seed)
    trunk_decoders = {"linear": fit_linear(trunk)}  # the noise went through the trunk with the text
    report = AuditReport(privacy=p.to_dict(), accuracy=recording.accuracy, public_tokens=len(public))
    phases = {"first_epoch": recording.epochs[0], "last_epoch": recording.epochs[-1]}
    for phase, epoch in phases.items():
        private = _private_tokens(recording, epoch)
        report.scored_tokens = len(private)
        _decode(report, ("", phase), decoders, (private, public), noise)
        outputs = _private_tokens(recording, epoch, trunk=True)
        _decode(report, ("trunk_", phase), trunk_decoders, (outputs, trunk), 0.0)
    for number, epoch in enumerate(recording.epochs, start=1):
        for signal, row in _label_rows(recording, epoch, config.known_per_class, config.seed).items():
            report.labels[f"{signal}@epoch{number}"] = row
    return report


def run_audits(
    configs: list[AuditConfig], model_dir: Path, on_report: Callable[[list[AuditReport]], None] | None = None
) -> list[AuditReport]:
    """Audit each configuration (same task, same public text; public activations computed once per
    layer and clip); `on_report` gets the reports so far after each one."""
    torch.set_num_threads(1)  # device and edge share this process: one thread each call, no idle spinning
    first = configs[0]
    task = build_stdlib_task(max_per_class=first.max_per_class)
    private_texts = [example.text for example in (*task.train, *task.heldout)]
    texts = public_texts(exclude_texts=private_texts, limit=first.public_texts)
    cache = PublicCache(model_dir, texts, first.max_length)
    reports = []
    for config in configs:
        started = time.perf_counter()
        recording = train_tapped(config, model_dir, task)
        report = attack(config, recording, cache.get(config), cache.get(config, trunk=True))
        report.seconds = round(time.perf_counter() - started, 1)
        logger.info(
            "audit %s: accuracy %.3f, token recovery %.3f, labels from the gradient %s, from the trunk "
            "output %.3f (oracle probe %.3f), from h_k %.3f (oracle probe %.3f), chance %.3f",
            config.privacy.describe(),
            report.accuracy,
            report.token_recovery,
            "none sent" if config.privacy.withhold_gradients else f"{report.gradient_label_inference:.3f}",
            report.output_label_inference,
            report.output_label_oracle,
            report.input_label_inference,
            report.input_label_oracle,
            report.label_chance,
        )
        reports.append(report)
        if on_report is not None:
            on_report(reports)
    return reports
