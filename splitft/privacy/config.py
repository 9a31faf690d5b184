"""`PrivacyConfig`: what the device does to the tensors it sends the edge, checked on construction.

Torch-free on purpose: the job spec (`splitft.jobs.spec`) validates it on the control plane, which
never imports torch. The transforms themselves live in `splitft.privacy.transforms`.

- Activation noise: every activation the device sends (h_k, the input of the trunk) is clipped to an
  L2 norm of at most `activation_clip` (per token vector, or per example with `clip_scope="example"`),
  then Gaussian noise of standard deviation `activation_noise * activation_clip` is added to every
  coordinate. The device's own blocks train through the clipped, noisy tensor (the noise is a constant
  for autograd). This is a noise defense, NOT differential privacy: no privacy accounting is done.
- Gradient noise: every gradient the device returns for the trunk output is clipped per example to
  `gradient_clip` and gets noise of standard deviation `gradient_noise * gradient_clip`. It hides the
  labels, whose signal the gradient carries; the edge's adapter and the device's first blocks train
  on the noisy gradient.
- NoPeek: `nopeek_weight * dCor(embeddings, h_k)` is added to the loss the device computes, the
  distance correlation between the token embeddings and h_k over (at most `nopeek_tokens` sampled)
  token vectors of the batch; the device's blocks learn to decorrelate what they send from the input.
  With `nopeek_warmup` = n, the weight ramps linearly from 0 over the first n training forwards (the
  task trains first).
- CCA penalty: `cca_weight * leak(public h_k, h_k)` joins the loss like NoPeek's, where leak is the
  mean squared canonical correlation (ridge-regularised) between the h_k the device sends and the h_k
  the public blocks give for the same tokens (a frozen copy of the device's first blocks, adapters
  off). It is invariant to every invertible affine map of h_k, so the device cannot lower it by the
  affine moves an aligning edge undoes (docs/privacy-history.md, "Third pass"). With `cca_target` = t the
  penalty is `cca_weight * max(leak - t, 0)`: it stops pushing once the leak is down to t, so it
  cannot move h_k on past what hiding the tokens needs while the task holds it back.
- Private warm-up: the first `private_warmup` training forwards send nothing: each stops where h_k
  would leave, and its loss is the penalties alone (NoPeek and CCA at full weight), so the device's
  first blocks move away from the public ones before the edge sees a single activation. With
  `warmup_consistency` = w, the warm-up's loss also has w times the relative squared distance between
  what a public copy of the trunk (loaded on the device for the warm-up) gives at [CLS] and averaged
  over the tokens for the moved h_k and for the public h_k: the blocks move, and the sentence the trunk
  sees stays. With `warmup_task` = t, it also has t times the task's loss computed on the device alone:
  the moved h_k through that public trunk, then the device's own blocks after the trunk and its head,
  against the device's labels (so the warm-up's forwards need labels). The blocks move where the public
  trunk can still classify, and the head trains before the edge sees anything.
- Withheld gradients: the device never sends the gradient of the trunk output, the one tensor that
  carries the labels' signal to the edge. Only what runs on the device after the trunk (the head) trains
  on the task; the trunk must be frozen (`trunk_lora=False`), and the device's first blocks train on the
  penalties alone (when they are on) or not at all, unless the head skip gives the task a path to them.
- Head skip: the blocks after the trunk read the trunk's output plus a private linear map of h_k (as
  computed, before clip and noise), zero at the start (the model starts as it would without it). The
  map never leaves the device (saved beside the peft adapter, in checkpoints, never aggregated). With
  withheld gradients it is the task's path back to the device's first blocks, which otherwise train
  on the penalties alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from splitft.errors import InvalidArgument

CLIP_SCOPES = ("token", "example")
WITHHELD_TRUNK = (
    "privacy.withhold_gradients: the trunk's adapter trains on the gradient the device withholds: "
    "set trunk_lora false"
)


@dataclass(frozen=True)
class PrivacyConfig:
    """Defenses against a curious edge; all off by default (then the wire carries exactly what it
    carries without a config)."""

    activation_clip: float | None = None  # L2 bound of each token's (or example's) h_k; None: no clip
    activation_noise: float = 0.0  # noise std per coordinate, as a multiple of activation_clip
    clip_scope: Literal["token", "example"] = "token"
    gradient_clip: float | None = None  # L2 bound of each example's gradient sent to the edge
    gradient_noise: float = 0.0  # noise std per coordinate, as a multiple of gradient_clip
    nopeek_weight: float = 0.0  # weight of the distance-correlation penalty in the device's loss
    nopeek_tokens: int = 256  # token vectors sampled per batch for the penalty (O(n^2) memory)
    nopeek_warmup: int = 0  # training forwards over which the penalty's weight ramps up from 0
    withhold_gradients: bool = False  # send no gradient: the labels' signal never leaves the device
    cca_weight: float = 0.0  # weight of the canonical-correlation penalty against the public h_k
    cca_target: float = 0.0  # the leak the CCA penalty stops pushing below (0: it always pushes)
    private_warmup: int = 0  # first training forwards that send nothing and train on the penalties
    warmup_consistency: float = 0.0  # weight of the public trunk's agreement during the warm-up
    warmup_task: float = 0.0  # weight of the task loss through a public trunk on the device (warm-up)
    head_skip: bool = False  # the head also reads a private map of h_k (not sent; zero at the start)

    def __post_init__(self) -> None:
        _bound("activation_clip", self.activation_clip, optional=True, positive=True)
        _bound("activation_noise", self.activation_noise)
        _bound("gradient_clip", self.gradient_clip, optional=True, positive=True)
        _bound("gradient_noise", self.gradient_noise)
        _bound("nopeek_weight", self.nopeek_weight)
        _bound("cca_weight", self.cca_weight)
        _bound("warmup_consistency", self.warmup_consistency)
        _bound("warmup_task", self.warmup_task)
        _bound("cca_target", self.cca_target)
        if self.cca_target >= 1:
            raise InvalidArgument(f"privacy.cca_target must lie in [0, 1), got {self.cca_target!r}")
        if self.cca_target > 0 and self.cca_weight == 0:
            raise InvalidArgument("privacy.cca_target bounds the CCA penalty: set privacy.cca_weight")
        if self.clip_scope not in CLIP_SCOPES:
            raise InvalidArgument(
                f"privacy.clip_scope must be one of {list(CLIP_SCOPES)}, got {self.clip_scope!r}"
            )
        if isinstance(self.nopeek_tokens, bool) or not isinstance(self.nopeek_tokens, int):
            raise InvalidArgument(f"privacy.nopeek_tokens must be an integer, got {self.nopeek_tokens!r}")
        if not 4 <= self.nopeek_tokens <= 4096:
            raise InvalidArgument(f"privacy.nopeek_tokens must lie in [4, 4096], got {self.nopeek_tokens}")
        _count("nopeek_warmup", self.nopeek_warmup)
        _count("private_warmup", self.private_warmup)
        if self.private_warmup > 0 and self.nopeek_weight == 0 and self.cca_weight == 0:
            raise InvalidArgument(
                "privacy.private_warmup trains on the penalties alone: set privacy.cca_weight or "
                "privacy.nopeek_weight"
            )
        if self.warmup_consistency > 0 and self.private_warmup == 0:
            raise InvalidArgument(
                "privacy.warmup_consistency acts during the private warm-up: set privacy.private_warmup"
            )
        if self.warmup_task > 0 and self.private_warmup == 0:
            raise InvalidArgument(
                "privacy.warmup_task needs privacy.private_warmup > 0 (the task term acts during the "
                "private warm-up)"
            )
        if self.activation_noise > 0 and self.activation_clip is None:
            raise InvalidArgument(
                "privacy.activation_noise needs privacy.activation_clip (the noise's scale)"
            )
        if self.gradient_noise > 0 and self.gradient_clip is None:
            raise InvalidArgument("privacy.gradient_noise needs privacy.gradient_clip (the noise's scale)")
        _flag("withhold_gradients", self.withhold_gradients)
        _flag("head_skip", self.head_skip)
        if self.withhold_gradients and self.gradient_clip is not None:
            raise InvalidArgument(
                "privacy.withhold_gradients sends no gradient: privacy.gradient_clip has nothing to clip"
            )

    @property
    def active(self) -> bool:
        """Whether anything changes what crosses the wire or what the device optimizes."""
        return self != PrivacyConfig()

    @property
    def touches_activations(self) -> bool:
        return self.activation_clip is not None

    @property
    def touches_gradients(self) -> bool:
        return self.gradient_clip is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | PrivacyConfig | None) -> PrivacyConfig:
        """From a mapping (a job spec's `privacy`, a CLI's parsed flags); unknown keys are refused by
        name."""
        if data is None:
            return cls()
        if isinstance(data, PrivacyConfig):
            return data
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"privacy must be a PrivacyConfig or a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument(f"privacy: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def for_split(cls, data: Mapping[str, Any] | PrivacyConfig | None, trunk_lora: bool) -> PrivacyConfig:
        """`from_dict`, also checked against the split: withheld gradients leave a trunk adapter
        nothing to train on."""
        config = cls.from_dict(data)
        if config.withhold_gradients and trunk_lora:
            raise InvalidArgument(WITHHELD_TRUNK)
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A short label for tables: the options that are on."""
        if not self.active:
            return "none"
        parts = []
        if self.activation_clip is not None:
            parts.append(
                f"act clip {self.activation_clip:g}/{self.clip_scope} noise {self.activation_noise:g}"
            )
        if self.gradient_clip is not None:
            parts.append(f"grad clip {self.gradient_clip:g} noise {self.gradient_noise:g}")
        if self.nopeek_weight > 0:
            parts.append(f"nopeek {self.nopeek_weight:g}")
            if self.nopeek_warmup:
                parts[-1] += f" (warm-up {self.nopeek_warmup})"
        if self.cca_weight > 0:
            parts.append(
                f"cca {self.cca_weight:g}" + (f" (target {self.cca_target:g})" if self.cca_target else "")
            )
        if self.private_warmup:
            parts.append(f"private warm-up {self.private_warmup}")
            extras = [f"trunk consistency {self.warmup_consistency:g}"] if self.warmup_consistency else []
            extras += [f"task {self.warmup_task:g}"] if self.warmup_task else []
            if extras:
                parts[-1] += f" ({', '.join(extras)})"
        if self.withhold_gradients:
            parts.append("gradients withheld")
        if self.head_skip:
            parts.append("head skip")
        return ", ".join(parts)


def _bound(name: str, value: object, *, optional: bool = False, positive: bool = False) -> None:
    """`value` must be a finite real number >= 0 (> 0 when `positive`), or None when `optional`."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"privacy.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        sign = "> 0" if positive else ">= 0"
        raise InvalidArgument(f"privacy.{name} must be a finite number {sign}, got {value!r}")


def _flag(name: str, value: object) -> None:
    """`value` must be a boolean (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"privacy.{name} must be a boolean, got {value!r}")


def _count(name: str, value: object) -> None:
    """`value` must be an integer in [0, 10^7] (a number of training forwards)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"privacy.{name} must be an integer, got {value!r}")
    if not 0 <= value <= 10**7:
        raise InvalidArgument(f"privacy.{name} must lie in [0, 10000000], got {value}")
