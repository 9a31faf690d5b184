"""Codec specs: the grammar, canonical strings, per-direction choice and every refusal."""

from __future__ import annotations

import pytest

from splitft.compress import CodecSpec, DirectionCodecs, parse_codec, parse_codecs
from splitft.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("raw", CodecSpec("raw")),
        ("fp16", CodecSpec("fp16")),
        ("bf16", CodecSpec("bf16")),
        ("int8", CodecSpec("int8")),
        ("int8:sr", CodecSpec("int8", stochastic=True)),
        ("topk:0.01", CodecSpec("topk", fraction=0.01)),
        ("topk:1.0", CodecSpec("topk", fraction=1.0)),
        ("topk:0.25:noef", CodecSpec("topk", fraction=0.25, error_feedback=False)),
        ("lowrank:4", CodecSpec("lowrank", rank=4)),
        ("lowrank:4", CodecSpec("lowrank", rank=4, error_feedback=False)),
        ("lowrank:1:ef", CodecSpec("lowrank", rank=1, error_feedback=True)),
    ],
)
def test_canonical_strings_round_trip(text: str, spec: CodecSpec) -> None:
    assert parse_codec(text) == spec
    assert str(spec) == text
    assert parse_codec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("topk:1", "topk:1.0"),
        ("topk:.5", "topk:0.5"),
        ("topk:1e-2", "topk:0.01"),
        ("topk:0.5:ef", "topk:0.5"),  # the default, said
        ("lowrank:8:noef", "lowrank:8"),  # likewise
    ],
)
def test_other_spellings_parse_to_the_canonical_form(text: str, canonical: str) -> None:
    assert str(parse_codec(text)) == canonical


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "unknown codec ''"),
        ("int2", "unknown codec 'int2'"),
        ("INT8", "unknown codec 'INT8'"),
        ("raw:sr", "raw takes no options"),
        ("fp16:noef", "fp16 takes no options"),
        ("int8:noef", "int8's only option is 'sr'"),
        ("int8:sr:sr", "int8's only option is 'sr'"),
        ("topk", "topk needs a parameter"),
        ("lowrank", "lowrank needs a parameter"),
        ("topk:0", r"fraction must be a decimal number in \(0, 1\]"),
        ("topk:1.5", r"in \(0, 1\]"),
        ("topk:-0.1", r"in \(0, 1\]"),
        ("topk:nan", r"in \(0, 1\]"),
        ("topk:inf", r"in \(0, 1\]"),
        ("topk:1e-400", r"in \(0, 1\]"),
        ("topk:0.1:sr", "only options after topk's parameter are 'ef' and 'noef'"),
        ("lowrank:2:EF", "only options after lowrank's parameter are 'ef' and 'noef'"),
        ("topk:0.1:noef:noef", "topk needs a parameter"),
        ("lowrank:0", "rank must be an integer >= 1"),
        ("lowrank:2.5", "rank must be an integer >= 1"),
        ("lowrank:04", "rank must be an integer >= 1"),
        ("lowrank:1234567", "at most 6 digits"),
        ("x" * 100, "not a codec string"),
    ],
)
def test_bad_codec_strings_name_the_grammar(text: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        parse_codec(text)
    assert "supported: raw | fp16 | bf16 | int8 | int8:sr | int4 | topk:" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="gzip"), "unknown codec"),
        (dict(name="topk"), "fraction is given exactly for topk"),
        (dict(name="raw", fraction=0.1), "fraction is given exactly for topk"),
        (dict(name="lowrank"), "rank is given exactly for lowrank"),
        (dict(name="topk", fraction=2.0), r"\(0, 1\]"),
        (dict(name="lowrank", rank=0), ">= 1"),
        (dict(name="fp16", stochastic=True), "only for int8"),
        (dict(name="int8", error_feedback=False), "only for topk and lowrank"),
    ],
)
def test_spec_dataclass_validates_itself(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        CodecSpec(**kwargs)


def test_a_string_sets_both_directions() -> None:
    codecs = parse_codecs("int8")
    assert codecs == DirectionCodecs(CodecSpec("int8"), CodecSpec("int8"))
    assert codecs.to_wire() == ("int8", "int8") and str(codecs) == "int8"
    assert not codecs.is_lossless and parse_codecs("raw").is_lossless


def test_a_mapping_sets_each_direction_and_defaults_to_raw() -> None:
    codecs = parse_codecs({"activations": "int8", "gradients": "lowrank:4"})
    assert codecs.to_wire() == ("int8", "lowrank:4")
    assert parse_codecs({"gradients": "topk:0.01"}).to_wire() == ("raw", "topk:0.01")
    assert parse_codecs({}).is_lossless
    assert not parse_codecs({"activations": "raw", "gradients": "fp16"}).is_lossless


def test_single_string_wire_form_round_trips() -> None:
    codecs = parse_codecs({"activations": "int8:sr", "gradients": "topk:0.01:noef"})
    assert str(codecs) == "activations=int8:sr,gradients=topk:0.01:noef"
    assert parse_codecs(str(codecs)) == codecs
    assert DirectionCodecs.from_wire(*codecs.to_wire()) == codecs
    assert parse_codecs("gradients=lowrank:2").to_wire() == ("raw", "lowrank:2")


@pytest.mark.parametrize(
    ("codec", "match"),
    [
        ("topk:0.01", "for gradients only; activations take raw | fp16 | bf16 | int8 | int8:sr | int4"),
        ({"activations": "lowrank:4"}, "for gradients only"),
        ({"activation": "int8"}, r"direction\(s\) \['activation'\]; allowed: activations, gradients"),
        ({"gradients": "topk:2"}, r"^gradients: invalid codec 'topk:2'.*in \(0, 1\]"),
        ("activations=int8,activations=raw", "each direction at most once"),
        ("activations=int8;gradients=raw", "^activations: invalid codec 'int8;gradients=raw'"),
        ("activations=int8,gradients", "expected 'activations=<codec>,gradients=<codec>'"),
        ("weights=int8", "unknown codec direction"),
        (42, "string or a mapping"),
    ],
)
def test_direction_errors(codec: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_codecs(codec)  # type: ignore[arg-type]
