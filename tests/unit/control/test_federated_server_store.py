"""FedAvgM in the control plane (`federated.server_lr`, `server_momentum`): each round's global
adapter is the server's step from the stored globals before it, plain and secure rounds alike."""

from __future__ import annotations

import numpy as np
import pytest

from splitft.federated import fedavg
from splitft.federated.server import ServerOptimizer, server_step
from splitft_control.aggregation import aggregate_archives
from splitft_control.store import Store
from tests.unit.control.test_federated_store import federated_job, take, tensors_of, upload_of
from tests.unit.control.test_secagg_store import Device, state_of
from tests.unit.control.test_store import edge, enrolled

A = "base_model.model.layer.0.query.lora_A.weight"


def _uploads(round_number: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(round_number)
    return [{A: rng.normal(round_number, 1, (2, 4)).astype(np.float32)} for _ in range(2)]


def test_each_round_steps_from_the_stored_globals_with_momentum(store: Store) -> None:
    phone, tablet = enrolled(store, "phone"), enrolled(store, "tablet")
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone", "tablet"], rounds=3, server_lr=1.5, server_momentum=0.5)
    optimizer, expected = ServerOptimizer(1.5, 0.5), []
    for number in range(3):
        sessions = {d.name: take(store, d) for d in (phone, tablet)}
        uploads = _uploads(number)
        for device, state, examples in ((phone, uploads[0], 30), (tablet, uploads[1], 10)):
            store.complete_session(
                session_id=sessions[device.name],
                device_id=device.id,
                adapter=upload_of(state),
                examples=examples,
            )
        mean = fedavg(uploads, [30.0, 10.0])  # round 0 starts fresh: the control plane takes no step
        previous = expected[-1] if number else None
        before = expected[-2] if number > 1 else None
        expected.append(server_step(mean, previous, optimizer, before_previous=before))
    rounds = store.rounds(job_id=job_id)
    assert [r.state for r in rounds] == ["aggregated"] * 3
    for stored, wanted in zip(rounds, expected, strict=True):
        np.testing.assert_allclose(tensors_of(stored.adapter)[A], wanted[A], rtol=0, atol=1e-6)
    plain = fedavg(_uploads(2), [30.0, 10.0])[A]
    assert not np.allclose(tensors_of(rounds[2].adapter)[A], plain, atol=1e-2)  # the step changed it


def test_a_secure_round_steps_its_unmasked_sum(store: Store) -> None:
    rows = [enrolled(store, name) for name in ("laptop", "phone")]
    edge(store, "edge-a")
    spec = {
        "rounds": 2,
        "min_devices": 2,
        "secure_aggregation": True,
        "server_momentum": 0.9,
        "server_lr": 2.0,
    }
    job_id = federated_job(store, ["laptop", "phone"], **spec)
    means = []
    for number in range(2):
        devices = [
            Device(row, take(store, row), state_of(i + 1.0 + number), 10 * (i + 1))
            for i, row in enumerate(rows)
        ]
        for device in devices:
            device.post_key(store)
        for device in devices:
            device.upload(store)
        means.append(fedavg([d.state for d in devices], [float(d.examples) for d in devices]))
    first, second = store.rounds(job_id=job_id)
    got0, got1 = tensors_of(first.adapter), tensors_of(second.adapter)
    wanted1 = server_step(means[1], got0, ServerOptimizer(2.0, 0.9))  # round 1: no momentum carried yet
    for key in means[0]:
        np.testing.assert_allclose(got0[key], means[0][key], rtol=0, atol=1e-6)  # round 0: fresh start
        np.testing.assert_allclose(got1[key], wanted1[key], rtol=0, atol=1e-5)
    assert store.get_job(job_id=job_id)[0].state == "succeeded"


@pytest.mark.parametrize(
    ("federated", "wanted"),
    [
        ({}, [(False, False)] * 3),  # plain FedAvg reads neither stored global
        ({"aggregation": "aircomp"}, [(False, False), (True, False), (True, False)]),  # its reference
        ({"server_momentum": 0.5}, [(False, False), (True, False), (True, True)]),  # the step's two
    ],
)
def test_a_round_reads_only_the_stored_globals_its_aggregation_uses(
    store: Store, federated: dict, wanted: list[tuple[bool, bool]]
) -> None:
    """Each stored global is a blob read from the database: plain FedAvg needs none of them."""
    seen: list[tuple[bool, bool]] = []

    def recording(archives, weights, spec, seed, reference=None, before=None):  # type: ignore[no-untyped-def]
        seen.append((reference is not None, before is not None))
        return aggregate_archives(archives, weights, spec, seed, reference, before)

    store = Store(store.engine, aggregate=recording)  # the emptied database, a recording aggregate
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    federated_job(store, ["phone"], rounds=3, snr_db=None, **federated)
    for number in range(3):
        session = take(store, phone)
        store.complete_session(
            session_id=session, device_id=phone.id, adapter=upload_of(_uploads(number)[0]), examples=3
        )
    assert seen == wanted
