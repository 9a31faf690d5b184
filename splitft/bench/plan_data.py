"""The planner's quality data: the user's labelled JSONL (`--data`), or the demo task by default.

Every candidate trains on the same training examples in the same order and is scored on the same
held-out examples, written once to a JSON file its worker reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitft.errors import InvalidArgument

if TYPE_CHECKING:
    from splitft.bench.plan import PlanConfig

HELDOUT_FRACTION = 0.2


def plan_data(config: PlanConfig, path: Path) -> dict[str, Any]:
    """Write {"train": [[text, label]...], "heldout": [...]} to `path`; what it holds, for the report."""
    if config.data is not None:
        from device_client.agent.datasets import load_jsonl

        examples = [(e.text, e.label) for e in load_jsonl(config.data)]
        random.Random(config.seed).shuffle(examples)
        cut = max(1, round(len(examples) * HELDOUT_FRACTION))
        if len(examples) - cut < 1:
            raise InvalidArgument(f"--data {config.data}: needs at least 2 examples (train and held out)")
        heldout, train, source = examples[:cut], examples[cut:], str(config.data)
    else:
        from splitft.data.stdlib_task import build_stdlib_task

        task = build_stdlib_task()
        train = [(e.text, e.label) for e in task.train]
        heldout = [(e.text, e.label) for e in task.heldout]
        source = "demo task (stdlib docstrings)"
    heldout = heldout[: config.eval_examples]
    num_labels = max(label for _, label in train + heldout) + 1
    path.write_text(json.dumps({"train": train, "heldout": heldout}))
    return {"source": source, "train": len(train), "heldout": len(heldout), "num_labels": max(2, num_labels)}
