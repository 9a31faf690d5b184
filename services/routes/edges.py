"""Edge servers: enroll with the shared secret, heartbeat with their own credential."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from splitft_control import revocation
from splitft_control.deps import EdgeCredential, Operator, Registrant, State, StoreDep
from splitft_control.models import Edge
from splitft_control.schemas import (
    EdgeCapacity,
    EdgeHeartbeat,
    EdgeHeartbeatAnswer,
    EdgePublic,
    EdgeRegister,
    EdgeRegistered,
    ModelMemory,
)

router = APIRouter(prefix="/v1/edges", tags=["edges"])


def edge_public(edge: Edge) -> EdgePublic:
    """An edge as operators see it (never its credential hash)."""
    memory = {name: ModelMemory.model_validate(entry) for name, entry in (edge.model_memory or {}).items()}
    return EdgePublic(
        id=edge.id,
        name=edge.name,
        address=edge.address,
        models=list(edge.models),
        capacity=EdgeCapacity(
            memory_free_bytes=edge.memory_free_bytes,
            max_sessions=edge.max_sessions,
            memory_limit_bytes=edge.memory_limit_bytes or 0,
            models=memory,
        ),
        status=edge.status,
        active_sessions=edge.active_sessions,  # type: ignore[arg-type]
        last_heartbeat_at=edge.last_heartbeat_at,
    )


def _model_memory(capacity: EdgeCapacity) -> dict[str, dict]:
    """The per-model memory to store, as JSON (none without a memory limit: then nothing is known)."""
    if not capacity.memory_limit_bytes:
        return {}
    return {name: entry.model_dump(mode="json") for name, entry in capacity.models.items()}


@router.post("/register", response_model=EdgeRegistered)
def register_edge(body: EdgeRegister, state: State, registrant: Registrant) -> EdgeRegistered:
    """Register an edge; returns its heartbeat credential and the token issuer key.

    The shared edge secret registers a new name only (409 for a taken one); an edge re-registers its
    own name with its current credential (403 for another's name or a disabled edge; an operator
    deletes a lost one: DELETE /v1/edges/{id}). 401 for neither; 422 for a bad name or address.
    An edge may name its next credential (`credential`): if the answer is lost it re-registers with
    that one, so a control plane killed after the commit does not lock the edge out of its name."""
    edge, credential = state.store.register_edge(
        name=body.name,
        address=body.address,
        models=body.models,
        memory_free_bytes=body.capacity.memory_free_bytes,
        max_sessions=body.capacity.max_sessions,
        as_edge=registrant.edge_id,
        memory_limit_bytes=body.capacity.memory_limit_bytes,
        model_memory=_model_memory(body.capacity),
        credential=body.credential,
    )
    state.store.place_waiting()
    return EdgeRegistered(
        id=edge.id,
        credential=credential,
        token_issuer_public_key=state.issuer_public_pem,
        heartbeat_interval_seconds=state.settings.heartbeat_interval,
    )


@router.post("/{edge_id}/heartbeat", response_model=EdgeHeartbeatAnswer)
def heartbeat(
    edge_id: str, body: EdgeHeartbeat, credential: EdgeCredential, state: State
) -> EdgeHeartbeatAnswer:
    """Record the edge's load; the answer lists the sessions it must close and refuse to open.
    The edge itself only: 401 for an unknown credential, 403 for another edge's or a disabled edge,
    422 for a malformed load or expired session ids (more than `MAX_EXPIRED_PER_HEARTBEAT`, or not
    session ids). Expired sessions open on this edge fail (`splitft_control.store.expiry`)."""
    store = state.store
    previous = store.authenticate_edge(credential=credential, edge_id=edge_id).last_heartbeat_at
    capacity = body.capacity
    edge = store.heartbeat(
        edge_id=edge_id,
        active_sessions=body.active_sessions,
        memory_free_bytes=capacity.memory_free_bytes if capacity else None,
        max_sessions=capacity.max_sessions if capacity else None,
        memory_limit_bytes=capacity.memory_limit_bytes if capacity else None,
        model_memory=_model_memory(capacity) if capacity else None,
    )
    if body.expired_sessions:  # their device went silent: their jobs end by their rules
        store.sessions_expired(
            edge_id=edge_id,
            session_ids=body.expired_sessions,
            ttl_seconds=body.session_ttl_seconds,
            since=previous,
        )
    closures = revocation.closures_for_edge(store, edge_id=edge_id, token_ttl=state.settings.token_ttl)
    return EdgeHeartbeatAnswer(**edge_public(edge).model_dump(), close_sessions=closures)


@router.get("", response_model=list[EdgePublic], dependencies=[Operator])
def list_edges(store: StoreDep) -> list[EdgePublic]:
    """Every edge with its capacity, load and last heartbeat, by name. Operators only (401)."""
    return [edge_public(e) for e in store.list_edges()]


@router.post("/{edge_id}/disable", response_model=EdgePublic, dependencies=[Operator])
def disable_edge(edge_id: str, store: StoreDep) -> EdgePublic:
    """Cut an edge off: its credential and name stop working; its open sessions go to other edges.
    Operators only (401); 404 for an unknown id."""
    edge = revocation.disable_edge(store, edge_id=edge_id)
    store.place_waiting()
    return edge_public(edge)


@router.delete("/{edge_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Operator])
def delete_edge(edge_id: str, store: StoreDep) -> Response:
    """Forget an edge (its name can register afresh); its open sessions go to other edges.
    Operators only (401); 404 for an unknown id."""
    revocation.delete_edge(store, edge_id=edge_id)
    store.place_waiting()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
