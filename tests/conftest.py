from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from device_client import EdgeConnection
from edge_server import EdgeConfig, EdgeServer
from splitft.testing.tiny import FAMILY_NAMES, TinyModel, save_tiny_model

torch.set_num_threads(1)  # equal-results tests compare runs; keep them on one deterministic thread
logging.getLogger("edge_server").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("models")
    return {family: save_tiny_model(family, root / family) for family in FAMILY_NAMES}


@pytest.fixture(scope="session")
def edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    """One real gRPC edge on a loopback port, serving every tiny family."""
    config = EdgeConfig(model_dirs=[f"{f}={m.path}" for f, m in tiny_models.items()], port=0, insecure=True)
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


@pytest.fixture
def conn(edge: EdgeServer) -> Iterator[EdgeConnection]:
    with EdgeConnection(edge.address, insecure=True) as connection:
        yield connection


def model_path(tiny_models: dict[str, TinyModel], family: str) -> Path:
    return tiny_models[family].path
