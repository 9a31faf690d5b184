"""Federated jobs in the store, on SQLite and PostgreSQL: rounds open one session per device, close
when every upload is in (or at the deadline, without the late), aggregate the uploads weighted by
their example counts into the round's global adapter, and the last round's is the job's result."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta

import numpy as np
import pytest
from safetensors.numpy import load, save

from splitft.errors import FailedPrecondition, InvalidArgument, NotFound
from splitft_control.models import Round
from splitft_control.store import Store
from tests.support.control_fixtures import job_body
from tests.unit.control.test_store import edge, enrolled

CONFIG = {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"], "peft_type": "LORA"}


def upload(values: float) -> bytes:
    """A real peft-layout adapter archive whose two tensors hold `values`."""
    return upload_of(
        {
            "base_model.model.layer.0.query.lora_A.weight": np.full((2, 4), values, np.float32),
            "base_model.model.layer.0.query.lora_B.weight": np.full((4, 2), -values, np.float32),
        }
    )


def upload_of(tensors: dict[str, np.ndarray]) -> bytes:
    """A real peft-layout adapter archive of `tensors`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (
            ("adapter_config.json", json.dumps(CONFIG).encode()),
            ("adapter_model.safetensors", save(tensors)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tensors_of(archive: bytes) -> dict[str, np.ndarray]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile("adapter_model.safetensors")
        assert member is not None
        return load(member.read())


def federated_job(store: Store, devices: list[str], **federated: object) -> str:
    spec = {"rounds": 2, "local_steps": 3, **federated}
    body = job_body(devices, steps=None, mode="federated", federated=spec)
    return store.create_job(name="fed", spec=body, device_names=devices).id


def take(store: Store, device) -> str:
    store.place_waiting()
    found = store.next_assignment(device_id=device.id)
    assert found is not None
    return found[0].id


def test_rounds_aggregate_weighted_uploads_and_the_last_is_the_result(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone", "tablet"])
    first = {d.name: take(store, d) for d in (phone, tablet)}
    store.complete_session(session_id=first["phone"], device_id=phone.id, adapter=upload(1.0), examples=30)
    assert [r.number for r in store.rounds(job_id=job_id)] == [0]  # waits for the tablet
    store.complete_session(session_id=first["tablet"], device_id=tablet.id, adapter=upload(2.0), examples=10)
    round0, round1 = store.rounds(job_id=job_id)
    assert (
        round0.state == "aggregated"
        and round0.participants == ["phone", "tablet"]
        and round1.state == "running"
    )
    mean = tensors_of(round0.adapter)["base_model.model.layer.0.query.lora_A.weight"]
    np.testing.assert_allclose(mean, 1.25, rtol=0, atol=1e-7)  # (30 * 1 + 10 * 2) / 40
    with pytest.raises(FailedPrecondition, match="running: its global adapter exists once it succeeded"):
        store.global_adapter(job_id=job_id)
    second = {d.name: take(store, d) for d in (phone, tablet)}
    assert store.initial_adapter(session_id=second["phone"], device_id=phone.id) == round0.adapter
    for device, value in ((phone, 3.0), (tablet, 3.0)):
        store.complete_session(
            session_id=second[device.name], device_id=device.id, adapter=upload(value), examples=5
        )
    found, _ = store.get_job(job_id=job_id)
    assert found.state == "succeeded"
    result = tensors_of(store.global_adapter(job_id=job_id))
    np.testing.assert_allclose(result["base_model.model.layer.0.query.lora_B.weight"], -3.0, atol=1e-7)
    assert store.rounds(job_id=job_id)[1].bytes_down == len(round0.adapter)  # the phone fetched it to start


def test_one_device_one_round_gives_its_upload_exactly(store: Store) -> None:
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone"], rounds=1)
    sid = take(store, phone)
    with pytest.raises(NotFound, match="round 0 of job .* starts from a fresh adapter"):
        store.initial_adapter(session_id=sid, device_id=phone.id)
    archive = upload(0.123456789)
    store.complete_session(session_id=sid, device_id=phone.id, adapter=archive, examples=7)
    expected, got = tensors_of(archive), tensors_of(store.global_adapter(job_id=job_id))
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_a_failed_device_misses_the_round_and_the_round_goes_on(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone", "tablet"], min_devices=1)
    first = {d.name: take(store, d) for d in (phone, tablet)}
    store.fail_session(session_id=first["tablet"], device_id=tablet.id, reason="battery")
    assert store.get_job(job_id=job_id)[0].state == "running"  # one device's failure is not the job's
    store.complete_session(session_id=first["phone"], device_id=phone.id, adapter=upload(1.0), examples=3)
    round0 = store.rounds(job_id=job_id)[0]
    assert round0.participants == ["phone"] and round0.missed == ["tablet"]
    assert len(store.rounds(job_id=job_id)) == 2  # both devices are asked again in round 1


def test_the_deadline_closes_a_round_and_too_few_uploads_fail_the_job(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone", "tablet"], min_devices=2)
    first = {d.name: take(store, d) for d in (phone, tablet)}
    store.complete_session(session_id=first["phone"], device_id=phone.id, adapter=upload(1.0), examples=3)
    with store.tx() as s:  # the tablet is late
        for row in s.query(Round).filter(Round.job_id == job_id):
            row.deadline_at = row.deadline_at - timedelta(days=1)
    assert store.close_due_rounds() == 1
    state, reason = store.get_job(job_id=job_id)[0].state, store.get_job(job_id=job_id)[0].reason
    assert (
        state == "failed" and "round 0: 1 of the 2 uploads it needs arrived" in reason and "tablet" in reason
    )
    with pytest.raises(FailedPrecondition, match="session is failed"):  # the late upload is refused
        store.complete_session(
            session_id=first["tablet"], device_id=tablet.id, adapter=upload(2.0), examples=3
        )


def test_a_federated_upload_needs_its_example_count(store: Store) -> None:
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    federated_job(store, ["phone"], rounds=1)
    sid = take(store, phone)
    with pytest.raises(InvalidArgument, match="needs examples=N"):
        store.complete_session(session_id=sid, device_id=phone.id, adapter=upload(1.0))


def test_an_independent_job_has_no_global_adapter(store: Store) -> None:
    enrolled(store, "phone")
    job_id = store.create_job(name="ind", spec=job_body(["phone"]), device_names=["phone"]).id
    with pytest.raises(FailedPrecondition, match="is independent: each device has its own adapter"):
        store.global_adapter(job_id=job_id)
    assert store.rounds(job_id=job_id) == []


def _aircomp_job(store: Store, devices: list[str], seed: int, **channel: object) -> str:
    spec = {"rounds": 2, "local_steps": 3, "aggregation": "aircomp", "snr_db": 20.0, **channel}
    body = job_body(devices, steps=None, mode="federated", federated=spec, seed=seed)
    return store.create_job(name="air", spec=body, device_names=devices).id


def _near(start: dict[str, np.ndarray], seed: int, size: float) -> bytes:
    """`start` plus a random update of about `size` per entry."""
    rng = np.random.default_rng(seed)
    return upload_of(
        {k: (v + size * rng.standard_normal(v.shape)).astype(np.float32) for k, v in start.items()}
    )


def test_aircomp_rounds_send_updates_from_the_round_s_starting_adapter(store: Store) -> None:
    """Round 0 starts fresh: whole adapters go over the air, the noise scales with their weights.
    Round 1 starts from round 0's global adapter: only the updates (upload - start) do, so the
    same 20 dB cost the global adapter far less."""
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = _aircomp_job(store, ["phone", "tablet"], seed=5, fading="none")
    base = {k: np.random.default_rng(0).standard_normal(v.shape) for k, v in tensors_of(upload(1.0)).items()}
    first = {d.name: take(store, d) for d in (phone, tablet)}
    for k, device in enumerate((phone, tablet)):
        store.complete_session(
            session_id=first[device.name], device_id=device.id, adapter=_near(base, k, 0.01), examples=4
        )
    round0 = store.rounds(job_id=job_id)[0]
    start = tensors_of(round0.adapter)
    second = {d.name: take(store, d) for d in (phone, tablet)}
    for k, device in enumerate((phone, tablet)):
        store.complete_session(
            session_id=second[device.name],
            device_id=device.id,
            adapter=_near(start, 10 + k, 0.01),
            examples=4,
        )
    round1 = store.rounds(job_id=job_id)[1]
    assert round0.aggregation_error is not None and round1.aggregation_error is not None
    assert round0.aggregation_error > 0.01  # about 0.1 / sqrt(2) at 20 dB, relative to the weights
    assert round1.aggregation_error < round0.aggregation_error / 20  # relative to updates 1% the size


def test_aircomp_channels_follow_the_job_seed(store: Store) -> None:
    """Two jobs of the same spec seed draw the same noise; another seed does not."""
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    results = []
    for seed in (3, 3, 4):
        job_id = _aircomp_job(store, ["phone"], seed=seed, rounds=1, fading="none")  # no deep fade
        store.complete_session(
            session_id=take(store, phone), device_id=phone.id, adapter=upload(0.5), examples=2
        )
        results.append(store.rounds(job_id=job_id)[0].adapter)
    assert results[0] == results[1] and results[0] != results[2]
