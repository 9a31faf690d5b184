"""Retries without double steps, through a real TCP proxy in front of a real mutual-TLS edge.

The proxy cuts the device's connection at each phase of training: mid-upload of a forward (the
edge never saw it), or right after the edge applied a forward, backward, gradient norm, optimizer
step or optimizer configuration and before its answer left. Each run must end with the adapter an
undisturbed run ends with (within 1e-6; trunk LoRA dropout on, so a forward applied twice would
draw other masks), with every request applied once on the edge. A stall past the deadline is
retried the same way; an edge gone for longer than the retry budget raises `EdgeUnreachable`; and
an error that would fail again (INVALID_ARGUMENT, NOT_FOUND) is raised at once, not retried.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

from device_client import EdgeConnection, RetryPolicy
from edge_server import EdgeConfig, EdgeServer
from edge_server.session import TrunkSession
from splitft.errors import EdgeUnreachable, InvalidArgument, NotFound
from splitft.security.certs import CertPaths, init_ca, issue_device
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from tests.support.split import split_llama
from tests.support.tcp_proxy import TcpProxy

STEPS = 3
# Short waits so a test takes seconds; seeded jitter so a failing run can be replayed.
FAST = RetryPolicy(max_attempts=8, budget_s=15.0, base_backoff_s=0.01, max_backoff_s=0.2, seed=0)
PATIENT = RetryPolicy(max_attempts=40, budget_s=15.0, base_backoff_s=0.05, max_backoff_s=0.2, seed=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    paths = init_ca(tmp_path_factory.mktemp("pki") / "ca", ["127.0.0.1", "localhost"])
    issue_device(paths.directory, "dev-a")
    return paths


@pytest.fixture(scope="module")
def tls_edge(pki: CertPaths, tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}"],
        port=0,
        certs_dir=str(pki.directory),
        no_tokens=True,  # tokens are not what this file tests
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


@pytest.fixture
def proxy(tls_edge: EdgeServer) -> Iterator[TcpProxy]:
    relay = TcpProxy(tls_edge.address)
    yield relay
    relay.close()


def connect(address: str, pki: CertPaths, timeout: float = 20.0, **options) -> EdgeConnection:
    return EdgeConnection(
        address,
        ca=pki.ca_cert,
        cert=pki.device_cert("dev-a"),
        key=pki.device_key("dev-a"),
        timeout=timeout,
        reconnect_backoff_s=(0.01, 0.05),  # as short as FAST's waits: every try really connects
        **options,
    )


@dataclass
class Run:
    adapter: dict[str, torch.Tensor]
    device_steps: int
    edge_steps: int
    replayed: int  # answers the edge sent again from its replay window


def train(
    tiny: TinyModel,
    edge: EdgeServer,
    conn: EdgeConnection,
    *,
    dropout: float = 0.1,
    micro_batches: int = 1,
    before_steps: Callable[[], None] = lambda: None,
    policy: RetryPolicy = FAST,
) -> Run:
    """STEPS optimizer steps with clipping (GradNorm) from a fixed start on fixed batches."""
    config = lora_config_for("llama")
    config.lora_dropout = dropout
    model = split_llama(tiny, conn, seed=7, lora_config=config, retry=policy)
    model.train()
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    generator = torch.Generator().manual_seed(8)
    batches = [make_batch("llama", generator) for _ in range(STEPS)]
    before_steps()
    for batch in batches:
        optimizer.zero_grad()
        model.forward_backward(batch, micro_batches=micro_batches)
        optimizer.clip_grad_norm_(0.5)
        optimizer.step()
    session = edge.sessions.get(model.session_id)
    replayed = edge.sessions.wire(model.session_id).replay.replayed
    run = Run(model.adapter_state_dict(), model.stats.steps, session.steps, replayed)
    model.close()
    return run


@pytest.fixture(scope="module")
def reference(tiny_models, tls_edge, pki) -> Callable[..., Run]:
    """The undisturbed run (straight to the edge, no proxy) for a configuration, computed once."""
    runs: dict[tuple[float, int], Run] = {}

    def get(dropout: float = 0.1, micro_batches: int = 1) -> Run:
        key = (dropout, micro_batches)
        if key not in runs:
            with connect(tls_edge.address, pki) as conn:
                runs[key] = train(
                    tiny_models["llama"], tls_edge, conn, dropout=dropout, micro_batches=micro_batches
                )
        return runs[key]

    return get


class EdgeHooks:
    """Counts the edge's calls of TrunkSession methods (each one applies a request) and runs an
    action right after the nth call of one returned: the edge applied the request, its answer has
    not left."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._monkeypatch = monkeypatch
        for name in ("forward", "backward", "step", "grad_norm_sq", "configure_optimizer"):
            self._wrap(name)
        self._trigger: tuple[str, int, Callable[[], None]] | None = None

    def after(self, name: str, nth: int, action: Callable[[], None]) -> None:
        self._trigger = (name, nth, action)

    def _wrap(self, name: str) -> None:
        original = getattr(TrunkSession, name)

        def wrapped(session: TrunkSession, *args, **kwargs):
            self.calls[name] += 1
            nth = self.calls[name]
            result = original(session, *args, **kwargs)
            if self._trigger is not None and self._trigger[:2] == (name, nth):
                self._trigger[2]()
            return result

        self._monkeypatch.setattr(TrunkSession, name, wrapped)


def assert_same_adapter(got: Run, want: Run) -> None:
    assert got.adapter.keys() == want.adapter.keys()
    for key, value in want.adapter.items():
        torch.testing.assert_close(got.adapter[key], value, rtol=0, atol=1e-6, msg=key)


# The nth call after which the answer is lost (the edge applied it).
ANSWER_LOST = {
    "configure": ("configure_optimizer", 1),
    "forward": ("forward", 2),
    "backward": ("backward", 2),
    "grad-norm": ("grad_norm_sq", 2),
    "step": ("step", 2),
}


@pytest.mark.parametrize("phase", list(ANSWER_LOST))
def test_an_answer_lost_after_the_edge_applied_is_replayed_not_applied_again(
    phase, tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    hooks = EdgeHooks(monkeypatch)
    name, nth = ANSWER_LOST[phase]
    hooks.after(name, nth, proxy.cut)
    with connect(proxy.address, pki) as conn:
        run = train(tiny_models["llama"], tls_edge, conn)
    assert proxy.stats.cut >= 1 and proxy.stats.accepted >= 2  # cut, and connected again
    assert run.replayed >= 1  # the retry was answered from the window
    assert hooks.calls == {
        "configure_optimizer": 1,
        "forward": STEPS,
        "backward": STEPS,
        "grad_norm_sq": STEPS,
        "step": STEPS,
    }
    assert run.edge_steps == run.device_steps == STEPS
    assert_same_adapter(run, reference())


def test_a_forward_cut_off_mid_upload_is_sent_again_and_applied_once(
    tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    hooks = EdgeHooks(monkeypatch)
    with connect(proxy.address, pki) as conn:
        # The first forward's activations are 4 x 12 x 32 float32 (6 KiB): cut 2.5 KB into them.
        run = train(tiny_models["llama"], tls_edge, conn, before_steps=lambda: proxy.cut_after(2500))
    assert proxy.stats.cut >= 1
    assert run.replayed == 0  # the edge never had it: the retry was applied, once
    assert hooks.calls["forward"] == STEPS and hooks.calls["step"] == STEPS
    assert_same_adapter(run, reference())


def test_pipelined_micro_batches_in_flight_are_sent_again_in_order(
    tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    # Device dropout under pipelining draws from threads in any order, so none here (docs/pipelining).
    hooks = EdgeHooks(monkeypatch)
    hooks.after("forward", 3, proxy.cut)  # step 2's first micro-batch; its second may be in flight
    with connect(proxy.address, pki) as conn:
        run = train(tiny_models["llama"], tls_edge, conn, dropout=0.0, micro_batches=2)
    assert proxy.stats.cut >= 1 and run.replayed >= 1
    assert hooks.calls["forward"] == hooks.calls["backward"] == 2 * STEPS
    assert run.edge_steps == STEPS
    assert_same_adapter(run, reference(dropout=0.0, micro_batches=2))


@pytest.mark.parametrize("name", ["step", "forward"])  # a unary deadline; a stream wait
def test_a_stalled_answer_past_the_deadline_is_retried_and_applied_once(
    name, tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    hooks = EdgeHooks(monkeypatch)
    hooks.after(name, 2, lambda: proxy.stall(3.5))  # no answer within 1.5 s, twice; then all of them
    with connect(proxy.address, pki, timeout=1.5) as conn:
        run = train(tiny_models["llama"], tls_edge, conn)
    assert run.replayed >= 1 and hooks.calls[name] == STEPS
    assert_same_adapter(run, reference())


def test_a_link_that_dies_silently_is_found_by_keepalive_and_replaced(
    tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    # No reset, no answer, a deadline far away: only the unanswered keepalive ping tells.
    hooks = EdgeHooks(monkeypatch)
    hooks.after("forward", 2, proxy.blackhole)
    with connect(proxy.address, pki, keepalive_s=1.0) as conn:
        run = train(tiny_models["llama"], tls_edge, conn)
    assert proxy.stats.accepted >= 2 and run.replayed >= 1
    assert hooks.calls["forward"] == STEPS
    assert_same_adapter(run, reference())


def test_an_edge_gone_for_less_than_the_budget_loses_nothing(
    tiny_models, tls_edge, pki, proxy, reference, monkeypatch
) -> None:
    hooks = EdgeHooks(monkeypatch)
    hooks.after("step", 1, lambda: (proxy.refuse(), threading.Timer(0.8, proxy.refuse, [False]).start()))
    with connect(proxy.address, pki) as conn:
        run = train(tiny_models["llama"], tls_edge, conn, policy=PATIENT)
    assert proxy.stats.refused >= 2 and run.replayed >= 1
    assert hooks.calls["step"] == run.edge_steps == STEPS
    assert_same_adapter(run, reference())


def test_an_edge_gone_past_the_budget_raises_edge_unreachable(tiny_models, pki, proxy) -> None:
    policy = RetryPolicy(max_attempts=4, budget_s=5.0, base_backoff_s=0.1, max_backoff_s=0.2, seed=0)
    generator = torch.Generator().manual_seed(8)
    with connect(proxy.address, pki) as conn:
        model = split_llama(tiny_models["llama"], conn, seed=7, retry=policy)
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        model(**make_batch("llama", generator)).loss.backward()
        optimizer.step()
        proxy.refuse()
        with pytest.raises(EdgeUnreachable, match=r"after 4 tries"):
            model(**make_batch("llama", generator))
        with pytest.raises(EdgeUnreachable, match=r"Step of session .* after 4 tries"):
            optimizer.step()
        assert proxy.stats.refused >= 2  # the tries reached for the (gone) edge
        proxy.refuse(False)
        model.close()


def test_errors_that_would_fail_again_are_not_retried(tiny_models, tls_edge, pki, proxy, monkeypatch) -> None:
    hooks = EdgeHooks(monkeypatch)
    with connect(proxy.address, pki) as conn:
        model = split_llama(tiny_models["llama"], conn, seed=7, retry=FAST)
        trunk = model._trunk
        trunk.configure_optimizer("AdamW", {"lr": 1e-2})
        with pytest.raises(InvalidArgument, match="does not fit its current value"):
            trunk.step({"lr": True}, 1.0)  # a bool for lr
        assert hooks.calls["step"] == 1
        tls_edge.sessions.close(model.session_id)
        with pytest.raises(NotFound, match="unknown session"):
            trunk.grad_norm_sq()
        assert hooks.calls["grad_norm_sq"] == 0 and proxy.stats.cut == 0
        model.close()
