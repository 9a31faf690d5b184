"""splitft device SDK: run the embeddings, first blocks and head on the device, the trunk on an edge.

from device_client import EdgeConnection, SplitModel
"""

from device_client.agent import DeviceAgent, run_device
from device_client.connection import EdgeConnection
from device_client.credentials import DeviceCredential, enroll
from device_client.datasets import TextExample, load_jsonl
from device_client.model import SplitModel, SplitStats

__all__ = [
    "DeviceAgent",
    "DeviceCredential",
    "EdgeConnection",
    "SplitModel",
    "SplitStats",
    "TextExample",
    "enroll",
    "load_jsonl",
    "run_device",
]
