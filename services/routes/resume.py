"""A device lost its session's edge: the session is placed again (another edge first), within a bound."""

from __future__ import annotations

from fastapi import APIRouter

from splitft.jobs.resume import EdgeLostAnswer, EdgeLostReport
from splitft_control.deps import DeviceDep, State

router = APIRouter(prefix="/v1", tags=["device"])


@router.post("/sessions/{session_id}/edge-lost", response_model=EdgeLostAnswer)
def edge_lost(session_id: str, body: EdgeLostReport, device: DeviceDep, state: State) -> EdgeLostAnswer:
    """The device gave up on its session's edge (unreachable past its retry budget, or the session
    unknown there after a restart). The session goes back to waiting and is placed again at once
    where one fits, preferring an edge it was not taken from; the device polls /v1/assignments/next
    for it and resumes from its last checkpoint. Past SPLITFT_MAX_SESSION_RESUMES placements after
    the first, the session fails instead (state "failed" in the answer). A session already moved off
    the reported edge is left as it is. The session's own device only: 401, 403, 404 as for metrics;
    409 once it has ended; 422 for a bad report."""
    answer = state.store.edge_lost(
        session_id=session_id,
        device_id=device.id,
        edge_address=body.edge_address,
        reason=body.reason,
        max_resumes=state.settings.max_session_resumes,
    )
    if answer.state == "waiting":
        state.store.place_waiting()  # now, not at the next scheduler pass
        now = state.store.resume_answer(session_id=session_id, max_resumes=state.settings.max_session_resumes)
        answer = now if now.reason else now.model_copy(update={"reason": answer.reason})
    return answer
