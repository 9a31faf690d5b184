"""Projection of a plan onto a device class, the front and the recommendation rule
(splitft.plan.choice), the plan file's validation, and an `auto` job spec with a point applied."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from splitft.jobs.spec import JobCreate
from splitft.plan.candidates import Candidate, CandidateResult
from splitft.plan.choice import DeviceClass, PlanFile, plan_for_class, project, recommended_point
from tests.support.plans import MIB, plan_file

FAST = DeviceClass(memory_bytes=1024 * MIB, uplink_mbps=1000.0, downlink_mbps=1000.0)
SLOW = DeviceClass(memory_bytes=1024 * MIB, uplink_mbps=1.0, downlink_mbps=1.0)
TINY = DeviceClass(memory_bytes=128 * MIB, uplink_mbps=1000.0, downlink_mbps=1000.0)


def test_projection_adds_device_compute_over_speed_edge_compute_and_the_link() -> None:
    plan = plan_file()
    big = plan.candidates[0]
    cls = DeviceClass(memory_bytes=399 * MIB, uplink_mbps=8.0, downlink_mbps=16.0, speed_factor=0.5)
    p = project(big, cls, plan.host_flops)
    assert p is not None and not p.fits  # 400 MiB > 399 MiB
    # 0.2 s / 0.5 + 0.1 s + 8e6 bit / 8e6 bit/s + 8e6 bit / 16e6 bit/s
    assert p.step_time_s == pytest.approx(0.4 + 0.1 + 1.0 + 0.5)
    assert p.link_time_s == pytest.approx(1.5) and p.bytes_per_step == 2_000_000
    flops = DeviceClass(memory_bytes=400 * MIB, uplink_mbps=8.0, downlink_mbps=16.0, flops=2.5e9)
    p = project(big, flops, plan.host_flops)
    assert p is not None and p.fits and p.device_time_s == pytest.approx(0.2 / 0.25)
    assert project(plan.candidates[3], cls, plan.host_flops) is None  # refused: nothing to project


def test_each_class_gets_the_point_of_the_rule() -> None:
    plan = plan_file()
    # Fast link, enough memory: BIG (best loss) and WIRE (within 5%) fit; BIG's step is shorter.
    assert plan_for_class(plan, FAST).recommended == "k2j1-r8-raw/raw-fp32"
    # Slow link: WIRE sends a quarter of the bytes, within 5% of BIG's loss.
    assert plan_for_class(plan, SLOW).recommended == "k2j1-r8-int8/int8-fp32"
    # Little memory: only SMALL fits, whatever its loss.
    assert plan_for_class(plan, TINY).recommended == "k1j0-r4-raw/raw-int8"
    none = DeviceClass(memory_bytes=MIB, uplink_mbps=1.0, downlink_mbps=1.0)
    assert plan_for_class(plan, none).recommended is None
    # A zero tolerance keeps the most accurate fitting point even on the slow link.
    strict = plan.model_copy(update={"loss_tolerance": 0.0})
    assert plan_for_class(strict, SLOW).recommended == "k2j1-r8-raw/raw-fp32"


def test_the_front_and_the_recommendation_are_consistent() -> None:
    for cls in (FAST, SLOW, TINY):
        planned = plan_for_class(plan_file(), cls)
        assert planned.recommended in planned.front
        assert {p.name for p in planned.projected} == {r.name for r in planned.candidates[:3]}
        assert "within 5%" in planned.rule


def test_recommended_point_carries_what_the_device_runs() -> None:
    point = recommended_point(plan_file(), "plan-1", SLOW)
    assert point is not None
    assert (point.device_layers, point.head_layers, point.lora_r) == (2, 1, 8)
    assert point.codec == "int8" and point.precision == "fp32" and point.plan_id == "plan-1"
    spec = JobCreate.model_validate(
        {
            "name": "auto",
            "model": "tiny-bert",
            "split": "auto",
            "lora": {"r": 4, "target_modules": ["query"]},
            "steps": 2,
            "devices": ["a"],
        }
    )
    with pytest.raises(Exception, match="no device_layers"):
        _ = spec.layers
    applied = spec.with_point(point)
    assert applied.layers == (2, 1) and applied.lora is not None and applied.lora.r == 8
    assert applied.codec == "int8" and applied.lora.target_modules == ["query"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"split": "manual"}, "device_layers is required"),
        ({"method": "taskedge", "lora": None}, "needs method lora"),
        ({"split": "sometimes"}, "split"),
        ({"precision": "int4"}, "precision"),
    ],
)
def test_auto_job_specs_are_checked(overrides: dict, message: str) -> None:
    body = {
        "name": "auto",
        "model": "m",
        "split": "auto",
        "lora": {"r": 4, "target_modules": ["query"]},
        "steps": 2,
        "devices": ["a"],
        **overrides,
    }
    with pytest.raises(ValidationError, match=message):
        JobCreate.model_validate(body)


def test_plan_files_and_classes_are_validated() -> None:
    body = plan_file().model_dump(mode="json")
    assert PlanFile.model_validate(body).candidates[0].measured is not None
    with pytest.raises(ValidationError, match="exactly for a measured candidate"):
        CandidateResult.model_validate({**body["candidates"][0], "status": "failed"})
    with pytest.raises(ValidationError, match="extra"):
        PlanFile.model_validate({**body, "surprise": 1})
    with pytest.raises(ValidationError):
        PlanFile.model_validate({**body, "candidates": []})
    with pytest.raises(ValidationError, match="not both"):
        DeviceClass(memory_bytes=1, uplink_mbps=1.0, downlink_mbps=1.0, speed_factor=1.0, flops=1.0)
    with pytest.raises(ValidationError):
        DeviceClass(memory_bytes=0, uplink_mbps=1.0, downlink_mbps=1.0)
    with pytest.raises(ValidationError):
        DeviceClass.model_validate({"memory_bytes": 1, "uplink_mbps": "fast", "downlink_mbps": 1.0})


def test_a_candidate_names_why_it_cannot_run() -> None:
    assert "no trunk block" in (Candidate(device_layers=4, head_layers=2, lora_r=4).problem(6) or "")
    assert Candidate(device_layers=4, head_layers=1, lora_r=4).problem(6) is None
    lowrank_up = Candidate(device_layers=1, head_layers=0, lora_r=4, activations="lowrank:4")
    assert "gradients only" in (lowrank_up.problem(6) or "")


def test_plan_project_command_recommends_per_class_and_refuses_bad_files(tmp_path, capsys) -> None:
    from splitft.cli import main

    source = tmp_path / "plan.json"
    source.write_text(plan_file().model_dump_json())
    base = ["plan", "project", "--plan", str(source), "--device-memory", "1GiB"]
    assert main([*base, "--uplink-mbps", "1000", "--downlink-mbps", "1000"]) == 0
    assert "recommended: k2j1-r8-raw/raw-fp32" in capsys.readouterr().out
    out = tmp_path / "slow"
    assert main([*base, "--uplink-mbps", "1", "--downlink-mbps", "1", "--out", str(out)]) == 0
    assert "recommended: k2j1-r8-int8/int8-fp32" in capsys.readouterr().out
    assert (
        PlanFile.model_validate_json((out / "plan.json").read_text()).recommended == "k2j1-r8-int8/int8-fp32"
    )
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    source.write_text('{"model": "m"}')
    assert main([*base, "--uplink-mbps", "1", "--downlink-mbps", "1"]) == 2
    assert "notaplanfile" in "".join(capsys.readouterr().err.split())


def test_the_planner_skips_what_the_budget_or_the_count_leaves_no_room_for(tmp_path) -> None:
    """`_measure_all`'s bounds, without starting anything: the budget is spent before the first
    candidate, so no worker runs; a refused candidate is reported whatever the bounds."""
    import time

    from splitft.bench.plan import PlanConfig, _measure_all, candidates

    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4}')
    cls = DeviceClass(memory_bytes=MIB, uplink_mbps=1.0, downlink_mbps=1.0)
    config = PlanConfig(
        model_dir=str(tmp_path),
        out=str(tmp_path / "out"),
        device_class=cls,
        splits=[(1, 0), (3, 1)],
        ranks=[4],
        activations_codecs=["raw"],
        gradients_codecs=["raw"],
        precisions=["fp32"],
        budget_s=1.0,
    )
    found = candidates(config, 4)
    assert [c.name for c in found] == ["k1j0-r4-raw/raw-fp32", "k3j1-r4-raw/raw-fp32"]
    results = _measure_all(config, found, 4, {}, started=time.monotonic() - 5)
    assert [(r.status, r.reason) for r in results] == [
        ("skipped", "--budget-s spent"),
        ("refused", "split k=3, j=1 leaves no trunk block of the model's 4 (need k + j < 4)"),
    ]
    planned = plan_for_class(
        PlanFile(model="m", created_at="2026-11-30T00:00:00Z", num_layers=4, candidates=results), cls
    )
    assert planned.recommended is None and planned.front == []


def test_a_measured_candidate_with_a_codec_no_device_could_run_is_refused() -> None:
    body = plan_file().model_dump(mode="json")
    body["candidates"][0]["candidate"]["activations"] = "lowrank:4"
    with pytest.raises(ValidationError, match="gradients only"):
        PlanFile.model_validate(body)
