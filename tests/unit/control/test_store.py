"""One store suite, run against SQLite and PostgreSQL: every read and write the control plane makes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, inspect, select, text

from splitft.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied, Unauthenticated
from splitft_control import migrate
from splitft_control.models import ApiKey, Device, Edge, utcnow
from splitft_control.store import Store
from tests.support.control_fixtures import MODEL, job_body
from tests.support.control_fixtures import STORE_TABLES as TABLES

ADAPTER = b"\x1f\x8b adapter bytes"


# --- helpers -------------------------------------------------------------------------------------


def enrolled(store: Store, name: str) -> Device:
    _, token = store.create_device(name=name)
    device, _ = store.enroll_device(enrollment_token=token, sign=lambda _name: None)
    return device


def edge(store: Store, name: str, *, models: tuple[str, ...] = (MODEL,), max_sessions: int = 4) -> Edge:
    row, _ = store.register_edge(
        name=name,
        address=f"{name}:50051",
        models=list(models),
        memory_free_bytes=1 << 30,
        max_sessions=max_sessions,
    )
    return row


def job(store: Store, devices: list[str], *, model: str = MODEL) -> str:
    return store.create_job(name="job", spec=job_body(devices, model=model), device_names=devices).id


def sessions(store: Store, job_id: str) -> dict[str, tuple[str, str | None, str]]:
    """device name -> (session state, edge id, reason)."""
    _, rows = store.get_job(job_id=job_id)
    return {device: (sess.state, sess.edge_id, sess.reason) for sess, device in rows}


def session_id(store: Store, job_id: str, device: str) -> str:
    _, rows = store.get_job(job_id=job_id)
    return next(sess.id for sess, name in rows if name == device)


def job_state(store: Store, job_id: str) -> tuple[str, str]:
    found, _ = store.get_job(job_id=job_id)
    return found.state, found.reason


def silence(store: Store, edge_id: str, *, seconds: float) -> None:
    """Pretend the edge last heartbeated `seconds` ago."""
    with store.tx() as s:
        row = s.get(Edge, edge_id)
        assert row is not None
        row.last_heartbeat_at = utcnow() - timedelta(seconds=seconds)


def running_session(store: Store, device_name: str = "phone") -> tuple[Device, str, str]:
    """A device with one running session on an edge: (device, job id, session id)."""
    device = enrolled(store, device_name)
    edge(store, "edge-a")
    job_id = job(store, [device_name])
    store.place_waiting()
    found = store.next_assignment(device_id=device.id)
    assert found is not None
    return device, job_id, found[0].id


# --- schema ----------------------------------------------------------------------------------------


def test_upgrade_twice_is_a_no_op(engine: Engine, store: Store) -> None:
    _, key = store.create_api_key(name="before")
    tables = set(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert set(inspect(engine).get_table_names()) == tables
    assert set(TABLES) | {"alembic_version"} <= tables
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0006"]
    assert store.api_key_valid(key=key)  # data survives


# --- API keys --------------------------------------------------------------------------------------


def test_api_key_lifecycle(store: Store) -> None:
    row, key = store.create_api_key(name="ops")
    assert store.api_key_valid(key=key)
    assert not store.api_key_valid(key=key + "x")
    assert store.count_api_keys() == 1
    assert [k.name for k in store.list_api_keys()] == ["ops"]
    store.revoke_api_key(key_id=row.id)
    assert not store.api_key_valid(key=key)
    with pytest.raises(NotFound):
        store.revoke_api_key(key_id="nope")


def test_api_key_given_and_duplicate(store: Store) -> None:
    _, key = store.create_api_key(name="bootstrap", key="sfk_given-key-abcdefghijkl")
    assert key == "sfk_given-key-abcdefghijkl"
    with pytest.raises(AlreadyExists):
        store.create_api_key(name="again", key=key)


def test_api_keys_are_hashed_at_rest(store: Store) -> None:
    _, key = store.create_api_key(name="ops")
    with store.engine.connect() as conn:
        rows = conn.execute(select(ApiKey.__table__)).all()
    stored = " ".join(str(value) for row in rows for value in row)
    assert key not in stored
    assert key.split("_", 1)[1] not in stored


# --- devices ---------------------------------------------------------------------------------------


def test_create_device_and_duplicate_name(store: Store) -> None:
    device, token = store.create_device(name="phone")
    assert device.status == "pending" and token
    with pytest.raises(AlreadyExists):
        store.create_device(name="phone")
    assert [d.name for d in store.list_devices()] == ["phone"]


def test_enroll_is_one_time_and_credential_authenticates(store: Store) -> None:
    _, token = store.create_device(name="phone")
    signed: list[str] = []
    device, credential = store.enroll_device(
        enrollment_token=token, sign=lambda name: signed.append(name) or "PEM"
    )
    assert signed == ["phone"]
    assert (device.status, device.certificate_pem) == ("enrolled", "PEM")
    assert device.enrolled_at is not None
    with pytest.raises(Unauthenticated):
        store.enroll_device(enrollment_token=token, sign=lambda _name: None)
    assert store.authenticate_device(credential=credential).id == device.id
    with pytest.raises(Unauthenticated):
        store.authenticate_device(credential="sfd_wrong")
    with pytest.raises(Unauthenticated):
        store.authenticate_device(credential=token)  # the enrollment token is no credential


def test_device_secrets_are_hashed_at_rest(store: Store) -> None:
    _, token = store.create_device(name="phone")
    _, credential = store.enroll_device(enrollment_token=token, sign=lambda _name: None)
    with store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(Device.__table__)) for v in row)
    assert token not in stored and credential not in stored


# --- edges -----------------------------------------------------------------------------------------


def test_register_edge_and_reregister_rotates_credential(store: Store) -> None:
    first, old = store.register_edge(
        name="edge-a", address="a:1", models=["m1"], memory_free_bytes=10, max_sessions=2
    )
    assert store.authenticate_edge(credential=old, edge_id=first.id).name == "edge-a"
    with pytest.raises(AlreadyExists, match="already registered"):  # the shared secret only creates
        store.register_edge(
            name="edge-a", address="evil:1", models=["m1"], memory_free_bytes=0, max_sessions=9
        )
    again, new = store.register_edge(
        name="edge-a",
        address="a:2",
        models=["m1", "m2"],
        memory_free_bytes=20,
        max_sessions=3,
        as_edge=first.id,
    )
    assert again.id == first.id and new != old
    (listed,) = store.list_edges()
    assert (listed.address, listed.models, listed.max_sessions, listed.status) == (
        "a:2",
        ["m1", "m2"],
        3,
        "up",
    )
    with pytest.raises(Unauthenticated):
        store.authenticate_edge(credential=old, edge_id=first.id)
    assert store.authenticate_edge(credential=new, edge_id=first.id).id == first.id


def test_authenticate_edge_with_another_edges_id_is_denied(store: Store) -> None:
    a, credential_a = store.register_edge(
        name="edge-a", address="a:1", models=["m"], memory_free_bytes=0, max_sessions=1
    )
    b = edge(store, "edge-b")
    with pytest.raises(PermissionDenied):
        store.authenticate_edge(credential=credential_a, edge_id=b.id)
    with pytest.raises(Unauthenticated):
        store.authenticate_edge(credential="sfe_unknown", edge_id=a.id)


def test_heartbeat_updates_capacity_and_revives(store: Store) -> None:
    row = edge(store, "edge-a", max_sessions=2)
    silence(store, row.id, seconds=600)
    assert store.mark_stale_edges(timeout=timedelta(seconds=60)) == [row.id]
    beat = store.heartbeat(edge_id=row.id, active_sessions=1, memory_free_bytes=5, max_sessions=None)
    assert (beat.status, beat.active_sessions, beat.memory_free_bytes, beat.max_sessions) == ("up", 1, 5, 2)
    assert store.mark_stale_edges(timeout=timedelta(seconds=60)) == []
    with pytest.raises(NotFound):
        store.heartbeat(edge_id="nope", active_sessions=0, memory_free_bytes=None, max_sessions=None)


# --- jobs and placement ----------------------------------------------------------------------------


def test_create_job_with_unknown_device_is_not_found(store: Store) -> None:
    enrolled(store, "phone")
    with pytest.raises(NotFound, match="ghost"):
        job(store, ["phone", "ghost"])
    assert store.list_jobs() == []


def test_job_gets_one_session_per_device_and_is_placed(store: Store) -> None:
    for name in ("phone", "tablet"):
        enrolled(store, name)
    edge(store, "edge-other", models=("other-model",))
    serving = edge(store, "edge-a", max_sessions=4)
    job_id = job(store, ["phone", "tablet"])
    assert {d: s[0] for d, s in sessions(store, job_id).items()} == {"phone": "waiting", "tablet": "waiting"}
    assert store.place_waiting() == 2
    assert sessions(store, job_id) == {
        "phone": ("assigned", serving.id, ""),
        "tablet": ("assigned", serving.id, ""),
    }
    assert job_state(store, job_id) == ("running", "")
    assert store.place_waiting() == 0  # placed sessions stay where they are


def test_placement_prefers_the_edge_with_most_room(store: Store) -> None:
    for name in ("d1", "d2", "d3"):
        enrolled(store, name)
    small = edge(store, "edge-small", max_sessions=1)
    big = edge(store, "edge-big", max_sessions=2)
    job_id = job(store, ["d1", "d2", "d3"])
    assert store.place_waiting() == 3
    placed = [edge_id for _, edge_id, _ in sessions(store, job_id).values()]
    assert sorted(placed) == sorted([big.id, big.id, small.id])


def test_without_a_serving_edge_the_job_waits_with_a_reason(store: Store) -> None:
    enrolled(store, "phone")
    job_id = job(store, ["phone"], model="llama-7b")
    store.place_waiting()
    state, reason = job_state(store, job_id)
    assert state == "pending" and "llama-7b" in reason  # nothing registered at all
    edge(store, "edge-a", models=("tiny-bert",))
    assert store.place_waiting() == 0
    state, reason = job_state(store, job_id)
    assert state == "pending" and "serves model 'llama-7b'" in reason
    assert sessions(store, job_id)["phone"][2] == reason


def test_full_edges_leave_the_rest_waiting_with_a_reason(store: Store) -> None:
    for name in ("d1", "d2"):
        enrolled(store, name)
    edge(store, "edge-a", max_sessions=1)
    job_id = job(store, ["d1", "d2"])
    assert store.place_waiting() == 1
    states = sessions(store, job_id)
    waiting = [reason for state, _, reason in states.values() if state == "waiting"]
    assert len(waiting) == 1 and "full" in waiting[0]
    assert job_state(store, job_id) == ("running", waiting[0])


def test_cancel_job_and_cancel_twice(store: Store) -> None:
    enrolled(store, "phone")
    edge(store, "edge-a")
    job_id = job(store, ["phone"])
    store.place_waiting()
    cancelled = store.cancel_job(job_id=job_id)
    assert cancelled.state == "cancelled"
    assert sessions(store, job_id)["phone"][0] == "cancelled"
    with pytest.raises(FailedPrecondition, match="cancelled"):
        store.cancel_job(job_id=job_id)
    with pytest.raises(NotFound):
        store.cancel_job(job_id="nope")


def test_list_jobs_filters_and_pages(store: Store) -> None:
    enrolled(store, "phone")
    first, second = job(store, ["phone"]), job(store, ["phone"])
    store.cancel_job(job_id=first)
    assert [j.id for j in store.list_jobs(state="cancelled")] == [first]
    assert [j.id for j in store.list_jobs(state="pending")] == [second]
    assert len(store.list_jobs(limit=1)) == 1
    assert len(store.list_jobs(limit=10, offset=1)) == 1


# --- device side -----------------------------------------------------------------------------------


def test_next_assignment_returns_only_the_devices_own_session(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    lonely = enrolled(store, "lonely")
    serving = edge(store, "edge-a")
    job_id = job(store, ["phone", "tablet"])
    assert store.next_assignment(device_id=phone.id) is None  # not placed yet
    store.place_waiting()
    found = store.next_assignment(device_id=phone.id)
    assert found is not None
    sess, found_job, found_edge = found
    assert (sess.device_id, sess.state, found_job.id, found_edge.id) == (
        phone.id,
        "running",
        job_id,
        serving.id,
    )
    assert sessions(store, job_id)["tablet"][0] == "assigned"
    assert store.next_assignment(device_id=lonely.id) is None
    again = store.next_assignment(device_id=phone.id)  # a restarted device picks its session up again
    assert again is not None and again[0].id == sess.id
    assert store.next_assignment(device_id=tablet.id) is not None


def test_metrics_are_recorded_in_step_order(store: Store) -> None:
    device, job_id, sid = running_session(store)
    points = [{"step": 2, "loss": 0.5}, {"step": 1, "loss": 0.9, "examples_per_second": 12.5}]
    store.record_metrics(session_id=sid, device_id=device.id, points=points)
    store.record_metrics(
        session_id=sid, device_id=device.id, points=[{"step": 3, "loss": 0.25, "bytes_sent": 7}]
    )
    ((sess, name, recorded),), next_after = store.job_metrics(job_id=job_id)
    assert next_after is None  # one page holds them all
    assert (sess.id, name) == (sid, "phone")
    assert [(m.step, m.loss) for m in recorded] == [(1, 0.9), (2, 0.5), (3, 0.25)]
    assert recorded[0].examples_per_second == 12.5 and recorded[2].bytes_sent == 7
    with pytest.raises(NotFound):
        store.job_metrics(job_id="nope")


def test_sessions_are_guarded_by_device(store: Store) -> None:
    _, _, sid = running_session(store)
    other = enrolled(store, "intruder")
    with pytest.raises(PermissionDenied):
        store.record_metrics(session_id=sid, device_id=other.id, points=[{"step": 1, "loss": 1.0}])
    with pytest.raises(PermissionDenied):
        store.complete_session(session_id=sid, device_id=other.id, adapter=ADAPTER)
    with pytest.raises(PermissionDenied):
        store.fail_session(session_id=sid, device_id=other.id, reason="nope")
    with pytest.raises(NotFound):
        store.record_metrics(session_id="nope", device_id=other.id, points=[{"step": 1, "loss": 1.0}])


def test_complete_every_session_and_the_job_succeeds(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = job(store, ["phone", "tablet"])
    store.place_waiting()
    for device in (phone, tablet):
        found = store.next_assignment(device_id=device.id)
        assert found is not None
        store.complete_session(
            session_id=found[0].id, device_id=device.id, adapter=ADAPTER + device.name.encode()
        )
        if device is phone:
            assert job_state(store, job_id)[0] == "running"
    assert job_state(store, job_id) == ("succeeded", "")
    assert store.adapter(job_id=job_id, device_name="tablet") == ADAPTER + b"tablet"
    with pytest.raises(FailedPrecondition):
        store.complete_session(
            session_id=session_id(store, job_id, "phone"), device_id=phone.id, adapter=ADAPTER
        )
    with pytest.raises(FailedPrecondition, match="succeeded"):
        store.cancel_job(job_id=job_id)


def test_fail_session_fails_the_job_with_its_reason(store: Store) -> None:
    device, job_id, sid = running_session(store)
    store.fail_session(session_id=sid, device_id=device.id, reason="out of memory")
    state, reason = job_state(store, job_id)
    assert state == "failed" and "out of memory" in reason
    with pytest.raises(FailedPrecondition):
        store.fail_session(session_id=sid, device_id=device.id, reason="again")


def test_adapter_errors(store: Store) -> None:
    _, job_id, _ = running_session(store)
    with pytest.raises(FailedPrecondition, match="not finished"):
        store.adapter(job_id=job_id, device_name="phone")
    with pytest.raises(NotFound, match="not part of job"):
        store.adapter(job_id=job_id, device_name="tablet")
    with pytest.raises(NotFound, match="no job"):
        store.adapter(job_id="nope", device_name="phone")


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 300, "é'; DROP TABLE jobs; --"])
def test_odd_ids_are_just_not_found(store: Store, bad: str) -> None:
    """Ids come straight from URL paths; odd ones must read as unknown, not as a database error."""
    device = enrolled(store, "phone")
    for call in (
        lambda: store.get_job(job_id=bad),
        lambda: store.cancel_job(job_id=bad),
        lambda: store.adapter(job_id=bad, device_name=bad),
        lambda: store.record_metrics(session_id=bad, device_id=device.id, points=[{"step": 0, "loss": 1.0}]),
        lambda: store.heartbeat(edge_id=bad, active_sessions=0, memory_free_bytes=None, max_sessions=None),
    ):
        with pytest.raises(NotFound):
            call()


# --- edge failure ----------------------------------------------------------------------------------


def test_a_silent_edge_is_marked_down_and_its_sessions_move(store: Store) -> None:
    for name in ("d1", "d2"):
        enrolled(store, name)
    first = edge(store, "edge-a", max_sessions=2)
    job_id = job(store, ["d1", "d2"])
    assert store.place_waiting() == 2
    second = edge(store, "edge-b", max_sessions=2)  # arrives after the placement
    silence(store, first.id, seconds=120)
    assert store.mark_stale_edges(timeout=timedelta(seconds=30)) == [first.id]
    moved = sessions(store, job_id)
    assert all(
        state == "waiting" and "edge-a missed heartbeats" in reason for state, _, reason in moved.values()
    )
    assert store.place_waiting() == 2
    assert {edge_id for _, edge_id, _ in sessions(store, job_id).values()} == {second.id}
    _, rows = store.get_job(job_id=job_id)
    assert all(sess.attempts == 2 for sess, _ in rows)
    assert {e.name: e.status for e in store.list_edges()} == {"edge-a": "down", "edge-b": "up"}


def test_a_down_edge_hands_out_no_assignments(store: Store) -> None:
    device = enrolled(store, "phone")
    row = edge(store, "edge-a")
    job(store, ["phone"])
    store.place_waiting()
    silence(store, row.id, seconds=120)
    store.mark_stale_edges(timeout=timedelta(seconds=30))
    assert store.next_assignment(device_id=device.id) is None
    assert store.place_waiting() == 0  # nowhere to go until an edge comes back


def test_job_counts(store: Store) -> None:
    assert store.job_counts() == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    device, running_job, sid = running_session(store)
    cancelled = job(store, ["phone"])
    store.cancel_job(job_id=cancelled)
    job(store, ["phone"], model="unserved")
    store.place_waiting()
    assert store.job_counts() == {"pending": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 1}
    store.complete_session(session_id=sid, device_id=device.id, adapter=ADAPTER)
    assert store.job_counts()["succeeded"] == 1 and store.job_counts()["running"] == 0
    assert job_state(store, running_job)[0] == "succeeded"
