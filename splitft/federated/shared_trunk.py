"""The global adapter of a round whose trunk adapter was shared (`trunk_adapter: "shared"`).

Every session of such a round stepped ONE trunk adapter on the edge, so there is nothing to average
on the trunk: the round's trunk is that adapter as it stood after the round's last step. Each device
uploads its whole adapter as usual, its trunk part being the shared adapter as the device exported
it, and marks the file (safetensors metadata, `trunk_marks`) with the trunk's keys and the steps
the export included (every session's). The aggregate takes the device parts (device blocks and
head) averaged as ever, FedAvg or AirComp, and the trunk part of the upload whose export included
the most steps: the latest export, which holds every step of the round's sessions that had
finished by then, and so every step when it came from the last session to finish.

NumPy and safetensors only, like the rest of `splitft.federated`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from splitft.errors import InvalidArgument
from splitft.federated.checks import StateDict

logger = logging.getLogger(__name__)

MODE_KEY = "splitft.trunk_adapter"  # "shared"
TRUNK_KEYS_KEY = "splitft.trunk_keys"  # JSON list of the trunk's tensor names
STEPS_KEY = "splitft.trunk_adapter_steps"  # the shared adapter's steps when it was exported
ADAPTER_KEY = "splitft.shared_adapter"  # the adapter's key on the edge, for the record


@dataclass(frozen=True)
class TrunkMarks:
    """What a device's upload says about its shared trunk part."""

    keys: frozenset[str]
    steps: int
    adapter: str = ""


def trunk_marks(trunk_keys: Sequence[str], steps: int, adapter: str) -> dict[str, str]:
    """The safetensors metadata that marks an adapter's trunk part as a shared adapter's export."""
    return {
        MODE_KEY: "shared",
        TRUNK_KEYS_KEY: json.dumps(sorted(trunk_keys)),
        STEPS_KEY: str(int(steps)),
        ADAPTER_KEY: adapter,
    }


def read_trunk_marks(weights: str | Path) -> TrunkMarks | None:
    """The marks of an adapter weights file; None when it carries none (or malformed ones)."""
    try:
        with safe_open(str(weights), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise InvalidArgument(f"{weights} cannot be read with safetensors: {exc}") from None
    if metadata.get(MODE_KEY) != "shared":
        return None
    try:
        keys = json.loads(metadata.get(TRUNK_KEYS_KEY, ""))
        steps = int(metadata.get(STEPS_KEY, ""))
    except ValueError:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or steps < 0:
        return None
    return TrunkMarks(frozenset(keys), steps, metadata.get(ADAPTER_KEY, ""))


def latest_trunk(marks: Sequence[TrunkMarks | None]) -> int | None:
    """The index of the upload whose trunk export included the most steps (the first among equals),
    or None when no upload is marked."""
    marked = [(m.steps, -i) for i, m in enumerate(marks) if m is not None]
    return -max(marked)[1] if marked else None


def split_shared(
    states: list[StateDict], marks: Sequence[TrunkMarks | None]
) -> tuple[list[StateDict], StateDict]:
    """(each upload's device part, the latest upload's trunk part). InvalidArgument when the
    marked uploads disagree on the trunk's keys or an upload lacks one; the unmarked ones (a device
    that did not join the shared adapter) lose their trunk keys to the latest's."""
    chosen = latest_trunk(marks)
    if chosen is None:
        raise InvalidArgument("no upload is marked as holding the shared trunk adapter's export")
    latest = marks[chosen]
    assert latest is not None
    for index, mark in enumerate(marks):
        if mark is not None and mark.keys != latest.keys:
            raise InvalidArgument(
                f"uploads {index} and {chosen} disagree on the shared trunk adapter's keys "
                f"({len(mark.keys)} and {len(latest.keys)} keys)"
            )
    missing = sorted(latest.keys - set(states[chosen]))
    if missing:
        raise InvalidArgument(f"upload {chosen} is marked with trunk keys it lacks: {missing[:3]}")
    devices = [{k: v for k, v in state.items() if k not in latest.keys} for state in states]
    logger.info("shared trunk: upload %d's export of %d steps", chosen, latest.steps)
    return devices, {k: states[chosen][k] for k in latest.keys}
