"""The selection methods' members of the job spec (TaskEdge, TinyTrain); `splitft.jobs.spec` re-exports
them."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, StrictFloat, StrictInt, model_validator

from splitft.errors import InvalidArgument
from splitft.jobs.strict import Strict
from splitft.methods.registry import get_method
from splitft.methods.tinytrain.config import default_memory_budget


class SelectionSpec(Strict):
    """A selection method's member of the job spec: its config's fields, with the bounds OpenAPI
    documents, plus how many local batches the device calibrates on.

    The method's own config class checks the fields too (through `splitft.methods.registry`), so
    the control plane refuses exactly what the device's SDK would, and the agent builds the SDK's
    config with `method_config()` instead of a converter per method.
    """

    method_name: ClassVar[str]  # the method's registered name
    calibration_batches: StrictInt = Field(4, ge=1, le=1000, description="local batches calibrate() runs on")

    def config_fields(self) -> dict[str, Any]:
        """The fields the method's config takes (all but `calibration_batches`)."""
        return self.model_dump(exclude={"calibration_batches"})

    def method_config(self) -> Any:
        """The SDK's config for this member, built by the method's registered config class."""
        return get_method(self.method_name).config_from(self.config_fields())

    @model_validator(mode="after")
    def _valid_for_the_method(self) -> SelectionSpec:
        try:
            self.method_config()
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return self


class TaskEdgeSpec(SelectionSpec):
    """TaskEdge selection: which share of the weights to train, scored on the device before training."""

    method_name: ClassVar[str] = "taskedge"

    budget_fraction: StrictFloat = Field(0.001, gt=0, le=1, description="share of ALL parameters to train")
    n_m: tuple[StrictInt, StrictInt] | None = Field(None, description="N:M structure, e.g. [2, 4]")
    target_modules: list[str] | None = Field(None, max_length=64, description="default: every block Linear")
    calibration_batches: StrictInt = Field(
        4, ge=1, le=1000, description="labels-free batches scored on the device"
    )


class TinyTrainSpec(SelectionSpec):
    """TinyTrain selection: which layers and channels to train within memory and compute budgets.

    A job without a memory budget gets a share of its device's memory (`DEVICE_MEMORY_SHARE` of
    `device_memory_bytes`): devices declare no memory when they enroll, so the job declares the
    memory of the devices it targets, by default `DEFAULT_DEVICE_MEMORY_BYTES` (512 MiB, a small
    edge device). Without it a job would train every channel of every block.
    """

    method_name: ClassVar[str] = "tinytrain"

    memory_budget_bytes: StrictFloat | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the device's training-step bytes (gradients, optimizer state, saved activations of "
        "the trained layers); null: a quarter of device_memory_bytes",
    )
    compute_budget_macs: StrictFloat | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the device's backward multiply-accumulates per step; null: no limit",
    )
    device_memory_bytes: StrictInt | None = Field(
        None,
        gt=0,
        le=2**62,
        description="memory of the devices this job targets (for the default memory budget); null: 512 MiB",
    )
    edge_memory_budget_bytes: StrictFloat | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="the trunk's selected state and inputs on the edge; null: no limit",
    )
    edge_compute_budget_macs: StrictFloat | None = Field(
        None, gt=0, allow_inf_nan=False, description="the trunk's backward MACs on the edge; null: no limit"
    )
    channel_ratios: list[float] = Field(
        [1.0, 0.5, 0.25, 0.125], min_length=1, max_length=16, description="channel fractions, each in (0, 1]"
    )
    target_modules: list[str] | None = Field(None, max_length=64, description="default: every block Linear")
    calibration_batches: StrictInt = Field(
        4, ge=1, le=1000, description="labelled support-set batches, on the device"
    )

    def config_fields(self) -> dict[str, Any]:
        """The config's fields: the memory budget defaulted from the device's memory."""
        fields = self.model_dump(exclude={"calibration_batches", "device_memory_bytes"})
        if fields["memory_budget_bytes"] is None:
            fields["memory_budget_bytes"] = default_memory_budget(self.device_memory_bytes)
        return fields


# Each selection method's member of the job spec, by registered name (a test checks it against the
# registry); TinyTrainSpec's channel ratios and every other field are checked by the method's config.
SELECTION_SPECS: dict[str, type[SelectionSpec]] = {"taskedge": TaskEdgeSpec, "tinytrain": TinyTrainSpec}
