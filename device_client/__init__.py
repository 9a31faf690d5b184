"""splitft device SDK: run the embeddings, first blocks and head on the device, the trunk on an edge.

from device_client import EdgeConnection, SplitModel
"""

from device_client.connection import EdgeConnection
from device_client.model import SplitModel, SplitStats

__all__ = ["EdgeConnection", "SplitModel", "SplitStats"]
