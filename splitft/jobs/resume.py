"""A device's report that it lost its session's edge, and the control plane's answer.

POST /v1/sessions/{id}/edge-lost: the device agent's session failed because its edge is gone (the
SDK's retries gave up: `EdgeUnreachable`; or the edge answered NOT_FOUND "unknown session" after a
restart; or it could not be reached to open the session). The control plane puts the session back
in line to be placed on a healthy edge (another one first) instead of failing the job, within a
bound; the agent then gets the same session again from /v1/assignments/next and resumes it from its
last checkpoint (docs/resilience.md, "The agent resumes by itself"). One declaration for both sides,
as `splitft.jobs.spec` is.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt

from splitft.jobs.spec import Strict

NO_NUL_PATTERN = r"^[^\x00]*$"
# The other way a device is lost: it goes silent, its edge expires the session (its TTL) and says so in
# its heartbeat (`expired_sessions`); at most this many ids per heartbeat, the rest in the next ones.
MAX_EXPIRED_PER_HEARTBEAT = 256


class EdgeLostReport(Strict):
    """What the device says: why it gave up on the edge, and which edge it was using."""

    reason: str = Field(min_length=1, max_length=2000, pattern=NO_NUL_PATTERN)
    edge_address: str = Field(
        min_length=1,
        max_length=300,
        pattern=NO_NUL_PATTERN,
        description="the edge_address of the assignment the device was running (a session the control "
        "plane has already moved to another edge is left where it is)",
    )


class EdgeLostAnswer(Strict):
    """What happens to the session now."""

    state: Literal["waiting", "assigned", "running", "failed"] = Field(
        description="waiting or assigned: poll /v1/assignments/next, the session comes back there (on "
        "another edge when one has room); failed: past the resume bound, the session is over"
    )
    placements: StrictInt = Field(ge=0, description="times the session has been placed on an edge so far")
    max_resumes: StrictInt = Field(ge=0, description="placements after the first the control plane allows")
    reason: str = ""
