"""Mutual TLS and session tokens: who may connect, and what a token lets them do."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from device_client import EdgeConnection
from device_client.stream import SessionStream
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import PermissionDenied, Unauthenticated, Unavailable
from splitft.security.certs import CertPaths, init_ca, issue_device
from splitft.security.tokens import generate_issuer_key, issue_token, public_key_pem
from splitft.testing.tiny import make_batch
from splitft.v1 import dataplane_pb2 as pb
from tests.support.equivalence import run_equivalence
from tests.support.split import split_llama
from tests.system.test_equivalence import assert_equivalent

EDGE_ID = "edge-1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    paths = init_ca(root / "ca", ["127.0.0.1", "localhost"])
    for name in ("dev-a", "dev-b"):
        issue_device(paths.directory, name)
    other = init_ca(root / "other", ["127.0.0.1"])
    issue_device(other.directory, "dev-a")
    issuer = generate_issuer_key()
    (root / "issuer.pub").write_bytes(public_key_pem(issuer))
    return {"ca": paths, "other": other, "issuer": issuer, "issuer_pub": root / "issuer.pub"}


@pytest.fixture(scope="module")
def secure_edge(pki, tiny_models):
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}", f"bert={tiny_models['bert'].path}"],
        port=0,
        certs_dir=str(pki["ca"].directory),
        token_issuer_keys=[str(pki["issuer_pub"])],
        edge_id=EDGE_ID,
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def _connect(edge, paths: CertPaths, device: str, token: str | None = None, **kwargs) -> EdgeConnection:
    return EdgeConnection(
        edge.address,
        ca=paths.ca_cert,
        cert=paths.device_cert(device),
        key=paths.device_key(device),
        token=token,
        timeout=10,
        **kwargs,
    )


def _token(pki, session="s-1", device="dev-a", model="llama", **kwargs) -> str:
    return issue_token(pki["issuer"], session=session, device=device, model=model, edge=EDGE_ID, **kwargs)


def _open(conn: EdgeConnection, session_id: str, model: str = "llama"):
    return conn.call(
        "OpenSession",
        pb.OpenSessionRequest(
            model=model, device_layers=1, head_layers=1, codec="raw", session_id=session_id
        ),
    )


# --- transport: who may connect -------------------------------------------------------------------


def test_plaintext_client_is_refused(secure_edge):
    with EdgeConnection(secure_edge.address, insecure=True, timeout=5) as conn, pytest.raises(Unavailable):
        conn.list_models()


def test_client_without_certificate_is_refused(secure_edge, pki):
    with EdgeConnection(secure_edge.address, ca=pki["ca"].ca_cert, timeout=5) as conn:
        with pytest.raises(Unavailable):
            conn.list_models()


def test_client_certificate_from_another_ca_is_refused(secure_edge, pki):
    other: CertPaths = pki["other"]
    with EdgeConnection(
        secure_edge.address,
        ca=pki["ca"].ca_cert,
        cert=other.device_cert("dev-a"),
        key=other.device_key("dev-a"),
        timeout=5,
    ) as conn:
        with pytest.raises(Unavailable):
            conn.list_models()


def test_wrong_server_name_is_refused_by_the_client(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki), server_name="wrong.example") as conn:
        with pytest.raises(Unavailable):
            conn.list_models()


def test_edge_refuses_to_start_without_tls_or_insecure(tiny_models):
    with pytest.raises(ValueError, match="--insecure"):
        EdgeConfig(model_dirs=[str(tiny_models["llama"].path)], port=0)


# --- tokens: what a connection may do --------------------------------------------------------------


def test_valid_token_lists_models(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki)) as conn:
        assert {m.name for m in conn.list_models()} == {"llama", "bert"}


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda pki: None, id="missing"),
        pytest.param(lambda pki: "not-a-token", id="malformed"),
        pytest.param(lambda pki: "a.b", id="malformed-parts"),
        pytest.param(
            lambda pki: issue_token(generate_issuer_key(), session="s-1", device="dev-a", model="llama"),
            id="forged",
        ),
        pytest.param(lambda pki: _token(pki, ttl_seconds=60, now=time.time() - 3600), id="expired"),
        pytest.param(lambda pki: _token(pki)[:-6] + "AAAAAA", id="tampered-signature"),
    ],
)
def test_bad_tokens_are_unauthenticated(secure_edge, pki, make_token):
    with _connect(secure_edge, pki["ca"], "dev-a", make_token(pki)) as conn:
        with pytest.raises(Unauthenticated):
            conn.list_models()
        with pytest.raises(Unauthenticated):
            _open(conn, "s-1")


def test_token_never_opens_another_session(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-mine")) as conn:
        with pytest.raises(PermissionDenied, match="another session"):
            _open(conn, "s-other")


def test_token_for_another_model_is_denied(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-m", model="bert")) as conn:
        with pytest.raises(PermissionDenied, match="model"):
            _open(conn, "s-m", model="llama")


def test_token_for_another_edge_is_denied(secure_edge, pki):
    token = issue_token(pki["issuer"], session="s-e", device="dev-a", model="llama", edge="edge-2")
    with _connect(secure_edge, pki["ca"], "dev-a", token) as conn:
        with pytest.raises(PermissionDenied, match="edge"):
            _open(conn, "s-e")


def test_token_device_must_match_client_certificate(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-d", device="dev-b")) as conn:
        with pytest.raises(PermissionDenied, match="client certificate"):
            conn.list_models()


def test_token_cannot_touch_another_devices_session(secure_edge, pki):
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-owner")) as owner:
        _open(owner, "s-owner")
        with _connect(
            secure_edge, pki["ca"], "dev-b", _token(pki, session="s-intruder", device="dev-b")
        ) as intruder:
            for method, request in [
                ("Step", pb.StepRequest(session_id="s-owner")),
                ("GradNorm", pb.GradNormRequest(session_id="s-owner")),
                ("CloseSession", pb.CloseSessionRequest(session_id="s-owner")),
            ]:
                with pytest.raises(PermissionDenied):
                    intruder.call(method, request)
            with pytest.raises(PermissionDenied):
                intruder.stream("ExportAdapter", pb.ExportAdapterRequest(session_id="s-owner"))
            with pytest.raises(PermissionDenied):  # refused at the header, before any tensor is read
                load = pb.LoadAdapterRequest(header=pb.LoadAdapterHeader(session_id="s-owner"))
                intruder.upload("LoadAdapter", iter([load]))
            # On the session stream the token is the stream's: a request naming the owner's
            # session fails alone with PERMISSION_DENIED.
            stream = SessionStream(intruder)
            header = pb.ForwardHeader(session_id="s-owner", forward_id=1)
            with pytest.raises(PermissionDenied):
                stream.submit(header, {"hidden": torch.zeros(1, 2, 32)}, "raw").result(timeout=30)
            stream.close()
        with _connect(secure_edge, pki["ca"], "dev-a", "forged.token") as stranger:
            stream = SessionStream(stranger)  # a bad token ends the stream itself
            with pytest.raises(Unauthenticated):
                stream.submit(header, {"hidden": torch.zeros(1, 2, 32)}, "raw").result(timeout=30)
            stream.close()
        owner.call("CloseSession", pb.CloseSessionRequest(session_id="s-owner"))


# --- results: security changes no number -----------------------------------------------------------


def _train_llama(conn: EdgeConnection, tiny, steps: int = 4) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = split_llama(tiny, conn, seed=7)
    opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    generator = torch.Generator().manual_seed(8)
    losses = []
    for _ in range(steps):
        loss = model(**make_batch("llama", generator)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    state = model.adapter_state_dict()
    model.close()
    return losses, state


def _attack(edge, pki, stop: threading.Event, errors: list[BaseException]) -> None:
    """Keep sending forged, expired and other-session calls until told to stop."""
    forged = issue_token(generate_issuer_key(), session="s-legit-2", device="dev-a", model="llama")
    expired = _token(pki, session="s-legit-2", ttl_seconds=60, now=time.time() - 3600)
    other = _token(pki, session="s-attacker", device="dev-b")
    while not stop.is_set():
        for token, device, expected in [
            (forged, "dev-a", Unauthenticated),
            (expired, "dev-a", Unauthenticated),
            (other, "dev-b", PermissionDenied),
        ]:
            with _connect(edge, pki["ca"], device, token) as conn:
                try:
                    conn.call("Step", pb.StepRequest(session_id="s-legit-2"))
                    errors.append(AssertionError(f"{expected.__name__} expected"))
                except expected:
                    pass
                except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                    errors.append(exc)


def test_legitimate_session_is_unaffected_by_concurrent_attacks(secure_edge, pki, tiny_models):
    tiny = tiny_models["llama"]
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-legit-1")) as conn:
        solo = _train_llama(conn, tiny)
    stop, errors = threading.Event(), []
    attacker = threading.Thread(target=_attack, args=(secure_edge, pki, stop, errors))
    attacker.start()
    try:
        with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-legit-2")) as conn:
            attacked = _train_llama(conn, tiny)
    finally:
        stop.set()
        attacker.join()
    assert not errors, errors
    assert attacked[0] == solo[0]
    for key, value in solo[1].items():
        assert torch.equal(attacked[1][key], value), key


def test_equivalence_holds_over_mtls_with_tokens(secure_edge, pki, tiny_models, conn, tmp_path):
    """Same numbers over mutual TLS with tokens as over plaintext, and both equal local peft."""
    tiny = tiny_models["llama"]
    with _connect(secure_edge, pki["ca"], "dev-a", _token(pki, session="s-eq")) as secure:
        over_tls = run_equivalence(tiny, secure, tmp_path / "tls", model_name="llama")
    plaintext = run_equivalence(tiny, conn, tmp_path / "plain", model_name="llama")
    assert_equivalent(over_tls)
    assert over_tls.split_losses == plaintext.split_losses
    for key, value in plaintext.split_adapter.items():
        assert torch.equal(over_tls.split_adapter[key], value), key
