"""splitft device SDK: run the embeddings, first blocks and head on the device, the trunk on an edge.

from device_client import EdgeConnection, SplitModel, SplitTrainer

The device agent (`device_client.agent`: enrollment, polling the control plane, training sessions)
is an application of this SDK; its entry points are re-exported here lazily, so importing the SDK
does not load the agent.
"""

from __future__ import annotations

from typing import Any

from device_client.connection import EdgeConnection
from device_client.model import SplitModel, SplitStats
from device_client.offsite import OffsiteModel
from device_client.retry import RetryPolicy

_AGENT_EXPORTS = ("DeviceAgent", "DeviceCredential", "TextExample", "enroll", "load_jsonl", "run_device")

__all__ = [
    "EdgeConnection",
    "OffsiteModel",
    "RetryPolicy",
    "SplitModel",
    "SplitStats",
    "SplitTrainer",
    *_AGENT_EXPORTS,
]


def __getattr__(name: str) -> Any:
    """`from device_client import DeviceAgent` (and the other agent entry points) still works."""
    if name == "SplitTrainer":  # imports transformers' Trainer (slow): only when asked for
        from device_client.trainer import SplitTrainer

        return SplitTrainer
    if name in _AGENT_EXPORTS:
        import device_client.agent as agent

        return getattr(agent, name)
    raise AttributeError(f"module 'device_client' has no attribute {name!r}")
