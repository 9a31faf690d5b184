"""Plans: an operator registers what `splitft plan run` measured for a model (docs/planning.md);
split "auto" jobs place each device on the point the model's newest plan recommends for its class."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from splitft.plan.choice import PlanFile
from splitft_control.deps import Operator, StoreDep
from splitft_control.schemas import PlanSummary
from splitft_control.store.plans import plan_summary

router = APIRouter(prefix="/v1/plans", tags=["plans"], dependencies=[Operator])


@router.post("", response_model=PlanSummary, status_code=status.HTTP_201_CREATED)
def register_plan(body: PlanFile, store: StoreDep) -> PlanSummary:
    """Register a plan file (plan.json as `splitft plan run` writes it) as its model's newest.
    Operators only (401); 422 for a malformed plan (unknown fields, figures out of range, a measured
    candidate without figures), 413 over SPLITFT_MAX_BODY_BYTES."""
    return PlanSummary(**plan_summary(store.register_plan(plan=body)))


@router.get("", response_model=list[PlanSummary])
def list_plans(
    store: StoreDep, model: Annotated[str | None, Query(min_length=1, max_length=128)] = None
) -> list[PlanSummary]:
    """Registered plans, newest first, optionally of one model. Operators only (401)."""
    return [PlanSummary(**plan_summary(row)) for row in store.list_plans(model=model)]


@router.get("/{plan_id}")
def get_plan(plan_id: str, store: StoreDep) -> dict[str, Any]:
    """The whole plan file as registered. Operators only (401); 404 for an unknown id."""
    row = store.get_plan(plan_id=plan_id)
    return {"id": row.id, **row.body}
