"""Secure rounds in the store, on SQLite and PostgreSQL: keys, members fixed, masked uploads summed
into FedAvg; a device that drops out after the members are fixed makes the round start again without
it; every out-of-order or malformed call refused with the reason; no plain adapter ever stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select, text

from splitft.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from splitft.federated import fedavg
from splitft.federated.fixedpoint import Layout
from splitft.federated.secagg import generate_private_key, mask_update, public_bytes
from splitft_control.models import Device as DeviceRow
from splitft_control.models import JobSession, Round
from splitft_control.store import Store
from splitft_control.store.secagg import KeyOffer
from tests.unit.control.test_federated_store import CONFIG, federated_job, take, tensors_of
from tests.unit.control.test_store import edge, enrolled

A, B = "base_model.model.layer.0.query.lora_A.weight", "base_model.model.layer.0.query.lora_B.weight"


def state_of(value: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(value * 1000))
    return {A: rng.normal(value, 1, (2, 4)).astype(np.float32), B: np.full((4, 2), -value, np.float32)}


@dataclass
class Device:
    """A device's side of a secure round, with the library: its key, its update, its masking."""

    row: DeviceRow
    session: str
    state: dict[str, np.ndarray]
    examples: int

    def __post_init__(self) -> None:
        self.private = generate_private_key()

    def offer(self) -> KeyOffer:
        layout = Layout.of_state(self.state).to_json()
        return KeyOffer(public_bytes(self.private), layout, dict(CONFIG), self.examples)

    def post_key(self, store: Store) -> None:
        store.post_secagg_key(session_id=self.session, device_id=self.row.id, offer=self.offer())

    def masked(self, store: Store) -> bytes:
        found = store.secagg_members(session_id=self.session, device_id=self.row.id)
        assert found is not None
        me = self.row.name
        update = mask_update(
            self.state, self.examples, me=me, private=self.private, members=found.keys, context=found.context
        )
        return update.to_bytes()

    def upload(self, store: Store) -> None:
        data = self.masked(store)
        store.upload_masked(session_id=self.session, device_id=self.row.id, data=data)


def secure_round(store: Store, names: list[str], **federated: object) -> tuple[str, list[Device]]:
    rows = [enrolled(store, name) for name in names]
    edge(store, "edge-a")
    federated = {"rounds": 1, "min_devices": 2, "secure_aggregation": True, **federated}
    job_id = federated_job(store, names, **federated)
    devices = [Device(row, take(store, row), state_of(i + 1.0), 10 * (i + 1)) for i, row in enumerate(rows)]
    return job_id, devices


def plain_adapters_stored(store: Store) -> int:
    with store.tx() as s:
        return len([x for x in s.scalars(select(JobSession.adapter)) if x is not None])


def test_masked_uploads_sum_to_fedavg_and_no_plain_adapter_is_stored(store: Store) -> None:
    job_id, devices = secure_round(store, ["laptop", "phone", "tablet"])
    for device in devices:
        device.post_key(store)
    for device in devices:
        device.upload(store)
    assert store.get_job(job_id=job_id)[0].state == "succeeded"
    (round0,) = store.rounds(job_id=job_id)
    assert round0.participants == ["laptop", "phone", "tablet"] and round0.missed == []
    assert round0.bytes_up == 3 * 8 * 16  # 16 uint64 each
    result = tensors_of(store.global_adapter(job_id=job_id))
    expected = fedavg([d.state for d in devices], [float(d.examples) for d in devices])
    for key, value in expected.items():
        np.testing.assert_allclose(result[key], value, rtol=0, atol=1e-6)
    assert plain_adapters_stored(store) == 0
    with store.tx() as s:  # the masked vectors are dropped once summed
        assert s.execute(text("SELECT count(*) FROM secagg_members WHERE masked IS NOT NULL")).scalar() == 0
    with pytest.raises(FailedPrecondition, match="never holds one device's adapter"):
        store.adapter(job_id=job_id, device_name="phone")


def test_out_of_order_and_malformed_calls_are_refused_with_the_reason(store: Store) -> None:
    job_id, (laptop, phone) = secure_round(store, ["laptop", "phone"])
    with pytest.raises(FailedPrecondition, match="uploads before its key"):
        store.upload_masked(session_id=laptop.session, device_id=laptop.row.id, data=b"\0" * 128)
    with pytest.raises(FailedPrecondition, match="has not posted its public key"):
        store.secagg_members(session_id=laptop.session, device_id=laptop.row.id)
    with pytest.raises(FailedPrecondition, match="uses secure aggregation: the control plane takes no plain"):
        store.complete_session(session_id=laptop.session, device_id=laptop.row.id, adapter=b"x", examples=3)
    laptop.post_key(store)
    with pytest.raises(AlreadyExists, match="already posted its key"):
        laptop.post_key(store)
    assert store.secagg_members(session_id=laptop.session, device_id=laptop.row.id) is None
    with pytest.raises(FailedPrecondition, match="members of round 0 are not fixed yet"):
        store.upload_masked(session_id=laptop.session, device_id=laptop.row.id, data=b"\0" * 128)
    same_key = KeyOffer(laptop.offer().public_key, *list(phone.offer().__dict__.values())[1:])
    with pytest.raises(InvalidArgument, match="already laptop's"):
        store.post_secagg_key(session_id=phone.session, device_id=phone.row.id, offer=same_key)
    other_layout = KeyOffer(public_bytes(phone.private), [[A, [2, 4], "float32"]], dict(CONFIG), 3)
    with pytest.raises(InvalidArgument, match="layout differs from laptop's"):
        store.post_secagg_key(session_id=phone.session, device_id=phone.row.id, offer=other_layout)
    other_rank = KeyOffer(public_bytes(phone.private), phone.offer().layout, {**CONFIG, "r": 8}, 3)
    with pytest.raises(InvalidArgument, match="adapter_config differs from laptop's on r"):
        store.post_secagg_key(session_id=phone.session, device_id=phone.row.id, offer=other_rank)
    bad_key = KeyOffer(b"short", phone.offer().layout, dict(CONFIG), 3)
    with pytest.raises(InvalidArgument, match="32 raw bytes"):
        store.post_secagg_key(session_id=phone.session, device_id=phone.row.id, offer=bad_key)
    phone.post_key(store)  # the members are fixed now
    with pytest.raises(InvalidArgument, match="is 128 bytes"):
        store.upload_masked(session_id=phone.session, device_id=phone.row.id, data=b"\0" * 120)
    laptop.upload(store)
    with pytest.raises(FailedPrecondition, match="session is succeeded"):
        laptop.upload(store)
    assert store.get_job(job_id=job_id)[0].state == "running"


def test_a_key_after_the_members_are_fixed_is_too_late(store: Store) -> None:
    job_id, (laptop, phone, tablet) = secure_round(store, ["laptop", "phone", "tablet"])
    laptop.post_key(store)
    phone.post_key(store)
    with store.tx() as s:  # the tablet is still training at the deadline
        for row in s.scalars(select(Round).where(Round.job_id == job_id)):
            row.deadline_at = row.deadline_at - timedelta(days=1)
    store.close_due_rounds()  # members fixed without the tablet, which misses the round
    with pytest.raises(FailedPrecondition, match="missed the deadline of round 0 before offering its key"):
        tablet.post_key(store)
    laptop.upload(store)
    phone.upload(store)
    (round0,) = store.rounds(job_id=job_id)
    assert round0.participants == ["laptop", "phone"] and round0.missed == ["tablet"]
    assert store.get_job(job_id=job_id)[0].state == "succeeded"


def test_a_device_dropping_out_after_the_members_are_fixed_redoes_the_round_without_it(store: Store) -> None:
    job_id, (laptop, phone, tablet) = secure_round(store, ["laptop", "phone", "tablet"])
    for device in (laptop, phone, tablet):
        device.post_key(store)
    laptop.upload(store)
    store.fail_session(session_id=tablet.session, device_id=tablet.row.id, reason="battery")
    with pytest.raises(FailedPrecondition, match="round 0 redone without tablet"):
        phone.upload(store)  # its masks would not cancel without the tablet's
    assert store.get_job(job_id=job_id)[0].state in ("pending", "running")
    redo = {d.row.name: Device(d.row, take(store, d.row), d.state, d.examples) for d in (laptop, phone)}
    assert {redo["laptop"].session, redo["phone"].session}.isdisjoint({laptop.session, phone.session})
    for device in redo.values():
        device.post_key(store)
    found = store.secagg_members(session_id=redo["phone"].session, device_id=phone.row.id)
    assert (
        found is not None and found.context == f"{job_id}:0:1" and sorted(found.keys) == ["laptop", "phone"]
    )
    for device in redo.values():
        device.upload(store)
    (round0,) = store.rounds(job_id=job_id)
    assert round0.participants == ["laptop", "phone"] and round0.missed == ["tablet"]
    result = tensors_of(store.global_adapter(job_id=job_id))
    expected = fedavg([laptop.state, phone.state], [float(laptop.examples), float(phone.examples)])
    np.testing.assert_allclose(result[A], expected[A], rtol=0, atol=1e-6)


def test_a_device_failing_after_its_key_but_before_the_members_are_fixed_is_left_out(store: Store) -> None:
    job_id, (laptop, phone, tablet) = secure_round(store, ["laptop", "phone", "tablet"])
    tablet.post_key(store)
    store.fail_session(session_id=tablet.session, device_id=tablet.row.id, reason="battery")
    laptop.post_key(store)
    phone.post_key(store)  # the members are fixed now: laptop and phone, no redo needed
    found = store.secagg_members(session_id=phone.session, device_id=phone.row.id)
    assert found is not None and sorted(found.keys) == ["laptop", "phone"] and found.context.endswith(":0")
    laptop.upload(store)
    phone.upload(store)
    (round0,) = store.rounds(job_id=job_id)
    assert round0.participants == ["laptop", "phone"] and round0.missed == ["tablet"]


def test_too_few_members_fail_the_round(store: Store) -> None:
    job_id, (laptop, phone) = secure_round(store, ["laptop", "phone"])
    laptop.post_key(store)
    store.fail_session(session_id=phone.session, device_id=phone.row.id, reason="battery")
    job = store.get_job(job_id=job_id)[0]
    assert job.state == "failed" and "1 devices offered keys for secure aggregation, it needs 2" in job.reason
    assert "missed: phone" in job.reason


def test_a_job_without_secure_aggregation_refuses_the_calls(store: Store) -> None:
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    federated_job(store, ["phone"], rounds=1)
    device = Device(phone, take(store, phone), state_of(1.0), 3)
    with pytest.raises(FailedPrecondition, match="does not use secure aggregation"):
        device.post_key(store)
