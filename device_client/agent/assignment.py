"""The assignment a device receives, read with the control plane's own classes, and what it trains.

`parse_assignment` validates the JSON of /v1/assignments/next with `splitft.jobs.spec.Assignment`
(types, bounds and defaults as the control plane checks them), dropping fields this device does not
know yet. The converters turn the job's method into the SDK's config: a peft LoRA config, or the
TaskEdge / TinyTrain selection config.
"""

from __future__ import annotations

from typing import Any

import peft
from pydantic import ValidationError

from device_client.agent.datasets import batches_per_epoch
from splitft.errors import InvalidArgument, Unavailable
from splitft.jobs.spec import IGNORE_UNKNOWN, Assignment, JobCreate
from splitft.security.tokens import check_session_id

MAX_ERROR_CHARS = 300  # of pydantic's description of a malformed assignment


def parse_assignment(raw: Any) -> Assignment:
    """An Assignment from the control plane's JSON; a malformed one is the server's fault (Unavailable)."""
    try:
        assignment = Assignment.model_validate(raw, context=IGNORE_UNKNOWN)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "assignment"
        detail = f"{where}: {first['msg']}"[:MAX_ERROR_CHARS]
        raise Unavailable(f"the control plane sent a malformed assignment: {detail}") from None
    try:  # the session id names files under --record-dir and URL paths: never a path of its own
        check_session_id(assignment.session_id)
    except InvalidArgument as exc:
        raise Unavailable(f"the control plane sent a malformed assignment: {exc.message}") from None
    return assignment


def total_steps(spec: JobCreate, num_examples: int) -> int:
    """Optimizer steps the session runs: the job's steps, or its epochs over the local examples (a
    federated job's per round: its local steps or local epochs)."""
    steps, epochs = (
        (spec.federated.local_steps, spec.federated.local_epochs)
        if spec.federated is not None
        else (spec.steps, spec.epochs)
    )
    if steps is not None:
        return steps
    if epochs is None:
        raise InvalidArgument("the job gives neither steps nor epochs")
    return epochs * batches_per_epoch(num_examples, spec.batch_size)


def schedule_span(spec: JobCreate, round_number: int | None, steps: int) -> tuple[int, int]:
    """(the schedule's step at this session's first step, the schedule's length) for a session of
    `steps` steps in round `round_number`: the session alone, or with a federated job's `span: "job"`
    its place in one schedule over every round (each device runs the same steps per round)."""
    if spec.federated is None or spec.schedule.span == "round":
        return 0, steps
    return (round_number or 0) * steps, spec.federated.rounds * steps


def epochs_of(spec: JobCreate) -> int | None:
    """The epochs the session's batches cycle through (None: as many as its steps need)."""
    return spec.federated.local_epochs if spec.federated is not None else spec.epochs


def method_config(spec: JobCreate) -> Any:
    """What trains, from the job's method: peft's LoRA config, or the selection method's own config
    (built through `splitft.methods.registry` from the job's member for that method)."""
    selection = spec.selection_spec()
    return lora_config(spec) if selection is None else selection.method_config()


def lora_config(spec: JobCreate) -> peft.LoraConfig:
    """The job's LoRA as peft wants it; the agent's data are labelled texts, so only SEQ_CLS fits."""
    if spec.lora is None:
        raise InvalidArgument("a LoRA job needs a lora spec")
    if spec.lora.task_type not in (None, "SEQ_CLS"):
        raise InvalidArgument(f"the device agent trains sequence classifiers, not {spec.lora.task_type}")
    alpha = spec.lora.lora_alpha
    return peft.LoraConfig(
        r=spec.lora.r,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]
        lora_dropout=spec.lora.lora_dropout,
        target_modules=list(spec.lora.target_modules),
        task_type=spec.lora.task_type or "SEQ_CLS",
    )
