"""An edge owns its port: gRPC's default SO_REUSEPORT would let a second edge bind it too, and the
kernel would then hand some of the first edge's devices to the second (a flaky TLS failure in the
suite, where two workers' edges landed on one port)."""

from __future__ import annotations

import pytest

from edge_server.server import EdgeConfig, EdgeServer
from splitft.errors import InvalidArgument


def test_a_second_edge_cannot_bind_the_port_an_edge_serves_on(edge: EdgeServer, tiny_models) -> None:
    port = int(edge.address.rsplit(":", 1)[1])
    config = EdgeConfig(model_dirs=[f"llama={tiny_models['llama'].path}"], port=port, insecure=True)
    with pytest.raises(InvalidArgument, match=f"cannot bind 127.0.0.1:{port}"):
        EdgeServer(config)
