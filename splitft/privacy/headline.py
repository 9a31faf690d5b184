"""The audit's headline number, cheaply (for the demo): the share of the device's tokens a linear
decoder trained on public docstrings reads from h_k as the edge receives it before the device's
adapters train (the first epoch's view; `splitft privacy audit` measures every phase and attack)."""

from __future__ import annotations

from pathlib import Path

import torch

from splitft.data.stdlib_task import DEFAULT_PACKAGES
from splitft.privacy.config import PrivacyConfig
from splitft.privacy.inversion import TokenSet, fit_linear, public_token_set
from splitft.privacy.public_text import public_texts


def headline_recovery(
    model_dir: str | Path,
    private_texts: list[str],
    layer: int,
    *,
    privacy: PrivacyConfig = PrivacyConfig(),
    public_limit: int = 400,
    max_length: int = 64,
    seed: int = 0,
) -> float:
    """Top-1 token recovery of a linear decoder from h_`layer` of `private_texts` (clipped and noised
    as `privacy` says), trained on `public_limit` public docstrings through the public weights."""
    public = public_texts(exclude_packages=DEFAULT_PACKAGES, exclude_texts=private_texts, limit=public_limit)
    train = public_token_set(model_dir, public, layer, privacy=privacy, max_length=max_length)
    private = public_token_set(model_dir, private_texts, layer, privacy=privacy, max_length=max_length)
    noise = privacy.activation_noise * privacy.activation_clip if privacy.activation_clip is not None else 0.0
    if noise > 0:
        generator = torch.Generator().manual_seed(seed)
        private = TokenSet(
            private.hidden + noise * torch.randn(private.hidden.shape, generator=generator), private.tokens
        )
    return fit_linear(train, noise_std=noise).recovery(private)[0]
