"""JSON inside data-plane messages (`splitft.wire.serde`): round trips, precise refusals, and one
source for the edge's optimizer names."""

from __future__ import annotations

import json
import typing

import pytest
from peft import LoraConfig

from splitft.errors import InvalidArgument
from splitft.model.lora import trunk_lora_from_json, trunk_lora_json
from splitft.wire.serde import (
    EDGE_OPTIMIZERS,
    hparams_from_json,
    hparams_to_json,
    lora_from_json,
    lora_to_json,
    optimizer_groups_from_json,
    optimizer_groups_to_json,
)


@pytest.mark.parametrize(
    "hparams",
    [{}, {"lr": 0.001}, {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False, "momentum": 0}],
)
def test_hparams_round_trip(hparams: dict[str, object]) -> None:
    assert hparams_from_json(hparams_to_json(hparams)) == hparams


def test_empty_hparams_json_means_none() -> None:
    assert hparams_from_json("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{lr: 1}", "hparams_json is not valid JSON"),
        ("[0.1]", "hparams_json must be a JSON object"),
        ('{"lr": "fast"}', "hyper-parameter 'lr' must be a number, bool or list of numbers"),
        ('{"betas": [0.9, "x"]}', "hyper-parameter 'betas' must be a number"),
        ('{"lr": {"a": 1}}', "hyper-parameter 'lr' must be a number"),
        ('{"lr": NaN}', "hyper-parameter 'lr' must be finite"),
        ('{"lr": Infinity}', "hyper-parameter 'lr' must be finite"),
    ],
)
def test_bad_hparams_are_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        hparams_from_json(text)


def test_lora_fields_round_trip_sorted() -> None:
    fields = {"r": 4, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 8}
    text = lora_to_json(fields)
    assert list(json.loads(text)) == sorted(fields)
    assert lora_from_json(text) == fields


@pytest.mark.parametrize(
    ("text", "message"),
    [("{", "lora_config_json is not valid JSON"), ('"r"', "lora_config_json must be a JSON object")],
)
def test_bad_lora_json_is_refused_with_the_field_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        lora_from_json(text)
    with pytest.raises(InvalidArgument, match=message):  # the edge's entry point says the same
        trunk_lora_from_json(text)


def test_a_trunk_lora_config_survives_the_wire() -> None:
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])
    back = trunk_lora_from_json(trunk_lora_json(config))
    assert (back.r, back.lora_alpha, back.lora_dropout) == (4, 8, 0.1)
    assert set(back.target_modules) == {"q_proj", "v_proj"}


def test_every_reader_of_the_optimizer_names_reads_the_one_constant() -> None:
    from device_client.agent.trainer import OPTIMIZERS as AGENT_OPTIMIZERS
    from edge_server.trunk_optim import OPTIMIZERS as EDGE_SIDE
    from splitft.jobs.spec import OptimizerSpec

    assert EDGE_OPTIMIZERS == ("AdamW", "Adam", "SGD")
    assert tuple(AGENT_OPTIMIZERS) == tuple(EDGE_SIDE) == EDGE_OPTIMIZERS
    annotation = typing.get_type_hints(OptimizerSpec)["name"]
    assert typing.get_args(annotation) == EDGE_OPTIMIZERS
    for name in EDGE_OPTIMIZERS:
        assert OptimizerSpec(name=name).name == name
    with pytest.raises(ValueError, match="AdamW"):
        OptimizerSpec(name="LBFGS")


def test_optimizer_groups_round_trip_without_params_and_tuples_as_lists() -> None:
    import torch

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.01, betas=(0.8, 0.9))
    groups = optimizer_groups_from_json(optimizer_groups_to_json(optimizer.state_dict()["param_groups"]))
    assert len(groups) == 1 and "params" not in groups[0]
    assert groups[0]["betas"] == [0.8, 0.9] and groups[0]["lr"] == 0.01 and groups[0]["fused"] is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"lr": 1}', "non-empty JSON list"),
        ("[1]", "non-empty JSON list"),
        ('[{"lr": "fast"}]', r"invalid entries \['lr'\]"),
        ('[{"params": [0]}]', r"invalid entries \['params'\]"),
        ('[{"betas": [0.9, "x"]}]', "invalid entries"),
        ('[{"lr": NaN}]', "invalid entries"),
    ],
)
def test_optimizer_groups_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        optimizer_groups_from_json(text)


def test_optimizer_groups_that_json_cannot_carry_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"\['weird'\] cannot be checkpointed"):
        optimizer_groups_to_json([{"lr": 0.1, "weird": object()}])
