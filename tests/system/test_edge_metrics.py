"""The edge's Prometheus endpoint: a real edge in-process, a real split training step, a real scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from splitft.cli import main
from splitft.errors import InvalidArgument
from splitft.local.launch import LocalPki
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch

FAMILY = "bert"


def scrape(server: EdgeServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    response = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metered_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    config = EdgeConfig(
        model_dirs=[f"{FAMILY}={tiny_models[FAMILY].path}"], port=0, insecure=True, metrics_port=0
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def train_step(conn: EdgeConnection, tiny: TinyModel, codec: str) -> SplitModel:
    """One training step over the edge; returns the model, its session still open."""
    model = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=FAMILY,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(FAMILY),
        codec=codec,
    )
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    model.train()
    model(**make_batch(FAMILY, torch.Generator().manual_seed(0))).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return model


def adapter_series(samples: dict) -> list[dict[str, str]]:
    return [dict(labels) for name, labels in samples if name == "splitft_edge_adapter_parameter_bytes"]


def test_a_training_step_moves_every_series(metered_edge: EdgeServer, tiny_models: dict[str, TinyModel]):
    before = scrape(metered_edge)
    assert value(before, "splitft_edge_active_sessions") == 0
    trunk = value(before, "splitft_edge_trunk_parameter_bytes", model=FAMILY)
    params = metered_edge.registry.get(FAMILY).span.root.parameters()
    assert trunk == sum(p.numel() * p.element_size() for p in params) > 0
    assert value(before, "splitft_edge_memory_limit_bytes") == metered_edge.memory.limit > 0
    assert value(before, "splitft_edge_memory_used_bytes") == 0

    with EdgeConnection(metered_edge.address, insecure=True) as conn:
        model = train_step(conn, tiny_models[FAMILY], codec="fp16")
        during = scrape(metered_edge)
        (series,) = adapter_series(during)
        trainable = metered_edge.sessions.get(model.session_id).trainable_parameters
        text = httpx.get(f"http://127.0.0.1:{metered_edge.metrics_port}/metrics", timeout=10).text
        assert model.session_id not in text  # session ids never leak on the metrics port
        model.close()
    assert value(during, "splitft_edge_active_sessions") == 1
    # The adapter with its gradients and AdamW's two moments, and one batch's kept graphs reserved.
    assert value(during, "splitft_edge_memory_used_bytes") > 4 * trainable * 4
    assert series["model"] == FAMILY
    assert set(series) == {"model"}  # no session ids on the unauthenticated metrics port
    adapter = value(during, "splitft_edge_adapter_parameter_bytes", **series)
    assert adapter == trainable * 4 > 0  # fp32 LoRA weights
    for phase in ("forward", "backward", "optimizer"):
        assert value(during, "splitft_edge_step_seconds_count", phase=phase, model=FAMILY) == 1
        assert value(during, "splitft_edge_step_seconds_sum", phase=phase, model=FAMILY) > 0
    # A forward sends h_k up and brings h_{L-j} down; a backward the two gradients: both ways, in fp16.
    assert value(during, "splitft_edge_received_bytes_total", codec="fp16") > 0
    assert value(during, "splitft_edge_sent_bytes_total", codec="fp16") > 0

    after = scrape(metered_edge)
    assert value(after, "splitft_edge_active_sessions") == 0
    assert value(after, "splitft_edge_memory_used_bytes") == 0
    assert adapter_series(after) == []
    assert value(after, "splitft_edge_step_seconds_count", phase="forward", model=FAMILY) == 1
    # A session alone never waits for or shares a pass (batching is on by default).
    assert value(after, "splitft_edge_trunk_forwards_total", shared="no") == 1
    assert value(after, "splitft_edge_trunk_forwards_total", shared="yes") == 0
    assert value(after, "splitft_edge_shared_passes_total") == 0


def test_bytes_are_counted_per_codec(metered_edge: EdgeServer, tiny_models: dict[str, TinyModel]):
    before = scrape(metered_edge)
    with EdgeConnection(metered_edge.address, insecure=True) as conn:
        train_step(conn, tiny_models[FAMILY], codec="raw").close()
    after = scrape(metered_edge)
    raw_in = value(after, "splitft_edge_received_bytes_total", codec="raw")
    raw_in -= value(before, "splitft_edge_received_bytes_total", codec="raw")
    fp16_in = value(after, "splitft_edge_received_bytes_total", codec="fp16")
    fp16_in -= value(before, "splitft_edge_received_bytes_total", codec="fp16")
    assert raw_in > 0 and fp16_in == 0
    assert value(after, "splitft_edge_step_seconds_count", phase="forward", model=FAMILY) >= 1


def test_metrics_are_off_by_default_and_the_port_is_checked(tiny_models: dict[str, TinyModel]):
    config = EdgeConfig(model_dirs=[f"{FAMILY}={tiny_models[FAMILY].path}"], port=0, insecure=True)
    server = EdgeServer(config).start()
    try:
        assert server.metrics_port is None
    finally:
        server.stop(grace=0)
    with pytest.raises(InvalidArgument, match="metrics port"):
        EdgeConfig(model_dirs=["x"], insecure=True, metrics_port=70000)


def test_an_expired_session_drops_out(tiny_models: dict[str, TinyModel]):
    config = EdgeConfig(
        model_dirs=[f"{FAMILY}={tiny_models[FAMILY].path}"],
        port=0,
        insecure=True,
        metrics_port=0,
        session_ttl=0.3,
    )
    server = EdgeServer(config).start()  # the reaper runs every 75 ms, for a 0.3 s TTL
    server.sessions.ttl_seconds = 3600.0  # no expiry while the step runs, however slow the machine
    try:
        with EdgeConnection(server.address, insecure=True) as conn:
            train_step(conn, tiny_models[FAMILY], codec="raw")  # never closed: the TTL reaps it
            assert len(adapter_series(scrape(server))) == 1
            server.sessions.ttl_seconds = 0.3
            deadline = time.monotonic() + 10
            while value(scrape(server), "splitft_edge_active_sessions") and time.monotonic() < deadline:
                time.sleep(0.1)
            samples = scrape(server)
        assert value(samples, "splitft_edge_active_sessions") == 0
        assert adapter_series(samples) == []
    finally:
        server.stop(grace=0)


def test_health_command_over_mutual_tls_and_plaintext(tmp_path: Path, tiny_models: dict[str, TinyModel]):
    """`splitft edge health` is the container and Kubernetes probe: a device-like mTLS client."""
    pki = LocalPki.create(tmp_path / "certs", device="healthcheck")
    model = f"{FAMILY}={tiny_models[FAMILY].path}"
    config = EdgeConfig(model_dirs=[model], port=0, certs_dir=str(pki.directory), no_tokens=True)
    server = EdgeServer(config).start()
    try:
        assert main(["edge", "health", "--address", server.address, "--certs", str(pki.directory)]) == 0
        assert main(["edge", "health", "--address", server.address, "--insecure", "--timeout", "1"]) == 1
        assert main(["edge", "health", "--address", server.address]) == 2  # neither --certs nor --insecure
    finally:
        server.stop(grace=0)
    assert main(["edge", "health", "--address", server.address, "--insecure", "--timeout", "1"]) == 1


def test_codec_labels_drop_parameters_so_peers_cannot_grow_the_label_set() -> None:
    from edge_server.session_wire import SessionWire
    from splitft.compress import parse_codecs

    def codec_label(codec: str) -> str:  # what the servicer labels a session's bytes with
        return SessionWire.open(parse_codecs(codec), seed=0).label

    assert codec_label("int8:sr") == "int8"
    labels = {codec_label(f"activations=int4,gradients=topk:0.0{i}") for i in range(1, 10)}
    assert labels == {"activations=int4,gradients=topk"}
    assert codec_label("activations=fp16,gradients=lowrank:7:noef") == "activations=fp16,gradients=lowrank"
