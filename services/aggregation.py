"""A federated round's uploads -> its global adapter, in the control plane (numpy, no torch).

Each upload is the .tar.gz a device sent to /complete (validated there: a peft adapter's two files
and nothing else); they are unpacked to a scratch directory and aggregated by
`splitft.federated.aggregate_adapter_files`, weighted by each device's example count, FedAvg or
AirComp as the job says; the result is packed the same way, byte-identical for identical files.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from splitft.federated import Channel, aggregate_adapter_files
from splitft.federated.server import ServerOptimizer, server_step
from splitft.jobs.spec import FederatedSpec
from splitft.targz import pack_files

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def aggregate_archives(
    archives: list[bytes],
    weights: list[int],
    spec: FederatedSpec,
    seed: int,
    reference: bytes | None = None,
    before: bytes | None = None,
) -> tuple[bytes, float | None]:
    """The global adapter archive of a round and, for AirComp, its relative error against FedAvg.

    ``reference``: the archive the round started from (the previous round's global adapter, or the
    `initial_adapter` job's); with AirComp the devices' UPDATES (upload - reference) go over the air,
    so the noise scales with the updates, not the weights. None (round 0 from a fresh adapter, which
    the control plane never sees): the whole adapters go over the air, and the server takes no step.
    ``before``: the archive the round before started from (FedAvgM's momentum; None: none carried)."""
    with tempfile.TemporaryDirectory(prefix="splitft-round-") as tmp:
        root = Path(tmp)
        paths = [_unpack(archive, root / f"upload-{i}") for i, archive in enumerate(archives)]
        start = _unpack(reference, root / "reference") if reference is not None else None
        earlier = _unpack(before, root / "before") if before is not None else None
        channel = (
            Channel(snr_db=spec.snr_db, fading=spec.fading, truncation=spec.truncation)
            if spec.aggregation == "aircomp"
            else None
        )
        result = aggregate_adapter_files(
            paths,
            [float(w) for w in weights],
            root / "global",
            method=spec.aggregation,
            channel=channel,
            seed=seed,
            trunk=spec.trunk_adapter,  # shared: the device parts averaged, the edge's latest trunk export
            reference=start,
            server=ServerOptimizer(spec.server_lr, spec.server_momentum),
            before_reference=earlier,
        )
        error = result.relative_error if spec.aggregation == "aircomp" else None
        return pack_adapter_files(result.out_path), error


def server_stepped(
    archive: bytes, spec: FederatedSpec, reference: bytes | None, before: bytes | None
) -> bytes:
    """A round's aggregate archive after the server's step (FedAvgM, `splitft.federated.server`), for
    the aggregates made elsewhere (a secure round's unmasked sum); unchanged for plain FedAvg."""
    optimizer = ServerOptimizer(spec.server_lr, spec.server_momentum)
    if optimizer.is_plain_fedavg or reference is None:
        return archive
    with tempfile.TemporaryDirectory(prefix="splitft-server-step-") as tmp:
        root = Path(tmp)
        aggregate, start = _weights(archive, root / "aggregate"), _weights(reference, root / "reference")
        earlier = _weights(before, root / "before") if before is not None else None
        stepped = server_step(aggregate, start, optimizer, before_previous=earlier)
        out = root / "aggregate"
        save_file(dict(stepped), str(out / ADAPTER_FILES[1]), metadata={"format": "pt"})  # as peft writes
        return pack_adapter_files(out)


def _weights(archive: bytes, directory: Path) -> dict[str, Any]:
    """An adapter archive's tensors (NumPy), unpacked into `directory`."""
    return load_file(str(_unpack(archive, directory) / ADAPTER_FILES[1]))


def _unpack(archive: bytes, directory: Path) -> Path:
    """The upload's adapter files (already checked at upload: exactly these names, plain files)."""
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(
            directory, members=[m for m in tar.getmembers() if m.name in ADAPTER_FILES], filter="data"
        )
    return directory


def pack_adapter_files(directory: Path) -> bytes:
    """A peft adapter directory's two files as a reproducible .tar.gz (what devices upload)."""
    return pack_files((name, (directory / name).read_bytes()) for name in ADAPTER_FILES)
