"""A job's randomness: one seed for the job, one stream per device (and round).

Two rules, the same for independent and federated jobs, so that a federated job of one device and
one round trains exactly what the independent job of the same seed trains:

* **The common initialisation** (the trunk adapter's, the device LoRA's, a new head's) is drawn from
  the JOB seed: `spec.seed`, or when absent one derived from the job id. Every device of a job starts
  from the same adapter, which is what a federated round 0 needs.
* **Each device's own stream** (its data order, its dropout masks) is drawn from
  (job seed, device name, round): devices of one job see different batches, a device sees a fresh
  order every round, and a rerun of the same job on the same data trains identically. An independent
  job is round 0.

The device is named by its name in the job's `devices`, not by its control-plane id, so the same
spec with the same seed reproduces on another control plane. Seeds are SHA-256 based (not Python's
salted `hash`), 62 bits, stable across platforms and runs.
"""

from __future__ import annotations

import hashlib

SEED_BITS = 62  # what torch.manual_seed and every consumer take without overflow


def derive_seed(*parts: str | int) -> int:
    """A 62-bit seed fixed by `parts` (their text, in order)."""
    text = "splitft-seed:" + ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> (64 - SEED_BITS)


def job_seed(seed: int | None, job_id: str) -> int:
    """The job's seed: the spec's `seed` when given, else one derived from the job id."""
    return int(seed) if seed is not None else derive_seed("job", job_id)


def device_seed(job: int, device: str, round_number: int | None) -> int:
    """A device's own stream in a job (data order, dropout): independent jobs are round 0."""
    return derive_seed("device", job, device, round_number or 0)
