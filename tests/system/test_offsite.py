"""Offsite tuning: the device's adapters train against an emulator with no edge and no network,
and the plug-in adapter loads into the full model, with plain peft in one process or into a split
model through the edge, and is evaluated there."""

from __future__ import annotations

import json
import math
import re
import socket

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from device_client import OffsiteModel, SplitModel
from splitft.emulator.make import build_emulator
from splitft.errors import InvalidArgument, NotFound
from splitft.model.families import family_for
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch, save_tiny_model


@pytest.fixture(scope="module")
def six_layer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("six")
    return {f: save_tiny_model(f, root / f, layers=6) for f in ("llama", "gpt2", "bert")}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket connect, bind and DNS lookup fails: offsite training must not need any."""

    def refused(*_args: object, **_kwargs: object) -> None:
        raise OSError("network is disabled in this test")

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket, "getaddrinfo", refused)


def _train(model, family: str, steps: int = 4, seed: int = 2) -> list[float]:
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**make_batch(family, generator)).loss
        loss.backward()
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def _eval(model, batch) -> tuple[torch.Tensor, float]:
    model.eval()
    out = model(**batch)
    return out.logits, float(out.loss)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_offsite_adapter_plugs_into_the_full_model_and_is_evaluated(
    six_layer, family, tmp_path, no_network
) -> None:
    tiny = six_layer[family]
    build_emulator(tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=2)
    torch.manual_seed(0)
    offsite = OffsiteModel.from_emulator(tmp_path / "emu", lora_config=lora_config_for(family))
    assert offsite.trainable_parameters()["emulator_trunk"] == 0  # the emulator's trunk stays frozen
    _train(offsite, family)
    assert offsite.stats.steps == 4 and offsite.stats.bytes_sent == 0
    offsite.save_adapter(tmp_path / "plug")
    config = json.loads((tmp_path / "plug" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny.path)

    full = PeftModel.from_pretrained(tiny.model_class.from_pretrained(str(tiny.path)), str(tmp_path / "plug"))
    loaded = get_peft_model_state_dict(full)
    plug = offsite.adapter_state_dict()
    assert set(loaded) == set(plug) and all(torch.equal(loaded[k], plug[k]) for k in plug)
    blocks_path = family_for(full.config).blocks_path
    index = re.compile(rf"{re.escape(blocks_path)}\.(\d+)\.")
    blocks = {int(m.group(1)) for k in plug if (m := index.search(k))}
    assert blocks == {0, 5}  # the device block keeps index 0; the head block is the full model's 5, not 3
    # Only the device and head blocks carry an adapter in the full model (no fresh trunk LoRA).
    wrapped = {int(m.group(1)) for n in full.base_model.targeted_module_names if (m := index.search(n))}
    assert wrapped == {0, 5}
    batch = make_batch(family, torch.Generator().manual_seed(11))
    plugged_logits, plugged_loss = _eval(full, batch)
    with full.disable_adapter():
        base_logits, base_loss = _eval(full, batch)
    assert not torch.allclose(plugged_logits, base_logits)  # the trained adapter changes the full model
    assert math.isfinite(plugged_loss) and plugged_loss != base_loss


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_with_every_trunk_block_kept_the_plugged_model_equals_the_offsite_model(
    six_layer, family, tmp_path
) -> None:
    # Equivalence: an emulator that keeps the whole trunk is the full model, so the plug-in adapter
    # must reproduce the offsite model's logits exactly (the renumbering is tested above).
    tiny = six_layer[family]
    build_emulator(tiny.path, tmp_path / "emu", device_layers=2, head_layers=2, keep=2)
    torch.manual_seed(0)
    offsite = OffsiteModel.from_emulator(tmp_path / "emu", lora_config=lora_config_for(family))
    _train(offsite, family)
    offsite.save_adapter(tmp_path / "plug")
    full = PeftModel.from_pretrained(tiny.model_class.from_pretrained(str(tiny.path)), str(tmp_path / "plug"))
    batch = make_batch(family, torch.Generator().manual_seed(4))
    expected, _ = _eval(offsite, batch)
    got, _ = _eval(full, batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_plug_in_adapter_loads_into_a_split_model_and_matches_one_process(
    tiny_models, conn, tmp_path
) -> None:
    tiny = tiny_models["llama"]  # the edge serves it: 4 blocks, k = 1, j = 1, trunk 1..2
    build_emulator(tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=1)
    torch.manual_seed(0)
    offsite = OffsiteModel.from_emulator(tmp_path / "emu", lora_config=lora_config_for("llama"))
    _train(offsite, "llama")
    offsite.save_adapter(tmp_path / "plug")
    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1,
        lora_config=lora_config_for("llama"), trunk_lora=False,
    )  # fmt: skip
    with split:
        split.load_adapter(tmp_path / "plug")
        batch = make_batch("llama", torch.Generator().manual_seed(5))
        split_logits, split_loss = _eval(split, batch)
    full = PeftModel.from_pretrained(tiny.model_class.from_pretrained(str(tiny.path)), str(tmp_path / "plug"))
    one_logits, one_loss = _eval(full, batch)
    torch.testing.assert_close(split_logits, one_logits, rtol=0, atol=1e-5)
    assert split_loss == pytest.approx(one_loss, abs=1e-5)


def test_an_offsite_trunk_adapter_is_not_carried_over(six_layer, tmp_path) -> None:
    tiny = six_layer["gpt2"]
    build_emulator(tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=2)
    offsite = OffsiteModel.from_emulator(
        tmp_path / "emu", lora_config=lora_config_for("gpt2"), trunk_lora=True
    )
    assert offsite.trainable_parameters()["emulator_trunk"] > 0
    trained = offsite.emulator_state_dict()
    assert any(".h.1." in k for k in trained) and any(".h.2." in k for k in trained)
    plug = offsite.adapter_state_dict()
    assert {k.split(".h.")[1].split(".")[0] for k in plug} == {"0", "5"}
    assert len(plug) == len(trained) // 2  # two of the emulator's four blocks were the trunk


def test_refusals(six_layer, tmp_path) -> None:
    tiny = six_layer["llama"]
    with pytest.raises(NotFound, match="is not an emulator"):
        OffsiteModel.from_emulator(tiny.path, lora_config=lora_config_for("llama"))
    build_emulator(tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=2)
    with pytest.raises(InvalidArgument, match="does not fit the emulator"):
        OffsiteModel.from_emulator(tmp_path / "emu", lora_config=lora_config_for("bert"))
    with pytest.raises(InvalidArgument, match="must be a peft.LoraConfig"):
        OffsiteModel.from_emulator(tmp_path / "emu", lora_config={"r": 4})  # type: ignore[arg-type]
