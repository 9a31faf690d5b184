"""The configurations of docs/privacy.md's curves: (privacy config, LoRA rank or None for the default).

The activation clip, 12, is about the median L2 norm of an all-MiniLM-L6-v2 token vector after two
blocks (10th to 90th percentile 11.0 to 12.2), so the clip rarely bites and the noise's std per
coordinate is `activation_noise * 12` (the coordinates' own spread across tokens is about 0.5).
The gradient clip, 0.01, is below every example's gradient norm, so it always bites.
"""

from __future__ import annotations

from splitft.errors import InvalidArgument
from splitft.privacy.config import PrivacyConfig

CLIP = 12.0
GRADIENT_CLIP = 0.01
SWEEP: list[tuple[PrivacyConfig, int | None]] = [
    (PrivacyConfig(), None),
    *((PrivacyConfig(activation_clip=CLIP, activation_noise=s), None) for s in (0.15, 0.2, 0.3, 0.45)),
    *((PrivacyConfig(gradient_clip=GRADIENT_CLIP, gradient_noise=s), None) for s in (0.3, 0.6, 1.0)),
    (PrivacyConfig(nopeek_weight=0.5), None),
    (PrivacyConfig(nopeek_weight=1.0), None),
    (PrivacyConfig(nopeek_weight=2.0), 32),
    # The second pass (docs/privacy-history.md): NoPeek at intermediate weights, a warm-up of one
    # reduced-scale epoch (11 steps), a larger rank; gradients withheld, alone and with NoPeek.
    (PrivacyConfig(nopeek_weight=1.0, nopeek_warmup=11), None),
    (PrivacyConfig(nopeek_weight=1.5), None),
    (PrivacyConfig(nopeek_weight=1.0), 32),
    (PrivacyConfig(withhold_gradients=True), None),
    (PrivacyConfig(withhold_gradients=True, nopeek_weight=1.0), None),
    # The third pass: the CCA penalty after a private warm-up (nothing sent), with and without the
    # public trunk's consistency during the warm-up.
    (PrivacyConfig(cca_weight=0.3, private_warmup=20), None),
    (PrivacyConfig(cca_weight=1.0, private_warmup=40), None),
    *(
        (PrivacyConfig(cca_weight=1.0, private_warmup=40, warmup_consistency=w), None)
        for w in (0.1, 0.3, 1.0)
    ),
    # The fifth pass: the task's loss through a public trunk on the device joins the warm-up.
    (PrivacyConfig(cca_weight=1.0, private_warmup=80, warmup_task=0.3), None),
    # The seventh pass: that defense with no gradient sent, the head reading a private map of h_2, the
    # penalty capped (at the sweep's split, j = 1; the pass's best point also moves a block to the head).
    (
        PrivacyConfig(
            cca_weight=1.0,
            cca_target=0.2,
            private_warmup=80,
            warmup_task=0.3,
            withhold_gradients=True,
            head_skip=True,
        ),
        None,
    ),
]


def sweep_part(part: str) -> list[tuple[PrivacyConfig, int | None]]:
    """Part "K/N" of SWEEP (every N-th configuration from the K-th), to run the sweep in N processes."""
    try:
        k, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise InvalidArgument(f"--part expects K/N, got {part!r}") from None
    if not 1 <= k <= n:
        raise InvalidArgument(f"--part expects 1 <= K <= N, got {part!r}")
    return SWEEP[k - 1 :: n]
