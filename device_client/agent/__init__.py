"""The device agent, an application of the SDK: enroll once, then poll, train and report sessions.

`loop.py` (DeviceAgent, run_device) polls and reports; `trainer.py` trains one session end to end;
`assignment.py` reads what the control plane assigns; `control_client.py` and `http.py` speak REST;
`credentials.py` enrolls and keeps the credential file; `datasets.py` loads the local data;
`archive.py` packs the adapter. The SDK modules of `device_client` never import this package.
"""

from device_client.agent.credentials import DeviceCredential, enroll
from device_client.agent.datasets import TextExample, load_jsonl
from device_client.agent.loop import AgentSummary, DeviceAgent, run_device
from device_client.agent.trainer import TrainingProgress

__all__ = [
    "AgentSummary",
    "DeviceAgent",
    "DeviceCredential",
    "TextExample",
    "TrainingProgress",
    "enroll",
    "load_jsonl",
    "run_device",
]
