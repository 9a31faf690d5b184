"""Plans and device classes: what `split: "auto"` jobs are placed with (docs/planning.md).

An operator registers a model's plan (what `splitft plan run` measured where the model is: the
control plane never loads a model) and gives devices a class (memory, link, speed). A session of an
`auto` job gets, before it is placed, the point the model's newest plan recommends for its
device's class (`splitft.plan.choice`, the same rule the planner prints); the point is kept on the
session, so a session placed again (its edge died) keeps its split. Recommendations are cached per
(plan, class): a plan's measurements never change once registered.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft.errors import NotFound
from splitft.jobs.spec import JobCreate
from splitft.plan.choice import DeviceClass, PlanFile, PlanPoint, recommended_point
from splitft_control.models import Device, JobSession, Plan
from splitft_control.store.base import StoreBase, get_row, new_id

_CACHE_LOCK = threading.Lock()
_POINTS: dict[tuple[str, str], PlanPoint | None] = {}  # (plan id, class key) -> its recommendation
_MAX_CACHED = 4096


class PlanStore(StoreBase):
    """Registered plans, device classes, and the plan point of an auto job's session."""

    def register_plan(self, *, plan: PlanFile) -> Plan:
        """Keep `plan` (validated) as its model's newest."""
        with self.tx() as s:
            row = Plan(id=new_id(), model=plan.model, body=plan.model_dump(mode="json"))
            s.add(row)
        return row

    def list_plans(self, *, model: str | None = None) -> list[Plan]:
        """Registered plans, newest first, optionally of one model."""
        with self.tx() as s:
            query = select(Plan).order_by(Plan.created_at.desc(), Plan.id)
            if model is not None:
                query = query.where(Plan.model == model)
            return list(s.scalars(query))

    def get_plan(self, *, plan_id: str) -> Plan:
        """One plan; NotFound for an unknown id."""
        with self.tx() as s:
            row = get_row(s, Plan, plan_id)
            if row is None:
                raise NotFound(f"no plan {plan_id!r}")
            return row

    def set_device_class(self, *, device_id: str, device_class: DeviceClass | None) -> Device:
        """Give the device a class (None: none); NotFound for an unknown id. Sessions already given a
        plan point keep it."""
        with self.tx() as s:
            device = get_row(s, Device, device_id)
            if device is None:
                raise NotFound(f"no device {device_id!r}")
            device.device_class = device_class.model_dump(mode="json") if device_class else None
            return device


def newest_plan(s: Session, model: str) -> Plan | None:
    """The model's newest registered plan, in transaction `s`."""
    query = select(Plan).where(Plan.model == model).order_by(Plan.created_at.desc(), Plan.id).limit(1)
    return s.scalar(query)


def session_spec(spec: JobCreate | None, sess: JobSession) -> JobCreate | None:
    """What the session runs: the job's spec, with its plan point applied for an auto job."""
    if spec is None or spec.split != "auto":
        return spec
    if sess.plan_point is None:
        return None  # not resolved yet: nothing to estimate with
    return spec.with_point(PlanPoint.model_validate(sess.plan_point))


def resolve_point(s: Session, sess: JobSession, spec: JobCreate) -> tuple[JobCreate | None, str]:
    """For a session of an auto job: (its spec with its plan point, "") after choosing the point if
    it has none yet, or (None, why it waits)."""
    if sess.plan_point is not None:
        return spec.with_point(PlanPoint.model_validate(sess.plan_point)), ""
    device = s.get(Device, sess.device_id)
    assert device is not None  # foreign key
    if device.device_class is None:
        return None, (
            f'split "auto": device {device.name!r} has no class; give it one with '
            f"PUT /v1/devices/{device.id}/class"
        )
    plan = newest_plan(s, spec.model)
    if plan is None:
        return None, f'split "auto": no plan is registered for model {spec.model!r} (POST /v1/plans)'
    cls = DeviceClass.model_validate(device.device_class)
    point = _recommended(plan, cls)
    if point is None:
        return None, (
            f'split "auto": no measured candidate of plan {plan.id} fits device {device.name!r}\'s class '
            f"({cls.memory_bytes} bytes of memory); register a plan with smaller candidates"
        )
    sess.plan_point = point.model_dump(mode="json")
    return spec.with_point(point), ""


def _recommended(plan: Plan, cls: DeviceClass) -> PlanPoint | None:
    key = (plan.id, cls.key())
    with _CACHE_LOCK:
        if key in _POINTS:
            return _POINTS[key]
    point = recommended_point(PlanFile.model_validate(plan.body), plan.id, cls)
    with _CACHE_LOCK:
        if len(_POINTS) >= _MAX_CACHED:
            _POINTS.clear()
        _POINTS[key] = point
    return point


def plan_summary(row: Plan) -> dict[str, Any]:
    """A plan as listed: its id, model, time and candidate counts by status."""
    counts: dict[str, int] = {}
    for result in row.body.get("candidates", []):
        counts[result.get("status", "?")] = counts.get(result.get("status", "?"), 0) + 1
    return {"id": row.id, "model": row.model, "created_at": row.created_at, "candidates": counts}
