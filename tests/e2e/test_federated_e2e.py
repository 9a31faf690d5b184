"""A federated job end to end with real processes: control plane, an edge and device agents on
loopback. Two devices with their own (non-overlapping) data train two rounds; round 1 starts both
from round 0's global adapter; the job's result, one peft adapter for the whole model, is the
example-weighted mean of the last round's uploads."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from splitft.data.stdlib_task import build_stdlib_task
from splitft.demo.sdk import default_model_dir
from splitft.federated.shared_trunk import read_trunk_marks
from splitft.local.loop import LocalLoop, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MODEL = "minilm"
WEIGHTS = "adapter_model.safetensors"


def _spec(devices: list[str], num_labels: int) -> dict:
    return {
        "name": "federated-e2e",
        "model": MODEL,
        "device_layers": 2,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "batch_size": 8,
        "max_length": 32,
        "num_labels": num_labels,
        "optimizer": {"name": "AdamW", "lr": 1e-3},
        "devices": devices,
        "mode": "federated",
        "federated": {"rounds": 2, "local_steps": 2, "min_devices": 2, "round_timeout_s": 600},
    }


def _wait_for_logs(paths: list[Path], text: str, timeout: float) -> None:
    """Until every log file holds `text`."""
    deadline = time.monotonic() + timeout
    while not all(p.is_file() and text in p.read_text(errors="replace") for p in paths):
        assert time.monotonic() < deadline, f"{text!r} not in every one of {paths} after {timeout:.0f} s"
        time.sleep(0.5)


def _unpack(data: bytes, dest) -> dict[str, torch.Tensor]:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return load_file(str(dest / WEIGHTS))


def test_federated_jobs_over_rest_average_their_devices_into_one_adapter(tmp_path) -> None:
    """Two federated jobs side by side on one edge and the same two devices (a session per round each):
    one with a trunk adapter per device, one with a shared trunk adapter (`_check_shared_trunk`)."""
    task = build_stdlib_task(max_per_class=12)
    model_arg = f"{MODEL}={default_model_dir()}"
    shards = {"phone-1": task.train[0::3], "phone-2": task.train[1::3]}  # two of three: unequal sizes
    shared = _spec(list(shards), len(task.labels))
    shared["federated"]["trunk_adapter"] = "shared"
    specs = {"own": _spec(list(shards), len(task.labels)), "shared": shared}
    with LocalLoop(tmp_path) as loop:
        loop.start_edge("edge-a", [model_arg])
        for name, examples in shards.items():
            data = write_jsonl(examples, tmp_path / f"{name}.jsonl")
            sessions = len(specs) * shared["federated"]["rounds"]  # the agent exits after that many
            loop.start_agent(loop.enroll_device(name), data, model_arg, max_sessions=sessions)
        job_ids = {kind: loop.create_job(spec)["id"] for kind, spec in specs.items()}
        results = {
            kind: _finished(loop, job_id, list(shards), tmp_path / kind) for kind, job_id in job_ids.items()
        }
    sizes = {name: len(examples) for name, examples in shards.items()}
    global_state, uploads, rounds = results["own"]
    assert [(r["number"], r["state"], r["participants"]) for r in rounds] == [
        (0, "aggregated", ["phone-1", "phone-2"]),
        (1, "aggregated", ["phone-1", "phone-2"]),
    ]
    assert rounds[1]["bytes_down"] > 0 and all(r["bytes_up"] > 0 for r in rounds)
    assert all(r["mean_loss"] is not None for r in rounds)
    assert any(".layer.3." in k for k in global_state)  # the trunk's adapter is averaged too
    for key, value in global_state.items():
        expected = sum(uploads[n][key].double() * sizes[n] / sum(sizes.values()) for n in shards).float()
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
    base = BertForSequenceClassification.from_pretrained(
        str(default_model_dir()), num_labels=len(task.labels)
    )
    PeftModel.from_pretrained(base, str(tmp_path / "own" / "global"))  # one standard peft adapter
    _check_shared_trunk(job_ids["shared"], results["shared"], sizes, shared, tmp_path / "shared")


def _finished(loop: LocalLoop, job_id: str, devices: list[str], dest: Path) -> tuple[dict, dict, list]:
    """A succeeded job's global adapter, each device's upload (as tensors) and its rounds."""
    job = loop.wait_job(job_id, timeout=480)  # two jobs' rounds, in turn on each agent
    assert job["state"] == "succeeded", job
    rounds = loop.api("GET", f"/v1/jobs/{job_id}/rounds").json()
    global_state = _unpack(loop.api("GET", f"/v1/jobs/{job_id}/adapter").content, dest / "global")
    uploads = {
        name: _unpack(loop.api("GET", f"/v1/jobs/{job_id}/adapters/{name}").content, dest / name)
        for name in devices
    }
    return global_state, uploads, rounds


def test_a_device_killed_mid_round_misses_it_and_the_job_goes_on(tmp_path) -> None:
    task = build_stdlib_task(max_per_class=12)
    model_arg = f"{MODEL}={default_model_dir()}"
    names = ["phone-1", "phone-2", "phone-3"]
    spec = _spec(names, len(task.labels))
    # The deadline runs from the round's start: agents are up (their data loaded) before the job is
    # made, so it measures training, not how long a loaded machine takes to import torch.
    spec["federated"].update(rounds=1, min_devices=2, round_timeout_s=60, local_steps=2)
    with LocalLoop(tmp_path) as loop:
        loop.start_edge("edge-a", [model_arg])
        agents = {}
        for i, name in enumerate(names):
            data = write_jsonl(task.train[i::3], tmp_path / f"{name}.jsonl")
            agents[name] = loop.start_agent(loop.enroll_device(name), data, model_arg)
        _wait_for_logs([loop.root / f"agent-{name}.log" for name in names], "loaded", timeout=180)
        job = loop.create_job(spec)

        def phone_3_running(current: dict) -> bool:
            return any(s["device"] == "phone-3" and s["state"] == "running" for s in current["sessions"])

        loop.wait_job(job["id"], timeout=55, until=phone_3_running)
        agents["phone-3"].kill()  # SIGKILL mid-round: it never uploads nor reports
        job = loop.wait_job(job["id"], timeout=240)
        assert job["state"] == "succeeded", job
        (round0,) = loop.api("GET", f"/v1/jobs/{job['id']}/rounds").json()
    assert round0["participants"] == ["phone-1", "phone-2"] and round0["missed"] == ["phone-3"]
    dead = next(s for s in job["sessions"] if s["device"] == "phone-3")
    assert dead["state"] == "failed" and "missed the deadline of round 0" in dead["reason"]


def _check_shared_trunk(job_id: str, result: tuple, sizes: dict[str, int], spec: dict, dest: Path) -> None:
    """trunk_adapter "shared": both devices' sessions of a round step ONE trunk adapter on the edge;
    each upload is marked with the steps its trunk export held, the latest holds every step of the
    round, and the global adapter is the device parts averaged with that trunk."""
    global_state, uploads, rounds = result
    assert [(r["number"], r["participants"]) for r in rounds] == [(n, list(sizes)) for n in (0, 1)]
    marks = {name: read_trunk_marks(dest / name / WEIGHTS) for name in sizes}
    assert all(m is not None and m.adapter == f"{job_id}/r1" for m in marks.values()), marks
    latest = max(sizes, key=lambda n: marks[n].steps)  # type: ignore[union-attr]
    trunk = marks[latest].keys  # type: ignore[union-attr]
    assert marks[latest].steps == 2 * spec["federated"]["local_steps"]  # type: ignore[union-attr]  # both devices'
    assert {int(k.split(".layer.")[1].split(".")[0]) for k in trunk} == {2, 3, 4}  # MiniLM's trunk blocks
    for key, value in global_state.items():
        if key in trunk:  # the shared adapter, as its latest export held it
            assert torch.equal(value, uploads[latest][key]), key
        else:
            expected = sum(uploads[n][key].double() * sizes[n] / sum(sizes.values()) for n in sizes).float()
            torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
