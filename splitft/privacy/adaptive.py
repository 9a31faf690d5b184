"""An edge that adapts its decoder to the activations it receives, without knowing their tokens.

When a defense moves h_k away from what the public blocks give (NoPeek, the device's adapters), a
decoder trained on public h_k meets inputs from another distribution. The edge cannot label the
received tokens, but it can align their distribution with the public one: CORAL (Sun et al., 2016),
whitening the received vectors with their own mean and covariance and colouring them with the public
ones (plus the defense's noise, which the public decoder was trained against), then decoding. This
undoes any affine change of h_k; what it cannot undo is a change the trunk would have to learn too.
"""

from __future__ import annotations

import torch

from splitft.privacy.inversion import TokenSet


def _moments(x: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    centered = x - mean
    covariance = centered.T @ centered / max(1, len(x) - 1)
    ridge = shrinkage * float(covariance.diagonal().mean())
    return mean, covariance + ridge * torch.eye(x.shape[1], dtype=x.dtype)


def _sqrt_and_inverse_sqrt(covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp(min=1e-12)
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


def coral_align(
    private: TokenSet, public: TokenSet, noise_std: float = 0.0, shrinkage: float = 1e-3
) -> TokenSet:
    """`private`'s vectors moved to the public vectors' mean and covariance (the latter plus the
    defense's noise variance `noise_std^2` on the diagonal); the tokens are kept for scoring only."""
    x, reference = private.hidden.double(), public.hidden.double()
    mean_p, cov_p = _moments(x, shrinkage)
    mean_r, cov_r = _moments(reference, shrinkage)
    cov_r = cov_r + noise_std**2 * torch.eye(x.shape[1], dtype=x.dtype)
    _, whiten = _sqrt_and_inverse_sqrt(cov_p)
    colour, _ = _sqrt_and_inverse_sqrt(cov_r)
    aligned = (x - mean_p) @ whiten @ colour + mean_r
    return TokenSet(aligned.float(), private.tokens)
