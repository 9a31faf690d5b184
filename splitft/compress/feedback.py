"""Error feedback: what a lossy gradient codec drops this step is added to the next step's input.

With e_0 = 0, c_t = g_t + e_{t-1} (what is encoded), d_t its decoding and e_t = c_t - d_t, the sum of
everything decoded plus the final residual equals the sum of all gradients exactly:
sum_t d_t + e_T = sum_t g_t. That identity holds here as anywhere; what does not carry over is the
convergence result built on it. For compressed *parameter* gradients (Karimireddy et al., 2019;
PowerSGD, Vogels et al., 2019) entry j of every g_t belongs to the same parameter j, so a delayed
residual still reaches the parameter it was owed to, and compressed SGD converges like SGD.

splitft compresses *activation* gradients: the gradient of the loss with respect to the hidden
states crossing the split, one row per (example, token). Entry (b, t, h) of the residual belongs
to example b of the batch it came from; the next batch holds other examples, so the residual is
added to another example's gradient, which then flows back into the device's parameters as if
that example had produced it. The sum identity says nothing about that, and no convergence result
covers it. Measured (`splitft bench converge`, docs/benchmarks.md): on the causal LM it rescued
1% top-k (+42% -> +9.6% held-out loss) and hurt low rank at both ranks (rank 4: +4.6% -> +8.4%,
rank 8: +2.3% -> +3.8%). So `spec` turns it on by default for topk only; `:ef` / `:noef` choose.
A per-example residual (AQ-SGD keeps one per training example) would need example ids on the
wire, which splitft does not send.

The residual is per *position*: when the next gradient has another shape (another batch size or
sequence length) the positions no longer correspond, so the residual is dropped (logged at debug
level).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class ErrorFeedback:
    """The residual of one tensor stream (one name, one direction, one session)."""

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None

    def compensate(self, grad: torch.Tensor) -> torch.Tensor:
        """g + e, in at least fp32 so small residuals are not rounded away."""
        g = grad.detach().to(torch.promote_types(grad.dtype, torch.float32))
        if self.residual is None:
            return g.clone()
        if self.residual.shape != g.shape:
            logger.debug("error feedback: shape %s -> %s, residual dropped", self.residual.shape, g.shape)
            self.residual = None
            return g.clone()
        return g + self.residual.to(device=g.device, dtype=g.dtype)

    def record(self, compensated: torch.Tensor, decoded: torch.Tensor) -> None:
        """Keep what the receiver did not get: e = compensated - decoded."""
        self.residual = compensated - decoded.to(device=compensated.device, dtype=compensated.dtype)

    def reset(self) -> None:
        self.residual = None
