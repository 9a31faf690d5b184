"""Placement: which healthy edge hosts a device's session. Pure logic; the store applies it.

An edge that reports memory (a memory limit, and per model the memory profile it measured) takes a
session only where the session's estimated memory fits: the job spec's split, LoRA, optimizer and
batch shape through the model's profile (`splitft.memory.estimate`, the formula the edge admits
with), or the edge's own default-session estimate for the model when it sent no profile. Among the
edges that fit, the one that can take the most more such sessions wins (slots and memory both
count). An edge that reports no memory (`memory_limit_bytes` 0) is placed by free slots alone.
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


def session_need(edge: EdgeLoad, spec: JobCreate | None) -> int | None:
    """Estimated bytes of one of the job's sessions on `edge`; None when nothing is known (the edge
    reports no memory, or neither a profile nor a default for the model)."""
    if edge.memory_free is None or spec is None:
        return None
    profile = edge.profiles.get(spec.model)
    if profile is None:
        return edge.default_bytes.get(spec.model)
    try:
        blocks = trunk_blocks(profile, spec.device_layers, spec.head_layers)
    except InvalidArgument:  # the edge refuses this split at open; say so by never fitting
        return edge.memory_free + 1
    estimate = estimate_session(
        profile,
        blocks=blocks,
        adapter=job_adapter(spec),
        batch_size=spec.batch_size,
        sequence_length=spec.max_length,
        optimizer=spec.optimizer.name,
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


def place(edge: EdgeLoad, spec: JobCreate | None) -> None:
    """Count one more of the job's sessions on `edge` (a slot, and its memory when known)."""
    need = session_need(edge, spec)
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
