"""Placement: which healthy edge hosts a device's session. Pure logic; the store applies it.

An edge that reports memory (a memory limit, and per model the memory profile it measured) takes a
session only where the session's estimated memory fits: the job spec's split, LoRA, optimizer and
batch shape through the model's profile (`splitft.memory.estimate`, the formula the edge admits
with), or the edge's own default-session estimate for the model when it sent no profile. Among the
edges that fit, the one that can take the most more such sessions wins (slots and memory both
count). An edge that reports no memory (`memory_limit_bytes` 0) is placed by free slots alone.

A federated job whose trunk adapter is shared (`trunk_adapter: "shared"`) keeps ONE trunk adapter
per round on one edge, so all the sessions of a round go to the same edge: the first is placed only
on an edge that takes them all (the adapter counted once, each further session its gradients and
graphs), the others follow it there; while no edge takes them all, they wait with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from splitft.errors import InvalidArgument
from splitft.jobs.spec import JobCreate
from splitft.memory.estimate import MemoryProfile, TrunkAdapter, estimate_session, trunk_blocks
from splitft.memory.units import format_bytes


@dataclass
class EdgeLoad:
    """A healthy edge as placement sees it: what it serves, its sessions of how many, its free memory."""

    id: str
    name: str
    models: list[str]
    capacity: int  # max sessions
    active: int  # sessions assigned or running there
    memory_free: int | None = None  # bytes free for new sessions; None: the edge reports no memory
    profiles: dict[str, MemoryProfile] = field(default_factory=dict)  # per model, as the edge measured
    default_bytes: dict[str, int] = field(default_factory=dict)  # per model, a default session's bytes

    @property
    def room(self) -> int:
        """How many more sessions the edge takes."""
        return self.capacity - self.active


def job_adapter(spec: JobCreate) -> TrunkAdapter:
    """What a job's sessions train on the trunk, for their memory estimate."""
    if spec.method == "lora":
        if spec.lora is None or not spec.trunk_lora:
            return TrunkAdapter()
        return TrunkAdapter.lora(spec.lora.r, spec.lora.target_modules, spec.lora.lora_dropout)
    selection = spec.selection_spec()
    return TrunkAdapter.selection(getattr(selection, "target_modules", None))


def shares_trunk(spec: JobCreate | None) -> bool:
    """Whether the job's sessions of a round share one trunk adapter (and so one edge)."""
    return spec is not None and spec.federated is not None and spec.federated.trunk_adapter == "shared"


def shared_adapter_key(job_id: str, round_number: int | None, spec: JobCreate) -> str | None:
    """The key of the edge's shared trunk adapter a session of the job's round joins (OpenSession's
    `shared_adapter`: the job, so the edge can check the token's job, and the round); None when the
    job shares none."""
    if not shares_trunk(spec) or round_number is None:
        return None
    return f"{job_id}/r{round_number}"


def session_need(edge: EdgeLoad, spec: JobCreate | None, *, joins: bool = False) -> int | None:
    """Estimated bytes of one of the job's sessions on `edge`; None when nothing is known (the edge
    reports no memory, or neither a profile nor a default for the model). `joins`: it joins a shared
    trunk adapter another session holds there (its gradients, not the adapter again)."""
    if edge.memory_free is None or spec is None:
        return None
    profile = edge.profiles.get(spec.model)
    if profile is None:
        return edge.default_bytes.get(spec.model)
    try:
        blocks = trunk_blocks(profile, *spec.layers)
    except InvalidArgument:  # the edge refuses this split at open; say so by never fitting
        return edge.memory_free + 1
    estimate = estimate_session(
        profile,
        blocks=blocks,
        adapter=job_adapter(spec),
        batch_size=spec.batch_size,
        sequence_length=spec.max_length,
        optimizer=spec.optimizer.name,
        joins_shared=joins,
    )
    return estimate.total


def sessions_fit(edge: EdgeLoad, need: int | None) -> int:
    """How many more sessions of `need` bytes the edge takes (slots only when memory is unknown)."""
    if edge.memory_free is None or need is None:
        return edge.room
    return min(edge.room, edge.memory_free // max(1, need))


def choose_edge(edges: list[EdgeLoad], model: str, spec: JobCreate | None = None) -> EdgeLoad | None:
    """The edge serving `model` that takes the most more of the job's sessions (ties: the name, for
    determinism), or None. Without `spec`, by free slots alone."""
    fits = {e.id: sessions_fit(e, session_need(e, spec)) for e in edges if model in e.models}
    candidates = [e for e in edges if fits.get(e.id, 0) > 0]
    if not candidates:
        return None
    return max(candidates, key=lambda e: (fits[e.id], e.name))


def room_for_all(edge: EdgeLoad, spec: JobCreate | None, count: int) -> bool:
    """Whether `edge` takes `count` sessions of a shared-trunk job's round together."""
    if edge.room < count:
        return False
    first, then = session_need(edge, spec), session_need(edge, spec, joins=True)
    if edge.memory_free is None or first is None:
        return True
    return first + (count - 1) * (then if then is not None else first) <= edge.memory_free


def choose_edge_for_all(
    edges: list[EdgeLoad], model: str, spec: JobCreate | None, count: int
) -> EdgeLoad | None:
    """The edge serving `model` that takes all `count` sessions of a shared-trunk round, ranked as
    `choose_edge` ranks; None when no edge takes them all now."""
    fits = [e for e in edges if model in e.models and room_for_all(e, spec, count)]
    if not fits:
        return None
    return max(fits, key=lambda e: (sessions_fit(e, session_need(e, spec)), e.name))


def no_edge_for_all_reason(model: str, edges: list[EdgeLoad], spec: JobCreate | None, count: int) -> str:
    """Why the sessions of a shared-trunk round wait, as shown to operators on the job."""
    serving = [e for e in edges if model in e.models]
    if not serving:
        return no_edge_reason(model, edges, spec)
    most, best = max(
        (max((k for k in range(count + 1) if room_for_all(e, spec, k)), default=0), e.name) for e in serving
    )
    return (
        f"waiting for one edge to take all {count} sessions of this round together (trunk_adapter "
        f"shared: one trunk adapter on one edge); the most a healthy edge serving {model!r} takes now "
        f"is {most} ({best})"
    )


def place(edge: EdgeLoad, spec: JobCreate | None, *, joins: bool = False) -> None:
    """Count one more of the job's sessions on `edge` (a slot, and its memory when known); `joins`:
    it joins the shared trunk adapter a session of its round holds there."""
    need = session_need(edge, spec, joins=joins)
    edge.active += 1
    if edge.memory_free is not None and need is not None:
        edge.memory_free -= need


def no_edge_reason(model: str, edges: list[EdgeLoad], spec: JobCreate | None = None) -> str:
    """Why no edge takes a session for `model`, as shown to operators on the job."""
    serving = [e for e in edges if model in e.models]
    if not edges:
        return f"no healthy edge is registered (needed: one serving model {model!r})"
    if not serving:
        return f"no healthy edge serves model {model!r}"
    short = [(e, need) for e in serving if e.room > 0 and (need := session_need(e, spec)) is not None]
    if not short:
        return f"all {len(serving)} healthy edges serving {model!r} are full"
    best, need = max(short, key=lambda pair: ((pair[0].memory_free or 0) - pair[1], pair[0].name))
    full = len(serving) - len(short)
    return (
        f"waiting for edge memory: a session of this job needs {format_bytes(need)}; the most free on a "
        f"healthy edge serving {model!r} is {format_bytes(max(0, best.memory_free or 0))} ({best.name})"
        + (f"; {full} more such edges are full" if full else "")
    )
