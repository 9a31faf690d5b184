"""Edge servers: enroll with the shared secret, heartbeat with their own credential."""

from __future__ import annotations

from fastapi import APIRouter

from splitft_control.deps import EdgeCredential, EdgeSecret, Operator, State, StoreDep
from splitft_control.models import Edge
from splitft_control.schemas import EdgeCapacity, EdgeHeartbeat, EdgePublic, EdgeRegister, EdgeRegistered

router = APIRouter(prefix="/v1/edges", tags=["edges"])


def edge_public(edge: Edge) -> EdgePublic:
    return EdgePublic(
        id=edge.id,
        name=edge.name,
        address=edge.address,
        models=list(edge.models),
        capacity=EdgeCapacity(memory_free_bytes=edge.memory_free_bytes, max_sessions=edge.max_sessions),
        status=edge.status,
        active_sessions=edge.active_sessions,  # type: ignore[arg-type]
        last_heartbeat_at=edge.last_heartbeat_at,
    )


@router.post("/register", response_model=EdgeRegistered, dependencies=[EdgeSecret])
def register_edge(body: EdgeRegister, state: State) -> EdgeRegistered:
    """Register (or re-register) an edge; returns its heartbeat credential and the token issuer key."""
    edge, credential = state.store.register_edge(
        name=body.name,
        address=body.address,
        models=body.models,
        memory_free_bytes=body.capacity.memory_free_bytes,
        max_sessions=body.capacity.max_sessions,
    )
    state.store.place_waiting()
    return EdgeRegistered(
        id=edge.id,
        credential=credential,
        token_issuer_public_key=state.issuer_public_pem,
        heartbeat_interval_seconds=state.settings.heartbeat_interval,
    )


@router.post("/{edge_id}/heartbeat", response_model=EdgePublic)
def heartbeat(edge_id: str, body: EdgeHeartbeat, credential: EdgeCredential, store: StoreDep) -> EdgePublic:
    store.authenticate_edge(credential=credential, edge_id=edge_id)
    capacity = body.capacity
    edge = store.heartbeat(
        edge_id=edge_id,
        active_sessions=body.active_sessions,
        memory_free_bytes=capacity.memory_free_bytes if capacity else None,
        max_sessions=capacity.max_sessions if capacity else None,
    )
    return edge_public(edge)


@router.get("", response_model=list[EdgePublic], dependencies=[Operator])
def list_edges(store: StoreDep) -> list[EdgePublic]:
    return [edge_public(e) for e in store.list_edges()]
