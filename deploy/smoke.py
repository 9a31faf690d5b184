"""The device side of `make docker-smoke`, run on the host against the compose stack.

An operator creates a device and a job over REST; the device enrolls (CSR -> client certificate from
the deployment CA in the certs volume) and trains its session against the edge container over mutual
TLS with a token from the control plane; the operator downloads the adapter over REST, and it must
load with plain peft and classify the held-out set. Prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import io
import json
import ssl
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx

DEVICE = "smoke-device"
MODEL = "minilm"
FINAL = ("succeeded", "failed", "cancelled")


def job_spec(num_labels: int, epochs: int) -> dict:
    return {
        "name": "docker-smoke",
        "model": MODEL,
        "device_layers": 2,
        "head_layers": 1,
        "codec": "fp16",
        "trunk_lora": True,
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "optimizer": {"name": "AdamW", "lr": 2e-3, "weight_decay": 0.01},
        "epochs": epochs,
        "batch_size": 16,
        "max_length": 64,
        "num_labels": num_labels,
        "devices": [DEVICE],
    }


def splitft(*args: str, timeout: float) -> None:
    """Run the `splitft` command of this Python, as a device would."""
    subprocess.run([sys.executable, "-m", "splitft.cli", *args], check=True, timeout=timeout)


def wait_job(api: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["state"] in FINAL:
            return job
        time.sleep(1)
    raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s")


def heldout_accuracy(model_dir: Path, adapter: Path, task) -> float:
    """The downloaded adapter, loaded with plain peft on the base model, on the held-out set."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    base = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=len(task.labels))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    texts = [e.text for e in task.heldout]
    with torch.no_grad():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1)
    return float((predicted == torch.tensor([e.label for e in task.heldout])).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control-plane", required=True, metavar="URL")
    parser.add_argument("--ca", required=True, type=Path, help="the deployment CA (verifies HTTPS)")
    parser.add_argument("--operator-key", required=True)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-per-class", type=int, default=40)
    args = parser.parse_args()

    from splitft.data.stdlib_task import build_stdlib_task
    from splitft.local.loop import write_jsonl

    started = time.perf_counter()
    task = build_stdlib_task(max_per_class=args.max_per_class)
    data = write_jsonl(task.train, args.out / "train.jsonl")
    headers = {"Authorization": f"Bearer {args.operator_key}"}
    verify = ssl.create_default_context(cafile=str(args.ca))
    with httpx.Client(base_url=args.control_plane, headers=headers, timeout=30, verify=verify) as api:
        token = api.post("/v1/devices", json={"name": DEVICE}).raise_for_status().json()["enrollment_token"]
        credential = args.out / f"{DEVICE}.json"
        splitft("device", "enroll", "--control-plane", args.control_plane, "--token", token,
                "--out", str(credential), timeout=60)  # fmt: skip
        job = api.post("/v1/jobs", json=job_spec(len(task.labels), args.epochs)).raise_for_status().json()
        splitft("device", "run", "--credential", str(credential), "--data", str(data),
                "--model-dir", f"{MODEL}={args.model_dir}", "--max-sessions", "1",
                "--poll-interval", "1", timeout=900)  # fmt: skip
        job = wait_job(api, job["id"], timeout=60)
        if job["state"] != "succeeded":
            raise SystemExit(f"job {job['id']} ended {job['state']}: {job.get('reason')}")
        archive = api.get(f"/v1/jobs/{job['id']}/adapters/{DEVICE}").raise_for_status().content
        points = api.get(f"/v1/jobs/{job['id']}/metrics").raise_for_status().json()["sessions"][0]["points"]
    adapter = args.out / "adapter"
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(adapter, filter="data")
    files = sorted(p.name for p in adapter.iterdir())
    summary = {
        "job": job["id"],
        "state": job["state"],
        "train_examples": len(task.train),
        "steps": points[-1]["step"],
        "first_loss": round(points[0]["loss"], 4),
        "last_loss": round(points[-1]["loss"], 4),
        "adapter_bytes": len(archive),
        "adapter_files": files,
        "heldout_accuracy": round(heldout_accuracy(args.model_dir, adapter, task), 4),
        "chance": round(1 / len(task.labels), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))  # noqa: T201 - the smoke test's report
    return 0 if "adapter_model.safetensors" in files else 1


if __name__ == "__main__":
    sys.exit(main())
