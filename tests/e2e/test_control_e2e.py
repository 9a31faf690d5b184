"""End to end with real processes: control plane, edges and device agents on loopback.

REST creates the job; devices enroll with CSRs and train over mutual TLS with tokens the control
plane signed; adapters come back over REST and reproduce what the devices saw. Then the failures:
an edge that dies mid-job, and a control plane killed mid-job and restarted on the same database.
"""

from __future__ import annotations

import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, BertForSequenceClassification

from splitft.data.stdlib_task import build_stdlib_task
from splitft.demo.sdk import default_model_dir
from splitft.local.loop import LocalLoop, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MODEL = "minilm"


@pytest.fixture(scope="module")
def task():
    return build_stdlib_task(max_per_class=12)


def _spec(devices: list[str], num_labels: int, steps: int = 3) -> dict:
    return {
        "name": "e2e",
        "model": MODEL,
        "device_layers": 2,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "steps": steps,
        "batch_size": 8,
        "max_length": 32,
        "num_labels": num_labels,
        "optimizer": {"name": "AdamW", "lr": 1e-3},
        "devices": devices,
    }


def _model_arg() -> str:
    return f"{MODEL}={default_model_dir()}"


def _check_adapter_reproduces_device_logits(
    loop: LocalLoop, job: dict, device: str, num_labels: int, tmp
) -> None:
    session = next(s for s in job["sessions"] if s["device"] == device)
    adapter = loop.download_adapter(job["id"], device, tmp / device)
    record = torch.load(loop.root / "records" / device / session["id"] / "eval_logits.pt")
    base = BertForSequenceClassification.from_pretrained(str(default_model_dir()), num_labels=num_labels)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    batch = tokenizer(
        record["texts"], padding=True, truncation=True, max_length=record["max_length"], return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, record["logits"], atol=1e-5, rtol=0)


def test_job_over_rest_succeeds_and_each_adapter_reproduces_its_device(tmp_path, task):
    with LocalLoop(tmp_path) as loop:
        loop.start_edge("edge-a", [_model_arg()])
        devices = ["phone-1", "phone-2"]
        for i, name in enumerate(devices):
            data = write_jsonl(task.train[i::2], tmp_path / f"{name}.jsonl")  # each device its own data
            loop.start_agent(loop.enroll_device(name), data, _model_arg())
        started = time.monotonic()
        job = loop.create_job(_spec(devices, len(task.labels)))
        job = loop.wait_job(job["id"], timeout=240)
        assert job["state"] == "succeeded", job
        assert all(s["has_adapter"] for s in job["sessions"])
        metrics = loop.api("GET", f"/v1/jobs/{job['id']}/metrics").json()
        assert all(s["points"] for s in metrics["sessions"])
        for name in devices:
            _check_adapter_reproduces_device_logits(loop, job, name, len(task.labels), tmp_path / "dl")
        assert time.monotonic() - started < 240


def test_sessions_of_a_dead_edge_are_placed_on_another(tmp_path, task):
    with LocalLoop(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=3.0) as loop:
        loop.start_edge("edge-a", [_model_arg()])
        credential = loop.enroll_device("phone-1")  # enrolled, but its agent is not started yet
        job = loop.create_job(_spec(["phone-1"], len(task.labels)))
        edges = {e["name"]: e["id"] for e in loop.api("GET", "/v1/edges").json()}
        assert loop.job(job["id"])["sessions"][0]["edge_id"] == edges["edge-a"]
        loop.start_edge("edge-b", [_model_arg()])
        edges = {e["name"]: e["id"] for e in loop.api("GET", "/v1/edges").json()}
        loop.kill_edge("edge-a")
        moved = loop.wait_job(
            job["id"], until=lambda j: j["sessions"][0]["edge_id"] == edges["edge-b"], timeout=60
        )
        assert moved["sessions"][0]["attempts"] == 2
        status = {e["name"]: e["status"] for e in loop.api("GET", "/v1/edges").json()}
        assert status == {"edge-a": "down", "edge-b": "up"}
        data = write_jsonl(task.train, tmp_path / "phone-1.jsonl")
        loop.start_agent(credential, data, _model_arg())
        assert loop.wait_job(job["id"], timeout=240)["state"] == "succeeded"


SELECTION_SPECS = {
    "taskedge": {"budget_fraction": 0.002, "calibration_batches": 2},
    # The edge's budget bounds the trunk's share (no limit by default: 5.3M trunk entries here, that
    # the edge exports and the agent saves, packs and uploads; nothing checked here needs so many).
    "tinytrain": {"memory_budget_bytes": 2e7, "edge_memory_budget_bytes": 2e7, "calibration_batches": 2},
}


def test_selection_jobs_over_rest_return_sparse_deltas_that_reproduce_the_device(tmp_path, task):
    """A job per selection method, side by side on one edge and one agent (a session each, in turn):
    each returns sparse deltas and a head that, loaded on the whole model, give the device's logits."""
    from splitft.methods.sparse import read_sparse_deltas

    with LocalLoop(tmp_path) as loop:
        loop.start_edge("edge-a", [_model_arg()])
        data = write_jsonl(task.train, tmp_path / "phone-1.jsonl")
        loop.start_agent(
            loop.enroll_device("phone-1"), data, _model_arg(), max_sessions=len(SELECTION_SPECS)
        )  # then it exits
        jobs = {m: loop.create_job(_selection_spec(m, len(task.labels)))["id"] for m in SELECTION_SPECS}
        records = {}
        for method, job_id in jobs.items():
            job = loop.wait_job(job_id, timeout=240)
            assert job["state"] == "succeeded", job
            adapter = loop.download_adapter(job_id, "phone-1", tmp_path / "dl" / method)
            assert (adapter / "sparse_deltas.safetensors").is_file(), method
            assert (adapter / "head.safetensors").is_file(), method
            deltas, meta = read_sparse_deltas(adapter)
            assert meta["metadata"]["method"] == method and deltas
            session = job["sessions"][0]["id"]
            records[method] = (adapter, loop.root / "records" / "phone-1" / session / "eval_logits.pt")
    for method, (adapter, record) in records.items():
        _check_selection_reproduces_device_logits(adapter, torch.load(record), len(task.labels), method)


def _selection_spec(method: str, num_labels: int) -> dict:
    spec = _spec(["phone-1"], num_labels)
    spec.pop("lora")
    spec.update(name=f"e2e-{method}", method=method, **{method: SELECTION_SPECS[method]})
    return spec


def _check_selection_reproduces_device_logits(adapter, record: dict, num_labels: int, method: str) -> None:
    from device_client.selection import load_selected

    base = BertForSequenceClassification.from_pretrained(str(default_model_dir()), num_labels=num_labels)
    model = load_selected(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    batch = tokenizer(
        record["texts"], padding=True, truncation=True, max_length=record["max_length"], return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, record["logits"], atol=1e-5, rtol=0, msg=lambda m: f"{method}: {m}")
