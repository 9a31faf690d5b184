"""A split "auto" job end to end (real processes: control plane, an edge, two device agents): the
operator registers the model's plan and gives two devices different classes; each device is placed
on its class's front point, trains with that split, rank, codec and precision, and the job shows
the points. The plan's figures are inputs here (tests/support/plans.py); `splitft plan run`, which
measures them, is tested in tests/e2e/test_plan_e2e.py."""

from __future__ import annotations

import json

import pytest

from splitft.data.stdlib_task import build_stdlib_task
from splitft.local.loop import LocalLoop, write_jsonl
from tests.support.agent_support import make_bert_with_tokenizer
from tests.support.plans import MIB, plan_file

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MODEL = "bert"  # the tiny BERT (4 blocks) with a tokenizer: both points' splits leave a trunk
CLASSES = {
    # enough memory, fast link: the most accurate point (k=2, j=1, r=8, raw, fp32)
    "phone-fast": {"memory_bytes": 1024 * MIB, "uplink_mbps": 1000.0, "downlink_mbps": 1000.0},
    # 128 MiB: only the small point fits (k=1, j=0, r=4, raw, int8 weights)
    "watch-tiny": {"memory_bytes": 128 * MIB, "uplink_mbps": 1000.0, "downlink_mbps": 1000.0},
}
EXPECTED = {"phone-fast": "k2j1-r8-raw/raw-fp32", "watch-tiny": "k1j0-r4-raw/raw-int8"}


def test_auto_job_places_two_device_classes_on_different_front_points(
    tmp_path, tiny_models, tmp_path_factory
) -> None:
    task = build_stdlib_task(max_per_class=8)
    model_arg = f"{MODEL}={make_bert_with_tokenizer(tiny_models, tmp_path_factory)}"
    with LocalLoop(tmp_path) as loop:
        loop.start_edge("edge-a", [model_arg])
        registered = loop.api("POST", "/v1/plans", json=plan_file(model=MODEL).model_dump(mode="json")).json()
        for i, name in enumerate(CLASSES):
            credential = loop.enroll_device(name)
            data = write_jsonl(task.train[i::2], tmp_path / f"{name}.jsonl")
            if name == "phone-fast":  # the operator gives this one its class
                device_id = {d["name"]: d["id"] for d in loop.api("GET", "/v1/devices").json()}[name]
                loop.api("PUT", f"/v1/devices/{device_id}/class", json=CLASSES[name])
                loop.start_agent(credential, data, model_arg)
            else:  # this one registers its own with its first poll (`device run --class-*`)
                cls = CLASSES[name]
                own = ["--class-memory", str(cls["memory_bytes"]), "--class-uplink-mbps", "1000"]
                own += ["--class-downlink-mbps", "1000"]
                loop.start_agent(credential, data, model_arg, extra_args=own)
        spec = {
            "name": "auto",
            "model": MODEL,
            "split": "auto",
            "lora": {"r": 2, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
            "steps": 2,
            "batch_size": 4,
            "max_length": 32,
            "num_labels": len(task.labels),
            "devices": list(CLASSES),
        }
        job = loop.wait_job(loop.create_job(spec)["id"], timeout=300)
        assert job["state"] == "succeeded", job
        points = {s["device"]: s["plan_point"] for s in job["sessions"]}
        assert {d: p["name"] for d, p in points.items()} == EXPECTED
        assert all(p["plan_id"] == registered["id"] for p in points.values())
        assert points["watch-tiny"]["device_class"]["memory_bytes"] == 128 * MIB
        for device, rank in (("phone-fast", 8), ("watch-tiny", 4)):  # each trained its point's rank
            archive = loop.download_adapter(job["id"], device, tmp_path / "dl" / device)
            assert json.loads((archive / "adapter_config.json").read_text())["r"] == rank
