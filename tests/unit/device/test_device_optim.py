"""LR schedules of the split optimizer (device_client/optim.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from device_client.agent.assignment import schedule_span
from device_client.optim import lr_factor, make_scheduler
from splitft.errors import InvalidArgument
from splitft.jobs.spec import JobCreate
from tests.support.agent_support import job_spec_json


def test_lr_schedules_match_hand_computation() -> None:
    assert [lr_factor("constant", s, 2, 10) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor("linear", s, 2, 10) for s in (2, 6, 10)] == [1.0, 0.5, 0.0]
    assert lr_factor("cosine", 6, 2, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 0, 10) == pytest.approx(0.0)
    with pytest.raises(InvalidArgument, match="unknown LR schedule"):
        lr_factor("step", 5, 0, 10)


def _job(**fields: object) -> JobCreate:
    if fields.get("mode") == "federated":
        fields["steps"] = None  # a federated job counts its steps per round
    return JobCreate.model_validate(job_spec_json(**fields))


def _lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize("span", ["round", "job"])
def test_a_federated_job_s_rounds_cut_one_job_long_schedule_or_restart_it(span: str) -> None:
    """Three rounds of 4 steps: with span "job" the rounds' schedulers, each new (a device opens a
    session per round), give exactly one 12-step schedule's lrs; with "round" each restarts it."""
    spec = _job(
        mode="federated",
        federated={"rounds": 3, "local_steps": 4},
        schedule={"name": "cosine", "warmup_steps": 2, "span": span},
    )
    rounds = []
    for number in range(3):
        first, length = schedule_span(spec, number, 4)
        rounds += _lrs(make_scheduler(_optimizer(), "cosine", 2, length, first), 4)
    whole = _lrs(
        make_scheduler(_optimizer(), "cosine", 2, 12 if span == "job" else 4), 12 if span == "job" else 4
    )
    assert rounds == pytest.approx(whole if span == "job" else whole * 3)
    independent = _job(steps=4, schedule={"span": "job"})
    assert schedule_span(independent, None, 4) == (0, 4)  # an independent session is its whole job


def test_an_unknown_span_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="schedule.span"):
        _job(steps=4, schedule={"span": "epoch"})
