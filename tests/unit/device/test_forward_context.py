"""The device's ForwardContext: one documented API (context managers), per thread, restored on exit."""

from __future__ import annotations

import threading

import pytest
import torch

from device_client.autograd import ForwardContext


def test_forward_sets_the_mask_for_its_block_only() -> None:
    context = ForwardContext()
    mask = torch.ones(1, 3, dtype=torch.long)
    assert context.attention_mask is None
    with context.forward(mask):
        assert context.attention_mask is mask
        with context.forward(None):  # a nested forward (e.g. a loss that runs the model again)
            assert context.attention_mask is None
        assert context.attention_mask is mask
    assert context.attention_mask is None


def test_an_exception_still_restores_the_context() -> None:
    context = ForwardContext()
    with pytest.raises(RuntimeError), context.forward(torch.ones(1, 1)), context.pipelined(lambda: None):
        raise RuntimeError("boom")
    assert context.attention_mask is None and context.on_submit is None


def test_anchored_yields_the_list_trunk_calls_append_to() -> None:
    context = ForwardContext()
    with context.anchored() as anchors:
        assert context.anchors is anchors and anchors == []
    assert context.anchors is None


def test_each_thread_sees_only_its_own_settings() -> None:
    context = ForwardContext()
    seen: dict[str, object] = {}
    inside, release = threading.Event(), threading.Event()

    def other() -> None:
        with context.pipelined(release.set):
            seen["other_before"] = context.attention_mask
            inside.set()
            release.wait(timeout=10)
            seen["other_on_submit"] = context.on_submit

    mask = torch.ones(2, 2)
    with context.forward(mask):
        thread = threading.Thread(target=other)
        thread.start()
        assert inside.wait(timeout=10)
        assert context.on_submit is None  # the other thread's callback is not ours
        release.set()
        thread.join(timeout=10)
    assert seen["other_before"] is None
    assert seen["other_on_submit"] is not None
