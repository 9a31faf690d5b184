"""splitft edge server: holds the frozen trunk of Hugging Face models and serves many sessions."""

from edge_server.server import EdgeConfig, EdgeServer

__all__ = ["EdgeConfig", "EdgeServer"]
