"""The job spec's defenses against a curious edge; `splitft.jobs.spec` re-exports them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, model_validator

from splitft.errors import InvalidArgument
from splitft.jobs.strict import Strict
from splitft.privacy.config import PrivacyConfig


def _weight(description: str) -> Any:
    """A finite non-negative weight or scale, 0 (off) by default."""
    return Field(0.0, ge=0, le=1e6, allow_inf_nan=False, description=description)


class PrivacySpec(Strict):
    """Defenses against a curious edge (`splitft.privacy.PrivacyConfig`, docs/privacy.md); checked by
    PrivacyConfig too, so the control plane refuses exactly what the device's SDK would."""

    activation_clip: StrictFloat | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="L2 bound of each token's (or example's) h_k; null: no clip",
    )
    activation_noise: StrictFloat = _weight("Gaussian noise std on h_k, times activation_clip")
    clip_scope: Literal["token", "example"] = "token"
    gradient_clip: StrictFloat | None = Field(
        None, gt=0, allow_inf_nan=False, description="L2 bound of each example's gradient sent to the edge"
    )
    gradient_noise: StrictFloat = _weight("Gaussian noise std on that gradient, times gradient_clip")
    nopeek_weight: StrictFloat = _weight("weight of the dCor(embeddings, h_k) penalty")
    nopeek_tokens: StrictInt = Field(256, ge=4, le=4096, description="token vectors sampled for the penalty")
    nopeek_warmup: StrictInt = Field(
        0, ge=0, le=10**7, description="training forwards over which the penalty's weight ramps up from 0"
    )
    withhold_gradients: StrictBool = Field(
        False, description="send the edge no gradient (the labels' signal); needs trunk_lora false"
    )

    cca_weight: StrictFloat = _weight("weight of the CCA(public h_k, h_k) penalty")
    cca_target: StrictFloat = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False, description="the leak the CCA penalty stops pushing below"
    )
    private_warmup: StrictInt = Field(
        0, ge=0, le=10**7, description="first training forwards that send nothing (penalties only)"
    )

    warmup_consistency: StrictFloat = _weight("weight of the public trunk's agreement in the warm-up")
    warmup_task: StrictFloat = _weight(
        "weight of the task's loss through a public trunk on the device in the warm-up"
    )

    head_skip: StrictBool = Field(
        False, description="the head also reads a private map of h_k that never leaves the device"
    )

    def config(self) -> PrivacyConfig:
        """The SDK's `PrivacyConfig` (what `SplitModel.from_pretrained(privacy=...)` takes)."""
        return PrivacyConfig(**self.model_dump())

    @model_validator(mode="after")
    def _valid_config(self) -> PrivacySpec:
        try:
            self.config()
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return self
