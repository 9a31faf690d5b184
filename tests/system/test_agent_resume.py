"""The device agent resumes by itself (device_client/agent/resume.py): real in-process edges, the
mock control plane of tests/support/agent_support.py (its /edge-lost answer hands the same session
back on another edge, as the real one does: tests/unit/control/test_edge_lost_api.py).

A tiny BERT with dropout 0.1 on both sides and trunk LoRA dropout, lossless codec, 7 steps over 12
examples in batches of 4 (three shuffled epochs, so the data cursor crosses epochs), cosine schedule
with warmup. The edge is stopped between two steps; the agent must report it, take the session back
on the other edge, resume from its last checkpoint and upload the adapter an uninterrupted run
uploads (within 1e-5). The tests with real processes, kill -9 and the real control plane are in
tests/e2e/test_agent_resume_e2e.py.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load

from device_client.agent import DeviceAgent
from device_client.retry import RetryPolicy
from edge_server import EdgeConfig, EdgeServer
from splitft.testing.tiny import save_tiny_model
from tests.support.agent_support import (
    DATA,
    FakeControlPlane,
    assignment_json,
    credential,
    make_bert_with_tokenizer,
)
from tests.support.tcp_proxy import TcpProxy

STEPS = 7
SPEC = {
    "steps": STEPS,
    "batch_size": 4,
    "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]},
    "schedule": {"name": "cosine", "warmup_steps": 1},
    "optimizer": {"lr": 0.02},
}
FAST_RETRY = RetryPolicy(max_attempts=3, budget_s=1.0, base_backoff_s=0.05, max_backoff_s=0.2, seed=0)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = save_tiny_model("bert", tmp_path_factory.mktemp("dropout") / "bert", dropout=0.1)
    return make_bert_with_tokenizer({"bert": tiny}, tmp_path_factory)


def serve(bert: Path, port: int = 0) -> EdgeServer:
    return EdgeServer(EdgeConfig(model_dirs=[f"bert={bert}"], port=port, insecure=True)).start()


@pytest.fixture(scope="module")
def edge_b(bert: Path) -> Iterator[EdgeServer]:
    edge = serve(bert)
    yield edge
    edge.stop(grace=1)


def agent_for(fake: FakeControlPlane, bert: Path, tmp_path: Path, **kwargs: Any) -> DeviceAgent:
    http = httpx.Client(transport=httpx.MockTransport(fake))
    return DeviceAgent(
        credential(),
        {"bert": bert},
        DATA,
        poll_interval=0.01,
        http=http,
        insecure=True,
        edge_retry=FAST_RETRY,
        checkpoint_dir=tmp_path / "checkpoints",
        **kwargs,
    )


def adapter(archive: bytes) -> dict[str, torch.Tensor]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("adapter_model.safetensors")
        assert member is not None
        return load(member.read())


def gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b) and any(".layer.1." in k or ".layer.2." in k for k in a)  # the trunk's too
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(
    bert: Path, edge_b: EdgeServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, torch.Tensor]:
    """The same job trained without interruption (another session id: seeds follow job and device)."""
    fake = FakeControlPlane(assignments=[assignment_json("s-ref", edge_b.address, **SPEC)])
    with agent_for(fake, bert, tmp_path_factory.mktemp("ref")) as agent:
        assert agent.run(max_sessions=1).completed == ["s-ref"]
    return adapter(fake.uploads["s-ref"])


def stop_at(step: int, action: Callable[[], None]) -> tuple[list[int], Callable[[Any], None]]:
    """A progress callback running `action` once, after optimizer step `step`; and the steps seen."""
    seen: list[int] = []

    def progress(p: Any) -> None:
        seen.append(p.step)
        if p.step == step and seen.count(step) == 1:
            action()

    return seen, progress


@pytest.mark.parametrize(
    ("every", "resumed_at"),
    [(1, 3), (3, 3), (None, 0)],  # killed after step 4: its checkpoint (before step 5) never written
)
def test_the_agent_resumes_on_another_edge_and_uploads_the_uninterrupted_adapter(
    bert: Path, edge_b: EdgeServer, reference: dict, tmp_path: Path, every: int | None, resumed_at: int
) -> None:
    edge_a = serve(bert)
    spec = {**SPEC, "checkpoint_every": every}

    def placed_again(sid: str, report: dict) -> dict:
        fake.assignments.append(assignment_json(sid, edge_b.address, **spec))  # as the control plane does
        return {"state": "waiting", "placements": 2, "max_resumes": 3}

    fake = FakeControlPlane(
        assignments=[assignment_json("s-1", edge_a.address, **spec)], on_edge_lost=placed_again
    )
    seen, progress = stop_at(4, lambda: edge_a.stop(grace=0))
    try:
        with agent_for(fake, bert, tmp_path, progress=progress) as agent:
            summary = agent.run(max_sessions=1)
            assert not (tmp_path / "checkpoints" / "s-1").exists()  # the session ended: its checkpoints go
    finally:
        edge_a.stop(grace=0)
    assert summary.completed == ["s-1"] and summary.failed == [] and fake.failures == {}
    ((sid, report),) = fake.edge_lost
    assert sid == "s-1" and report["edge_address"] == edge_a.address
    assert report["reason"].startswith(("EdgeUnreachable", "Unavailable")), report
    assert seen == [1, 2, 3, 4, *range(resumed_at + 1, STEPS + 1)]
    difference = gap(adapter(fake.uploads["s-1"]), reference)
    print(f"checkpoint_every={every}: resumed at step {resumed_at}, gap {difference:.2e}")
    assert difference <= 1e-5


def test_an_edge_restarted_within_the_retry_budget_is_lost_too_and_the_session_resumes_there(
    bert: Path, reference: dict, tmp_path: Path
) -> None:
    """The restarted edge answers NOT_FOUND "unknown session": the agent reports it like a dead edge
    and resumes on the same address (the control plane's choice when no other edge fits)."""
    edges = [serve(bert)]
    spec = {**SPEC, "checkpoint_every": 2}

    def restart() -> None:
        port = edges[0].port
        edges[0].stop(grace=0)
        edges.append(serve(bert, port))

    def placed_again(sid: str, report: dict) -> dict:
        fake.assignments.append(assignment_json(sid, edges[-1].address, **spec))
        return {"state": "assigned", "placements": 2, "max_resumes": 3}

    fake = FakeControlPlane(
        assignments=[assignment_json("s-2", edges[0].address, **spec)], on_edge_lost=placed_again
    )
    seen, progress = stop_at(3, restart)
    try:
        with agent_for(fake, bert, tmp_path, progress=progress) as agent:
            assert agent.run(max_sessions=1).completed == ["s-2"]
    finally:
        for edge in edges:
            edge.stop(grace=0)
    ((_, report),) = fake.edge_lost
    assert report["reason"].startswith("NotFound") and "unknown session" in report["reason"], report
    assert seen == [1, 2, 3, 3, 4, 5, 6, 7]  # checkpoints before steps 1, 3, 5, 7: resumed at 2
    assert gap(adapter(fake.uploads["s-2"]), reference) <= 1e-5


def test_past_the_resume_bound_the_session_is_over_and_not_reported_twice(bert: Path, tmp_path: Path) -> None:
    edge_a = serve(bert)
    spec = {**SPEC, "checkpoint_every": 1}
    fake = FakeControlPlane(
        assignments=[assignment_json("s-3", edge_a.address, **spec)],
        on_edge_lost=lambda sid, report: {
            "state": "failed",
            "placements": 4,
            "max_resumes": 3,
            "reason": "x",
        },
    )
    _, progress = stop_at(2, lambda: edge_a.stop(grace=0))
    try:
        with agent_for(fake, bert, tmp_path, progress=progress) as agent:
            summary = agent.run(max_sessions=1)
    finally:
        edge_a.stop(grace=0)
    assert summary.failed == ["s-3"] and len(fake.edge_lost) == 1
    assert fake.failures == {}  # the control plane failed it already: no /fail on top
    assert not (tmp_path / "checkpoints" / "s-3").exists()


def test_a_report_the_control_plane_never_got_keeps_the_checkpoint_for_the_next_poll(
    bert: Path, edge_b: EdgeServer, reference: dict, tmp_path: Path
) -> None:
    """The control plane is unreachable when the agent reports: the session stays where it is (its
    heartbeat timeout moves a dead edge's sessions); when the assignment comes back, on another
    edge, the agent resumes it from the checkpoint it kept."""
    edge_a = serve(bert)
    spec = {**SPEC, "checkpoint_every": 1}

    def unreachable(req: httpx.Request) -> int | None:
        if req.url.path.endswith("/edge-lost"):
            fake.assignments.append(assignment_json("s-4", edge_b.address, **spec))
            return 503
        return None

    fake = FakeControlPlane(
        assignments=[assignment_json("s-4", edge_a.address, **spec)], status_for=unreachable
    )
    seen, progress = stop_at(5, lambda: edge_a.stop(grace=0))
    try:
        with agent_for(fake, bert, tmp_path, progress=progress) as agent:
            assert agent.run(max_sessions=1).completed == ["s-4"]
    finally:
        edge_a.stop(grace=0)
    assert seen == [1, 2, 3, 4, 5, 5, 6, 7] and fake.failures == {}
    assert gap(adapter(fake.uploads["s-4"]), reference) <= 1e-5


def test_an_edge_that_still_holds_the_session_has_its_stale_copy_closed_and_the_session_resumes(
    bert: Path, reference: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The device lost its link, not the edge its memory: the control plane hands the session back
    on the same edge, which answers ALREADY_EXISTS at open; the agent closes the stale copy with the
    session's token and opens it again from its checkpoint."""
    edge = serve(bert)
    proxy = TcpProxy(edge.address)  # real sockets, cut and refused between the device and the edge
    spec = {**SPEC, "checkpoint_every": 1}

    def link_down() -> None:
        proxy.refuse(True)
        proxy.cut()

    def placed_again(sid: str, report: dict) -> dict:
        assert edge.sessions.get(sid).session_id == sid  # the edge still holds it
        proxy.refuse(False)
        fake.assignments.append(assignment_json(sid, proxy.address, **spec))
        return {"state": "assigned", "placements": 2, "max_resumes": 3}

    fake = FakeControlPlane(
        assignments=[assignment_json("s-5", proxy.address, **spec)], on_edge_lost=placed_again
    )
    seen, progress = stop_at(3, link_down)
    try:
        with agent_for(fake, bert, tmp_path, progress=progress) as agent:
            assert agent.run(max_sessions=1).completed == ["s-5"]
    finally:
        proxy.close()
        edge.stop(grace=0)
    assert len(fake.edge_lost) == 1 and seen == [1, 2, 3, 3, 4, 5, 6, 7]
    assert f"edge {proxy.address} still holds session s-5: closing that copy" in caplog.text
    assert gap(adapter(fake.uploads["s-5"]), reference) <= 1e-5


def test_a_federated_session_resumed_inside_its_round_continues_that_round(
    bert: Path, edge_b: EdgeServer, tmp_path: Path
) -> None:
    """Round 1 of a federated job starts from the previous round's global adapter: a resume inside
    the round continues from the checkpoint (which holds it), without fetching it again, and
    uploads what the uninterrupted round uploads, with its example count."""
    federated = {"mode": "federated", "steps": None, "federated": {"rounds": 2, "local_steps": STEPS}}
    spec = {**SPEC, **federated, "checkpoint_every": 1}

    def round_one(sid: str, address: str) -> dict:
        return {**assignment_json(sid, address, **spec), "round": 1, "initial_adapter": True}

    start = FakeControlPlane(assignments=[assignment_json("s-start", edge_b.address, **SPEC)])
    with agent_for(start, bert, tmp_path / "start") as agent:  # a "previous round's" global adapter
        agent.run(max_sessions=1)
    initial = {"f-ref": start.uploads["s-start"], "f-1": start.uploads["s-start"]}
    reference = FakeControlPlane(assignments=[round_one("f-ref", edge_b.address)], initial_adapters=initial)
    with agent_for(reference, bert, tmp_path / "ref") as agent:
        assert agent.run(max_sessions=1).completed == ["f-ref"]

    edge_a = serve(bert)

    def placed_again(sid: str, report: dict) -> dict:
        fake.assignments.append(round_one(sid, edge_b.address))
        return {"state": "waiting", "placements": 2, "max_resumes": 3}

    fake = FakeControlPlane(
        assignments=[round_one("f-1", edge_a.address)], on_edge_lost=placed_again, initial_adapters=initial
    )
    seen, progress = stop_at(4, lambda: edge_a.stop(grace=0))
    try:
        with agent_for(fake, bert, tmp_path / "resumed", progress=progress) as agent:
            assert agent.run(max_sessions=1).completed == ["f-1"]
    finally:
        edge_a.stop(grace=0)
    assert seen == [1, 2, 3, 4, 4, 5, 6, 7] and len(fake.edge_lost) == 1
    assert fake.calls.count(("GET", "/v1/sessions/f-1/initial-adapter")) == 1  # not again at the resume
    assert fake.calls.count(("POST", "/v1/sessions/f-1/complete")) == 1
    trained = adapter(fake.uploads["f-1"])
    assert gap(trained, adapter(reference.uploads["f-ref"])) <= 1e-5
    assert gap(trained, adapter(start.uploads["s-start"])) > 1e-3  # it trained from the global adapter
