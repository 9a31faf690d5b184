"""A federated job with secure aggregation end to end: three real device agents (threads) train two
rounds through a real gRPC edge, the control plane (in process, SQLite, its scheduler running) sees
only masked updates, and the job's global adapter equals the same job's without secure aggregation
(same seed: the same training) within 1e-5. Every byte string the control plane ever wrote to its
database is captured (a SQLAlchemy event on the engine) and none holds a device's adapter tensors.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file
from sqlalchemy import event, text

from tests.support.agent_support import DATA, job_spec_json, make_bert_with_tokenizer
from tests.support.inprocess_control import InProcessControl, adapter_tensors, scheduler_running

SHARES = {"phone-a": DATA[0:3], "phone-b": DATA[3:7], "phone-c": DATA[7:12]}  # 3, 4, 5 examples
ROUNDS = 2


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def _spec(secure: bool) -> dict[str, Any]:
    body = job_spec_json(name=f"secure-{secure}", num_labels=3, devices=sorted(SHARES), seed=3)
    body.pop("steps")
    federated = {"rounds": ROUNDS, "local_steps": 2, "min_devices": 2, "secure_aggregation": secure}
    body.update(mode="federated", federated=federated)
    return body


def _blobs_written(control: InProcessControl) -> list[bytes]:
    """Every bytes parameter the control plane sends its database from now on."""
    engine = control.client.app.state.control.store.engine  # type: ignore[attr-defined]
    seen: list[bytes] = []

    def capture(_conn: Any, _cursor: Any, _statement: str, parameters: Any, *_: Any) -> None:
        rows = parameters if isinstance(parameters, list) else [parameters]
        for row in rows:
            values = row.values() if isinstance(row, dict) else (row or ())
            seen.extend(bytes(v) for v in values if isinstance(v, (bytes, bytearray, memoryview)))

    event.listen(engine, "before_cursor_execute", capture)
    return seen


def _run_job(control: InProcessControl, agents: dict[str, Any], body: dict[str, Any]) -> str:
    job_id = control.create_job(body)
    threads = [threading.Thread(target=a.run, kwargs={"max_sessions": ROUNDS}) for a in agents.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "an agent did not finish its rounds"
    job = control.job(job_id)
    assert job["state"] == "succeeded", job
    return job_id


def _plain_text(blob: bytes) -> bytes:
    """A blob as stored, and its gunzipped tar members when it is an archive (adapters are .tar.gz)."""
    if not blob.startswith(b"\x1f\x8b"):
        return blob
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]


def test_secure_aggregation_gives_the_plain_global_adapter_and_stores_no_device_adapter(
    edge: Any, bert_with_tokenizer: Path, tmp_path: Path
) -> None:
    control = InProcessControl(tmp_path / "control")
    control.add_edge("edge-a", edge.address, ["bert"])
    records = tmp_path / "records"
    agents, train_lock = {}, threading.Lock()
    for name, examples in SHARES.items():
        credential = control.add_device(name)
        agent = control.agent(credential, {"bert": bert_with_tokenizer}, examples, train_lock=train_lock)
        agent.trainer.options.record_dir = records  # each device keeps its trained adapter locally
        agents[name] = agent
    written = _blobs_written(control)
    with scheduler_running(control):
        secure = _run_job(control, agents, _spec(secure=True))
        secure_blobs = list(written)
        plain = _run_job(control, agents, _spec(secure=False))
    rounds = control.get(f"/v1/jobs/{secure}/rounds").json()
    assert [(r["state"], r["participants"]) for r in rounds] == [("aggregated", sorted(SHARES))] * ROUNDS
    masked_global = adapter_tensors(control.get(f"/v1/jobs/{secure}/adapter").content)
    plain_global = adapter_tensors(control.get(f"/v1/jobs/{plain}/adapter").content)
    assert sorted(masked_global) == sorted(plain_global) and any(".layer.1." in k for k in plain_global)
    for key, value in plain_global.items():
        np.testing.assert_allclose(masked_global[key], value, rtol=0, atol=1e-5, err_msg=key)

    # What each device trained in the secure job (its local record): never in the control plane's writes.
    engine = control.client.app.state.control.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        sessions = conn.execute(
            text("SELECT id, adapter FROM sessions WHERE job_id = :j"), {"j": secure}
        ).all()
    assert len(sessions) == len(SHARES) * ROUNDS and all(adapter is None for _, adapter in sessions)
    stored = [_plain_text(blob) for blob in secure_blobs]
    assert sum(len(b) for b in stored) > 0  # the capture works: masked updates and global adapters
    for session_id, _ in sessions:
        tensors = load_file(str(records / session_id / "adapter" / "adapter_model.safetensors"))
        for key, value in tensors.items():
            needle = np.ascontiguousarray(value).tobytes()
            assert not any(needle in blob for blob in stored), f"{key} of session {session_id} was stored"
    # ...whereas the plain job's uploads do hold them: the check above can fail.
    plain_sessions = [sid for sid in (p.name for p in records.iterdir()) if sid not in dict(sessions)]
    tensors = load_file(str(records / plain_sessions[0] / "adapter" / "adapter_model.safetensors"))
    needle = np.ascontiguousarray(next(iter(tensors.values()))).tobytes()
    assert any(needle in _plain_text(blob) for blob in written[len(secure_blobs) :])
