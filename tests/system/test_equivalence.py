"""Split training with a lossless codec equals training the whole PEFT model in one process."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from device_client import SplitModel
from splitft.testing.tiny import FAMILY_NAMES, lora_config_for, make_batch
from tests.support.equivalence import STEPS, EquivalenceRun, run_equivalence

TOL = 1e-5


def assert_equivalent(run: EquivalenceRun) -> None:
    assert run.split_losses == pytest.approx(run.reference_losses, abs=TOL)
    assert sum(run.split_losses[-4:]) < sum(
        run.split_losses[:4]
    )  # it learned the 4 batches it cycles through
    assert set(run.split_adapter) == set(run.reference_adapter)
    assert [k for k in run.split_adapter if ".2." in k], "the trunk adapter must be part of the export"
    for key, value in run.reference_adapter.items():
        torch.testing.assert_close(run.split_adapter[key], value, atol=TOL, rtol=0)
    assert run.split_steps == STEPS


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_split_training_matches_local_peft(family, tiny_models, conn, tmp_path):
    """Gradient accumulation 2, global-norm clipping on both sides, an LR scheduler, 10 steps."""
    assert_equivalent(run_equivalence(tiny_models[family], conn, tmp_path, model_name=family))


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_saved_adapter_reproduces_eval_logits(family, tiny_models, conn, tmp_path):
    tiny = tiny_models[family]
    torch.manual_seed(3)
    split = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=family,
        device_layers=2,
        head_layers=1,
        lora_config=lora_config_for(family),
    )
    opt = split.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        split(**make_batch(family, generator)).loss.backward()
        opt.step()
        opt.zero_grad()
    split.save_adapter(tmp_path / "adapter")
    batch = make_batch(family, generator)
    split.eval()
    with torch.no_grad():
        logits_split = split(**batch).logits
    loaded = PeftModel.from_pretrained(
        tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        logits_loaded = loaded(**batch).logits
    torch.testing.assert_close(logits_split, logits_loaded, atol=1e-5, rtol=0)
    split.close()
