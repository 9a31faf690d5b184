"""Error feedback: what a lossy gradient codec drops this step is added to the next step's input.

With e_0 = 0, c_t = g_t + e_{t-1} (what is encoded), d_t its decoding and e_t = c_t - d_t, the sum of
everything decoded plus the final residual equals the sum of all gradients exactly:
sum_t d_t + e_T = sum_t g_t. Compressed SGD with this correction converges like plain SGD
(Karimireddy et al., 2019; Vogels et al., 2019).

The residual is per *position*: entry (b, t, h) of the residual belongs to entry (b, t, h) of the
next gradient. When the next gradient has another shape (another batch size or sequence length)
the positions no longer correspond, so the residual is dropped (logged at debug level). Training
with a fixed batch shape keeps the full guarantee.
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
