"""The device-side transforms of `PrivacyConfig`: clip-and-noise, and the distance correlation NoPeek
penalizes. Pure torch; `device_client` applies them where tensors leave the device."""

from __future__ import annotations

import torch


def cls_and_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each example's [CLS] vector (position 0) beside its mean over the real tokens of `mask` (all
    tokens without one): what a reader of every position sees of a sequence, in one vector."""
    weights = torch.ones(hidden.shape[:2], dtype=hidden.dtype) if mask is None else mask.to(hidden.dtype)
    weights = weights.to(hidden.device).unsqueeze(-1)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return torch.cat([hidden[:, 0], mean], dim=-1)


def clip_rows(x: torch.Tensor, bound: float, scope: str) -> torch.Tensor:
    """Scale every token vector (last dim; `scope="token"`) or every example (all but dim 0;
    `scope="example"`) of `x` down to an L2 norm of at most `bound`. Differentiable."""
    if scope == "token":
        norms = x.norm(dim=-1, keepdim=True)
    else:
        norms = x.reshape(x.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))
    return x * torch.clamp(bound / (norms + 1e-12), max=1.0)


def clip_and_noise(
    x: torch.Tensor, bound: float, noise: float, scope: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`clip_rows`, then Gaussian noise of std `noise * bound` on every coordinate (a constant for
    autograd: gradients flow through the clipping only)."""
    clipped = clip_rows(x, bound, scope)
    if noise <= 0:
        return clipped
    sample = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device)
    return clipped + (noise * bound) * sample.to(x.dtype)


def _centered_distances(x: torch.Tensor) -> torch.Tensor:
    distances = torch.cdist(x, x)
    return distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation (Szekely et al.) between the rows of `a` [n, p] and `b` [n, q]: 0 for
    independent samples, 1 for a similarity transform of each other. Differentiable."""
    if a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(
            f"distance correlation needs the same number (>= 2) of rows, got {a.shape}, {b.shape}"
        )
    big_a, big_b = _centered_distances(a.float()), _centered_distances(b.float())
    dcov_ab = (big_a * big_b).mean()
    dcov_aa, dcov_bb = (big_a * big_a).mean(), (big_b * big_b).mean()
    denominator = torch.sqrt(torch.clamp(dcov_aa * dcov_bb, min=1e-18))
    return torch.sqrt(torch.clamp(dcov_ab, min=0.0) / denominator)


def sample_tokens(
    embeddings: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matching token vectors of `embeddings` and `hidden` [B, T, H] (real tokens only when `mask`
    [B, T] is given), at most `count` of them, sampled without replacement."""
    flat_e = embeddings.reshape(-1, embeddings.shape[-1])
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1).to(torch.bool).to(flat_e.device)
        flat_e, flat_h = flat_e[keep], flat_h[keep]
    if flat_e.shape[0] > count:
        index = torch.randperm(flat_e.shape[0], device=flat_e.device)[:count]
        flat_e, flat_h = flat_e[index], flat_h[index]
    return flat_e, flat_h


def _inverse_sqrt(covariance: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(covariance)
    return (vectors * values.clamp(min=1e-12).rsqrt()) @ vectors.T


def canonical_leak(reference: torch.Tensor, hidden: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Mean squared canonical correlation between the rows of `reference` [n, p] (a constant: the
    public blocks' h_k) and `hidden` [n, q] (what is sent; differentiable): in [0, 1], the share of the
    whitened reference that the best affine function of `hidden` predicts. Invariant to every
    invertible affine map of `hidden` (up to the ridge, `ridge` times each covariance's mean variance,
    which keeps it defined for fewer rows than dimensions), so it measures what an edge that aligns
    h_k affinely (CORAL) can still read, and lowering it takes a move that is not affine."""
    if reference.shape[0] != hidden.shape[0] or reference.shape[0] < 2:
        raise ValueError(
            f"canonical leak needs the same number (>= 2) of rows, got {reference.shape}, {hidden.shape}"
        )
    a = reference.detach().double()
    b = hidden.double()
    a, b = a - a.mean(0), b - b.mean(0)
    rows = a.shape[0]
    cov_a = a.T @ a / rows
    cov_a = cov_a + ridge * cov_a.diagonal().mean() * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    white_a = a @ _inverse_sqrt(cov_a)
    cov_b = b.T @ b / rows
    cov_b = cov_b + ridge * cov_b.diagonal().mean() * torch.eye(b.shape[1], dtype=b.dtype, device=b.device)
    cross = white_a.T @ b / rows  # [p, q]
    leak = torch.trace(cross @ torch.linalg.solve(cov_b, cross.T)) / a.shape[1]
    return leak.to(hidden.dtype)
