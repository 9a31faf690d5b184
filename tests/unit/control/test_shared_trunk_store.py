"""Federated jobs with `trunk_adapter: "shared"` in the store, on SQLite and PostgreSQL: a round's
sessions go to ONE edge (the one that holds the round's trunk adapter), wait with the reason while no
edge takes them all, and the round's global adapter is the device parts averaged with the trunk part
of the latest export of the shared adapter."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
from safetensors.numpy import save

from splitft.federated.shared_trunk import trunk_marks
from splitft_control.store import Store
from tests.unit.control.test_federated_store import CONFIG, federated_job, take, tensors_of
from tests.unit.control.test_store import edge, enrolled, sessions

DEVICE_KEY = "base_model.model.layer.0.query.lora_A.weight"
TRUNK_KEY = "base_model.model.layer.1.query.lora_A.weight"


def marked_upload(device: float, trunk: float, steps: int | None) -> bytes:
    """An adapter archive with a device tensor and a trunk tensor; `steps`: marked as the shared
    trunk adapter's export of that many steps (None: unmarked)."""
    tensors = {DEVICE_KEY: np.full((2, 4), device, np.float32), TRUNK_KEY: np.full((2, 4), trunk, np.float32)}
    metadata = {"format": "pt", **(trunk_marks([TRUNK_KEY], steps, "j/r0") if steps is not None else {})}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (
            ("adapter_config.json", json.dumps(CONFIG).encode()),
            ("adapter_model.safetensors", save(tensors, metadata=metadata)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_round_goes_to_one_edge_and_waits_while_none_takes_it_all(store: Store) -> None:
    devices = ["phone", "tablet", "watch"]
    for name in devices:
        enrolled(store, name)
    edge(store, "edge-a", max_sessions=2)
    edge(store, "edge-b", max_sessions=2)
    job_id = federated_job(store, devices, trunk_adapter="shared")
    store.place_waiting()
    placed = sessions(store, job_id)
    assert {state for state, _, _ in placed.values()} == {"waiting"}  # room for 4, not 3 on one edge
    reason = placed["phone"][2]
    assert "take all 3 sessions of this round together" in reason and "takes now is 2" in reason
    big = edge(store, "edge-c", max_sessions=3)
    store.place_waiting()
    assert {(state, edge_id) for state, edge_id, _ in sessions(store, job_id).values()} == {
        ("assigned", big.id)
    }


def test_a_shared_round_stays_together_where_an_averaged_one_spreads(store: Store) -> None:
    devices = ["phone", "tablet"]
    for name in devices:
        enrolled(store, name)
    edge(store, "edge-a", max_sessions=4)
    edge(store, "edge-b", max_sessions=4)
    averaged = federated_job(store, devices)
    store.place_waiting()
    assert len({edge_id for _, edge_id, _ in sessions(store, averaged).values()}) == 2  # least loaded first
    shared = federated_job(store, devices, trunk_adapter="shared")
    store.place_waiting()
    assert len({edge_id for _, edge_id, _ in sessions(store, shared).values()}) == 1


def test_the_global_adapter_takes_the_latest_trunk_export_and_averages_the_device_parts(store: Store) -> None:
    phone, tablet, watch = (enrolled(store, name) for name in ("phone", "tablet", "watch"))
    edge(store, "edge-a")
    job_id = federated_job(store, ["phone", "tablet", "watch"], rounds=1, trunk_adapter="shared")
    ids = {d.name: take(store, d) for d in (phone, tablet, watch)}
    # The tablet exported last (9 steps: every session's), though the watch uploads after it.
    for device, (dev, trunk, steps, examples) in (
        (tablet, (2.0, 20.0, 9, 10)),
        (phone, (1.0, 10.0, 4, 30)),
        (watch, (4.0, 99.0, None, 10)),  # unmarked (it did not join): its trunk part is left out
    ):
        upload = marked_upload(dev, trunk, steps)
        store.complete_session(
            session_id=ids[device.name], device_id=device.id, adapter=upload, examples=examples
        )
    result = tensors_of(store.global_adapter(job_id=job_id))
    np.testing.assert_allclose(result[DEVICE_KEY], (30 * 1 + 10 * 2 + 10 * 4) / 50, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(result[TRUNK_KEY], np.full((2, 4), 20.0, np.float32))
    assert store.rounds(job_id=job_id)[0].participants == ["phone", "tablet", "watch"]
