"""Placement rules of the scheduler (pure logic: no database, no HTTP)."""

from __future__ import annotations

from splitft.jobs.spec import JobCreate
from splitft.memory.estimate import BlockLinear, MemoryProfile
from splitft_control.scheduler import (
    EdgeLoad,
    choose_edge,
    choose_edge_for_all,
    job_adapter,
    no_edge_for_all_reason,
    no_edge_reason,
    place,
    room_for_all,
    session_need,
    sessions_fit,
    shared_adapter_key,
    shares_trunk,
)
from tests.support.control_fixtures import job_body


def edge(name: str, models: list[str], capacity: int = 4, active: int = 0) -> EdgeLoad:
    return EdgeLoad(id=f"id-{name}", name=name, models=models, capacity=capacity, active=active)


def test_the_edge_with_the_most_room_for_the_model_wins() -> None:
    edges = [edge("a", ["bert"], 4, 3), edge("b", ["bert"], 4, 1), edge("c", ["llama"], 8, 0)]
    chosen = choose_edge(edges, "bert")
    assert chosen is not None and chosen.name == "b"


def test_ties_are_broken_by_name_so_placement_is_deterministic() -> None:
    edges = [edge("a", ["bert"]), edge("c", ["bert"]), edge("b", ["bert"])]
    assert [choose_edge(list(order), "bert").name for order in (edges, edges[::-1])] == ["c", "c"]  # type: ignore[union-attr]


def test_no_edge_when_none_serves_the_model_or_all_are_full() -> None:
    assert choose_edge([edge("a", ["llama"])], "bert") is None
    assert choose_edge([edge("a", ["bert"], 2, 2), edge("b", ["bert"], 1, 3)], "bert") is None
    assert choose_edge([], "bert") is None


def test_room_is_capacity_minus_active() -> None:
    assert edge("a", ["bert"], 5, 2).room == 3


# --- by memory ---------------------------------------------------------------------------------------

# A profile as an edge reports it (numbers of the order a tiny BERT measures): pure data, no model.
PROFILE = MemoryProfile(
    num_layers=4,
    dtype_bytes=4,
    forward_token=512.0,
    forward_token2=0.0,
    block_token=2080.0,
    block_token2=4.0,
    linears=[
        BlockLinear(
            name="attention.self.query", in_features=32, out_features=32, input_group=0, input_saved=True
        ),
        BlockLinear(
            name="attention.self.value", in_features=32, out_features=32, input_group=0, input_saved=True
        ),
    ],
)


def spec(**overrides: object) -> JobCreate:
    return JobCreate.model_validate(job_body(["phone"], model="bert", **overrides))


def memory_edge(name: str, free: int, capacity: int = 8, active: int = 0) -> EdgeLoad:
    return EdgeLoad(
        f"id-{name}", name, ["bert"], capacity, active, memory_free=free, profiles={"bert": PROFILE}
    )


def test_the_need_follows_the_spec_through_the_profile() -> None:
    edge = memory_edge("a", 1 << 30)
    base = session_need(edge, spec())
    assert base is not None and base > 0
    assert session_need(edge, spec(batch_size=32)) > base  # type: ignore[operator]
    assert session_need(edge, spec(max_length=256)) > base  # type: ignore[operator]
    assert session_need(edge, spec(head_layers=1)) < base  # type: ignore[operator]  # one trunk block less
    assert session_need(edge, spec(trunk_lora=False)) < base  # type: ignore[operator]  # no adapter state
    assert session_need(edge, spec(optimizer={"name": "SGD"})) < base  # type: ignore[operator]
    assert job_adapter(spec(method="taskedge", lora=None)).kind == "selection"


def test_memory_decides_over_slots_when_the_edge_reports_it() -> None:
    need = session_need(memory_edge("x", 1 << 30), spec())
    assert need is not None
    roomy_slots = memory_edge("slots", need, capacity=64)  # one session of memory, many slots
    roomy_memory = memory_edge("memory", 3 * need, capacity=4)
    chosen = choose_edge([roomy_slots, roomy_memory], "bert", spec())
    assert chosen is roomy_memory
    place(chosen, spec())
    assert (chosen.active, chosen.memory_free) == (1, 2 * need)
    assert sessions_fit(roomy_slots, need) == 1 and sessions_fit(roomy_memory, need) == 2


def test_an_edge_without_memory_is_placed_by_slots() -> None:
    legacy = edge("legacy", ["bert"], 2, 0)  # memory_free None: reports no memory
    short = memory_edge("short", 10)
    assert session_need(legacy, spec()) is None
    assert choose_edge([legacy, short], "bert", spec()) is legacy
    place(legacy, spec())
    assert legacy.active == 1 and legacy.memory_free is None


def test_no_edge_with_memory_gives_a_memory_reason() -> None:
    need = session_need(memory_edge("x", 1 << 30), spec())
    assert need is not None
    edges = [memory_edge("a", need // 2), memory_edge("b", need - 1), memory_edge("full", 1 << 30, 1, 1)]
    assert choose_edge(edges, "bert", spec()) is None
    reason = no_edge_reason("bert", edges, spec())
    assert reason.startswith("waiting for edge memory: a session of this job needs")
    assert "(b)" in reason and "1 more such edges are full" in reason
    assert "are full" in no_edge_reason("bert", [memory_edge("full", 1 << 30, 1, 1)], spec())


def test_a_split_the_model_cannot_take_never_fits() -> None:
    edge_ = memory_edge("a", 1 << 30)
    assert choose_edge([edge_], "bert", spec(device_layers=3, head_layers=1)) is None


# --- a shared trunk adapter: a round's sessions together on one edge ----------------------------------


def _shared_spec() -> JobCreate:
    federated = {"rounds": 2, "local_steps": 3, "trunk_adapter": "shared"}
    body = job_body(["a", "b", "c"], model="bert", steps=None, mode="federated", federated=federated)
    return JobCreate.model_validate(body)


def test_the_round_key_names_the_job_and_the_round_only_for_shared_jobs() -> None:
    assert shared_adapter_key("job-1", 2, _shared_spec()) == "job-1/r2"
    assert shared_adapter_key("job-1", None, _shared_spec()) is None
    assert shared_adapter_key("job-1", 0, JobCreate.model_validate(job_body(["a"]))) is None
    assert shares_trunk(_shared_spec()) and not shares_trunk(None)


def test_a_shared_round_goes_where_all_its_sessions_fit_by_slots() -> None:
    spec = _shared_spec()
    edges = [edge("a", ["bert"], 4, 2), edge("b", ["bert"], 8, 5), edge("c", ["bert"], 3, 0)]
    assert choose_edge(edges, "bert", spec).name == "c"  # type: ignore[union-attr]  # a single session
    chosen = choose_edge_for_all(edges, "bert", spec, 3)  # b and c take three; c has more room
    assert chosen is not None and chosen.name == "c"
    assert choose_edge_for_all(edges, "bert", spec, 4) is None
    reason = no_edge_for_all_reason("bert", edges, spec, 4)
    assert "take all 4 sessions of this round together" in reason and "takes now is 3 (c)" in reason


def test_a_shared_round_counts_its_adapter_once_in_memory() -> None:
    spec = _shared_spec()
    probe = memory_edge("probe", 1 << 40)
    first, then = session_need(probe, spec), session_need(probe, spec, joins=True)
    assert first is not None and then is not None and 0 < then < first
    exact = memory_edge("exact", first + 2 * then)  # three sessions: the adapter once, gradients thrice
    assert room_for_all(exact, spec, 3) and not room_for_all(
        memory_edge("less", first + 2 * then - 1), spec, 3
    )
    assert sessions_fit(exact, first) < 3  # three independent sessions would not fit
    place(exact, spec)
    place(exact, spec, joins=True)
    assert exact.memory_free == then and exact.active == 2
