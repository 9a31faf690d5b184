"""`splitft bench federated --quick` end to end: one real edge process, four devices on Dirichlet
shards of the demo task, every variant side by side, and a report whose figures hang together."""

from __future__ import annotations

import json

import pytest

from splitft.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_bench_federated_quick_reports_every_variant_and_the_targets(tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(["bench", "federated", "--quick", "--json", str(out), "--markdown"]) == 0
    markdown = capsys.readouterr().out
    report = json.loads(out.read_text())
    config = report["config"]
    assert (config["devices"], config["alpha"], config["rounds"], config["local_steps"]) == (4, 0.5, 2, 2)
    assert report["steps_per_device"] == 4 and config["snr_db"] == [20.0]
    (run,) = report["seeds"]
    assert run["order"] == ["independent", "fedavg", "fedavg_shared", "aircomp_20db", "centralized"]
    assert len(run["shards"]) == 4 and all(run["shards"])
    results = run["results"]
    independent = results["independent"]
    assert len(independent["per_device"]) == 4 and independent["worst"] == min(independent["per_device"])
    assert results["centralized"]["steps"] == 4 * 4 and results["centralized"]["one_device_steps"] == 4
    for name in ("fedavg", "fedavg_shared", "aircomp_20db"):
        rounds = results[name]["rounds"]
        assert [r["round"] for r in rounds] == [0, 1]
        assert all(r["adapter_bytes_up"] > 0 and r["wire_bytes"] > 0 for r in rounds)
        assert rounds[0]["adapter_bytes_down"] == 0 < rounds[1]["adapter_bytes_down"]
    air = [r for r in results["aircomp_20db"]["rounds"] if r["participants"]]
    assert all(0 <= r["relative_error"] and 0 <= r["dropout_error"] and 0 <= r["noise_error"] for r in air)
    # with every device in, the devices left out cost nothing and the error is the noise's
    assert all(
        r["dropout_error"] == 0 and r["noise_error"] == r["relative_error"]
        for r in air
        if r["participants"] == 4
    )
    errors = report["aircomp_errors"]["aircomp_20db"]
    assert errors["rounds"] == 2 and errors["device_rounds_left_out"] == sum(
        4 - r["participants"] for r in results["aircomp_20db"]["rounds"]
    )
    assert "aircomp_20db: global adapter's error against FedAvg per round" in markdown
    accuracy = report["accuracy_points"]
    assert accuracy["fedavg"]["mean"] == pytest.approx(100 * results["fedavg"]["accuracy"])
    assert accuracy["independent_mean"]["mean"] == pytest.approx(100 * independent["mean"])
    assert [t["target"] for t in report["targets"]] == [
        "fedavg - independent_mean >= 5 points",
        "centralized - fedavg <= 3 points",
        "|fedavg - aircomp_20db| <= 1 point",
    ]
    gain = report["targets"][0]
    assert gain["met"] == (gain["value"] >= 5.0)
    # (e) the shared trunk: every device of a round steps it in turn, so its last export holds them all
    assert [r["trunk_steps"] for r in results["fedavg_shared"]["rounds"]] == [4 * 2, 4 * 2]
    # ... and every device uploads the trunk part, of which the aggregate keeps one: 3 of 4 redundant
    for row in results["fedavg_shared"]["rounds"]:
        assert 0 < row["trunk_part_bytes"] < row["adapter_bytes_up"] / 4
        assert row["redundant_trunk_bytes_up"] == 3 * row["trunk_part_bytes"]
    # validation (carved from the training data) and test (the task's held-out split) are disjoint sets
    sizes = report["examples"]
    assert sizes["validation"] > 0 and sizes["test"] > 0 and sizes["train"] > sizes["validation"]
    assert all(0 <= r["validation_accuracy"] <= 1 for r in results["fedavg"]["rounds"])
    assert results["fedavg"]["validation_accuracy"] == results["fedavg"]["rounds"][-1]["validation_accuracy"]
    assert len(report["validation_curves"]["fedavg"]) == 2
    trunk = report["trunk_adapter"]
    assert trunk["shared"] == pytest.approx(100 * results["fedavg_shared"]["accuracy"])
    assert trunk["shared_minus_averaged"] == pytest.approx(trunk["shared"] - trunk["averaged"], abs=0.01)
    assert "| fedavg |" in markdown and "| fedavg_shared |" in markdown
    assert "trunk_adapter averaged (fedavg)" in markdown
    assert "load average" in markdown
