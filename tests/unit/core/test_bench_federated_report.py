"""`bench federated`'s config checks and report arithmetic, on hand-made runs (the e2e test runs the
real thing): spread over seeds in points, targets met or not from the means, bytes per round."""

from __future__ import annotations

import json

import pytest

from splitft.bench.federated import QUICK, FederatedBenchConfig
from splitft.bench.federated_report import markdown_table, merge_reports, summarize
from splitft.cli import main
from splitft.errors import InvalidArgument


def _round(number: int) -> dict:
    return {"round": number, "adapter_bytes_up": 400, "adapter_bytes_down": 0 if number == 0 else 404,
            "wire_bytes": 1000 + number, "mean_last_loss": 1.0, "mean_loss": 1.0 - number / 10,
            "validation_accuracy": 0.5 + number / 10}  # fmt: skip


def _run(seed: int, fedavg: float, aircomp: float) -> dict:
    return {
        "seed": seed,
        "initial_accuracy": 0.25,
        "initial_validation_accuracy": 0.3,
        "results": {
            "independent": {"per_device": [0.5, 0.7], "mean": 0.6, "worst": 0.5, "validation_mean": 0.62},
            "fedavg": {"accuracy": fedavg, "validation_accuracy": 0.6, "rounds": [_round(0), _round(1)]},
            "fedavg_shared": {
                "accuracy": fedavg + 0.02,
                "validation_accuracy": 0.6,
                "rounds": [_round(0), _round(1)],
            },
            "aircomp_20db": {
                "accuracy": aircomp,
                "validation_accuracy": 0.6,
                "rounds": [_round(0), _round(1)],
            },
            "centralized": {
                "accuracy": 0.8,
                "accuracy_one_device_steps": 0.7,
                "validation_accuracy": 0.9,
                "validation_accuracy_one_device_steps": 0.8,
            },
        },
    }


def test_the_summary_spreads_over_seeds_and_judges_the_targets_on_the_means() -> None:
    runs = [_run(0, 0.70, 0.69), _run(1, 0.76, 0.76)]
    summary = summarize(runs, FederatedBenchConfig(devices=2))
    accuracy = summary["accuracy_points"]
    assert accuracy["fedavg"] == {"mean": 73.0, "min": 70.0, "max": 76.0}
    assert accuracy["independent_worst"]["mean"] == 50.0 and accuracy["initial"]["mean"] == 25.0
    assert summary["per_seed_points"]["fedavg"] == [70.0, 76.0]
    # validation is reported apart from the test split, never mixed into it
    assert summary["validation_points"]["centralized"]["mean"] == 90.0
    assert summary["validation_points"]["independent_mean"]["mean"] == 62.0
    assert "independent_worst" not in summary["validation_points"]
    assert summary["validation_curves"]["fedavg"] == [
        {"validation": 50.0, "mean_loss": 1.0}, {"validation": 60.0, "mean_loss": 0.9}
    ]  # fmt: skip
    targets = {t["target"]: (t["value"], t["met"]) for t in summary["targets"]}
    assert targets == {
        "fedavg - independent_mean >= 5 points": (13.0, True),
        "centralized - fedavg <= 3 points": (7.0, False),
        "|fedavg - aircomp_20db| <= 1 point": (0.5, True),
    }
    assert summary["bytes_per_round"] == {
        "adapter_bytes_up": 400, "adapter_bytes_down": 404, "wire_bytes_training": 1000, "devices": 2,
    }  # fmt: skip
    assert summary["trunk_adapter"] == {"averaged": 73.0, "shared": 75.0, "shared_minus_averaged": 2.0}
    report = {
        "config": {"devices": 2, "alpha": 0.5, "rounds": 2, "local_steps": 3, "batch_size": 8,
                   "max_length": 64, "seeds": 2},
        "steps_per_device": 6, "load_average": {"before": [1, 2, 3], "after": [1, 2, 3], "cpus": 2},
        "seconds": 1.0, **summary,
    }  # fmt: skip
    table = markdown_table(json.dumps(report))
    assert "| fedavg | 73.0% | 70.0% | 76.0% | 70.0 / 76.0 | 60.0% |" in table
    assert "| 1 | 60.0% / 0.900 | 60.0% / 0.900 | 60.0% / 0.900 |" in table
    assert "| centralized - fedavg <= 3 points | 7.00 | no |" in table
    assert "| \\|fedavg - aircomp_20db\\| <= 1 point | 0.50 | yes |" in table
    assert "trunk_adapter averaged (fedavg) 73.0% vs shared (fedavg_shared) 75.0%: +2.00 points." in table
    assert "max length 64, seeds 2;" in table  # a report from before the server step: nothing claimed
    report["config"].update(lr=0.002, server_momentum=0.5, server_lr=1.0)
    assert (
        "max length 64, lr 0.002, server step FedAvgM (momentum 0.5, server lr 1) in every federated row, "
        "seeds 2;" in markdown_table(json.dumps(report))
    )


def test_the_config_refuses_nonsense_and_quick_is_a_valid_config() -> None:
    assert FederatedBenchConfig(**QUICK).steps == 4
    assert FederatedBenchConfig().steps == 40
    bad_configs = ({"devices": 0}, {"alpha": 0.0}, {"max_length": 4}, {"seeds": 0}, {"lr": -1.0},
                   {"first_seed": -1}, {"validation_fraction": 0.0}, {"validation_fraction": 1},
                   {"server_momentum": 1.0}, {"server_lr": 0.0})  # fmt: skip
    for bad in bad_configs:
        with pytest.raises(InvalidArgument):
            FederatedBenchConfig(**bad)


def _part(runs: list[dict], first_seed: int, seconds: float, load: float) -> str:
    config = {"devices": 2, "alpha": 0.5, "rounds": 2, "local_steps": 3, "batch_size": 8, "max_length": 64,
              "seeds": len(runs), "first_seed": first_seed}  # fmt: skip
    summary = summarize(runs, FederatedBenchConfig(devices=2))
    return json.dumps({"benchmark": "federated", "config": config, "steps_per_device": 6, "seeds": runs,
                       "load_average": {"before": [load, 1, 1], "after": [load, 1, 1], "cpus": 2},
                       "seconds": seconds, **summary})  # fmt: skip


def test_merging_parts_over_disjoint_seeds_gives_the_summary_of_all_the_seeds() -> None:
    runs = [_run(0, 0.70, 0.69), _run(1, 0.76, 0.76), _run(2, 0.64, 0.70)]
    merged = json.loads(merge_reports([_part(runs[1:], 1, 30.0, 9.0), _part(runs[:1], 0, 20.0, 5.0)]))
    assert [run["seed"] for run in merged["seeds"]] == [0, 1, 2]
    assert merged["accuracy_points"] == summarize(runs, FederatedBenchConfig(devices=2))["accuracy_points"]
    assert merged["accuracy_points"]["fedavg"] == {"mean": 70.0, "min": 64.0, "max": 76.0}
    assert merged["config"]["seeds"] == 3 and merged["config"]["first_seed"] == 0
    assert merged["seconds"] == 30.0 and merged["load_average"]["before"] == [9.0, 1, 1]
    assert [p["seeds"] for p in merged["parts"]] == [[1, 2], [0]]
    assert "| fedavg | 70.0% | 64.0% | 76.0% | 70.0 / 76.0 / 64.0 |" in markdown_table(json.dumps(merged))


def test_parts_that_ran_different_optional_rows_merge_into_the_rows_they_all_carry() -> None:
    """A part run with `--no-shared-trunk --snr-db 20` and one with every row: the merge keeps
    fedavg, aircomp_20db and the rest, and drops fedavg_shared (one part lacks it)."""
    full = json.loads(_part([_run(0, 0.70, 0.69)], 0, 1.0, 1.0))
    full["config"].update(snr_db=[0.0, 20.0], shared_trunk=True)
    full["seeds"][0]["results"]["aircomp_0db"] = full["seeds"][0]["results"]["aircomp_20db"]
    lean_run = _run(1, 0.76, 0.75)
    del lean_run["results"]["fedavg_shared"]
    lean = json.loads(_part([lean_run], 1, 1.0, 1.0))
    lean["config"].update(snr_db=[20.0], shared_trunk=False, lr_schedule="constant")
    merged = json.loads(merge_reports([json.dumps(full), json.dumps(lean)]))
    assert merged["config"]["snr_db"] == [20.0] and merged["config"]["shared_trunk"] is False
    assert set(merged["accuracy_points"]) >= {"fedavg", "aircomp_20db", "centralized"}
    assert "fedavg_shared" not in merged["accuracy_points"] and "aircomp_0db" not in merged["accuracy_points"]
    assert merged["accuracy_points"]["aircomp_20db"]["mean"] == 72.0  # (69 + 75) / 2
    lean["config"]["lr_schedule"] = "cosine"  # a different setting is not a row: refused
    with pytest.raises(InvalidArgument, match="differ in their config"):
        merge_reports([json.dumps(full), json.dumps(lean)])


def test_merging_refuses_shared_seeds_and_different_configs(tmp_path, capsys) -> None:
    one = _part([_run(0, 0.7, 0.7)], 0, 1.0, 1.0)
    with pytest.raises(InvalidArgument, match="share seeds"):
        merge_reports([one, one])
    other = json.loads(_part([_run(1, 0.7, 0.7)], 1, 1.0, 1.0))
    other["config"]["rounds"] = 3
    with pytest.raises(InvalidArgument, match="differ in their config"):
        merge_reports([one, json.dumps(other)])
    (tmp_path / "bad.json").write_text("{not json")
    assert (
        main(["bench", "federated", "--merge", str(tmp_path / "bad.json"), str(tmp_path / "none.json")]) == 2
    )
    assert "--merge: cannot read the report" in capsys.readouterr().err
