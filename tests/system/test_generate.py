"""`SplitModel.generate` equals `PeftModel.generate` token for token (greedy, and sampling from the
same seed), with key/value caches on both sides and without; the edge's per-session trunk cache is
bounded, refuses what does not continue it, and is freed with the session."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from edge_server.limits import DataPlaneLimits
from splitft.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from splitft.testing.tiny import lora_config_for, make_batch


def _trained_split(tiny, conn, family: str, tmp_path) -> tuple[SplitModel, PeftModel]:
    """A split model after 3 steps (so both sides' adapters matter), and plain peft on its adapter."""
    torch.manual_seed(0)
    split = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=family,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(family),
    )
    optimizer = split.configure_optimizer(torch.optim.AdamW, lr=2e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        split(**make_batch(family, generator)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    split.save_adapter(tmp_path / "adapter")
    reference = PeftModel.from_pretrained(tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter")
    return split, reference.eval()


def _prompts() -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 128, (3, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded row: the masks on both sides must cover the cached tokens
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_equals_peft_generate(family, tiny_models, conn, tmp_path):
    split, reference = _trained_split(tiny_models[family], conn, family, tmp_path)
    prompts, options = _prompts(), dict(max_new_tokens=8, pad_token_id=0)
    expected = reference.generate(**prompts, do_sample=False, **options)
    sent = split.stats.bytes_sent
    cached = split.generate(**prompts, do_sample=False, **options)
    cached_bytes, sent = split.stats.bytes_sent - sent, split.stats.bytes_sent
    uncached = split.generate(**prompts, do_sample=False, use_cache=False, **options)
    uncached_bytes = split.stats.bytes_sent - sent
    assert cached.shape == (3, 14)
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, expected)
    assert cached_bytes < uncached_bytes / 2  # with caches only the new token's activations travel
    torch.manual_seed(11)
    sampled_reference = reference.generate(**prompts, do_sample=True, top_k=20, **options)
    torch.manual_seed(11)
    sampled = split.generate(**prompts, do_sample=True, top_k=20, **options)
    assert torch.equal(sampled, sampled_reference)
    assert split.training  # generate() restored train mode
    split.close()


def test_generate_is_for_causal_language_models(tiny_models, conn):
    with SplitModel.from_pretrained(
        tiny_models["bert"].path,
        edge=conn,
        model="bert",
        device_layers=1,
        lora_config=lora_config_for("bert"),
    ) as split:
        with pytest.raises(FailedPrecondition, match="generate\\(\\) is for causal language models"):
            split.generate(input_ids=torch.ones(1, 4, dtype=torch.long), max_new_tokens=2)


def test_the_trunk_cache_is_bounded_checked_and_freed(tiny_models):
    """A small --max-cache-tokens: a generation past it gets RESOURCE_EXHAUSTED naming the bound
    (and the edge serves on); a forward that does not continue the cache is refused; the cache
    is freed when a new generation starts and with the session."""
    tiny = tiny_models["llama"]
    limits = DataPlaneLimits(max_cache_tokens=3 * 10)
    config = EdgeConfig(model_dirs=[f"llama={tiny.path}"], port=0, insecure=True, limits=limits)
    server = EdgeServer(config).start()
    try:
        with EdgeConnection(server.address, insecure=True) as conn:
            split = SplitModel.from_pretrained(
                tiny.path, edge=conn, model="llama", device_layers=1, lora_config=lora_config_for("llama")
            )
            prompts = _prompts()
            with pytest.raises(ResourceExhausted, match="3 x 11 = 33 tokens, over this edge's limit of 30"):
                split.generate(**prompts, max_new_tokens=6, do_sample=False, pad_token_id=0)
            out = split.generate(**prompts, max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert out.shape == (3, 10)
            session = server.sessions.get(split.session_id)
            assert session.kv_cache.tokens == 3 * 9  # the last token's keys are never needed
            trunk, hidden = split._trunk, torch.zeros(3, 1, 32)
            with pytest.raises(
                FailedPrecondition, match="holds 9 tokens of 3 rows; this forward continues 4"
            ):
                trunk.forward(
                    hidden, {}, training=False, requires_grad=False, need_input_grad=False, past_length=4
                )
            with pytest.raises(InvalidArgument, match="use_cache forward is no-grad inference"):
                trunk.forward(
                    hidden, {}, training=False, requires_grad=True, need_input_grad=False, past_length=0
                )
            split.close()
            assert session.kv_cache.cache is None and session.kv_cache.tokens == 0
    finally:
        server.stop(grace=1)
