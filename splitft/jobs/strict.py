"""The strict pydantic base of every REST contract (job spec, assignment, plan files): unknown fields
are refused, or dropped at every level when validated with `context=IGNORE_UNKNOWN` (the device's
reading of what a newer control plane sends)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

# Validation context under which unknown fields are dropped instead of refused (the device's reading).
IGNORE_UNKNOWN = {"ignore_unknown": True}


class Strict(BaseModel):
    """Unknown fields are refused. Numbers in requests are `StrictInt`/`StrictFloat`: lax pydantic would
    read JSON `true` as 1 and `"0.1"` as 0.1, which hides a client's mistake instead of naming it.

    Validated with `context=IGNORE_UNKNOWN`, unknown fields are dropped at every level instead.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_if_asked(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and isinstance(info.context, dict) and info.context.get("ignore_unknown"):
            return {key: value for key, value in data.items() if key in cls.model_fields}
        return data
