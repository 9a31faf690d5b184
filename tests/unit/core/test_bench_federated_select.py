"""`bench federated --select`: each variant's learning rate is chosen on validation alone, and only
the chosen rate's test accuracy is reported; reports that are not one grid are refused."""

from __future__ import annotations

import json

import pytest

from splitft.bench.federated import FederatedBenchConfig
from splitft.bench.federated_report import summarize
from splitft.bench.federated_select import markdown_table, select_by_validation
from splitft.cli import main
from splitft.errors import InvalidArgument


def _run(seed: int, test: dict[str, float], valid: dict[str, float]) -> dict:
    """One seed's results: `test` and `valid` accuracies per variant (fedavg, aircomp_20db, centralized,
    independent)."""
    rounds = [{"round": 0, "adapter_bytes_up": 4, "adapter_bytes_down": 0, "wire_bytes": 1,
               "mean_last_loss": 1.0, "mean_loss": 1.0, "validation_accuracy": 0.5}]  # fmt: skip
    rows = {
        name: {"accuracy": test[name], "validation_accuracy": valid[name], "rounds": rounds}
        for name in ("fedavg", "aircomp_20db")
        if name in test
    }
    return {
        "seed": seed,
        "initial_accuracy": 0.25,
        "initial_validation_accuracy": 0.3,
        "results": {
            "independent": {"per_device": [test["independent"]], "mean": test["independent"],
                            "worst": test["independent"] - 0.1, "validation_mean": valid["independent"]},
            **rows,
            "centralized": {"accuracy": test["centralized"], "validation_accuracy": valid["centralized"],
                            "accuracy_one_device_steps": 0.5, "validation_accuracy_one_device_steps": 0.5},
        },
    }  # fmt: skip


def _report(lr: float, runs: list[dict], **config: object) -> str:
    summary = summarize(runs, FederatedBenchConfig(devices=1))
    cfg = {"devices": 1, "alpha": 0.5, "rounds": 1, "local_steps": 1, "lr": lr, "seeds": len(runs),
           "first_seed": 0, "snr_db": [20.0], **config}  # fmt: skip
    return json.dumps({"benchmark": "federated", "config": cfg, "seeds": runs, "steps_per_device": 1,
                       "load_average": {"before": [1, 1, 1], "after": [1, 1, 1], "cpus": 2},
                       "seconds": 1.0, **summary})  # fmt: skip


def _grid() -> list[str]:
    """Two rates: on validation fedavg and centralized prefer 4e-3, aircomp and independent 1e-3; on
    test it is the other way round, so a choice that peeked at test would show."""
    low_test = {"fedavg": 0.9, "aircomp_20db": 0.9, "centralized": 0.95, "independent": 0.4}
    low_valid = {"fedavg": 0.7, "aircomp_20db": 0.8, "centralized": 0.7, "independent": 0.6}
    high_test = {"fedavg": 0.8, "aircomp_20db": 0.95, "centralized": 0.85, "independent": 0.6}
    high_valid = {"fedavg": 0.8, "aircomp_20db": 0.7, "centralized": 0.9, "independent": 0.5}
    low = [_run(s, low_test, low_valid) for s in (0, 1)]
    high = [_run(s, high_test, high_valid) for s in (0, 1)]
    return [_report(4e-3, high), _report(1e-3, low)]


def test_each_variant_gets_the_rate_of_its_best_validation_and_that_rate_s_test() -> None:
    selection = json.loads(select_by_validation(_grid()))
    chosen = {name: row["lr"] for name, row in selection["variants"].items()}
    assert chosen == {
        "independent_mean": 1e-3, "fedavg": 4e-3, "aircomp_20db": 1e-3, "centralized": 4e-3,
        "independent_worst": 1e-3, "centralized_one_device_steps": 4e-3, "initial": 1e-3,
    }  # fmt: skip
    variants = selection["variants"]
    assert variants["fedavg"]["test"]["mean"] == 80.0 and variants["fedavg"]["validation_mean"] == 80.0
    assert variants["fedavg"]["validation_by_setting"] == {"0.001": 70.0, "0.004": 80.0}
    assert variants["aircomp_20db"]["test"]["mean"] == 90.0
    assert variants["independent_worst"]["test"]["mean"] == 30.0  # independent's run at 1e-3
    assert selection["grid"] == ["0.001", "0.004"] and selection["seeds"] == [0, 1]
    targets = {t["target"]: (t["value"], t["met"]) for t in selection["targets"]}
    assert targets == {
        "fedavg - independent_mean >= 5 points": (40.0, True),
        "centralized - fedavg <= 3 points": (5.0, False),
        "|fedavg - aircomp_20db| <= 1 point": (10.0, False),
    }
    table = markdown_table(json.dumps(selection))
    assert "| fedavg | 0.004 | 70.0 / 80.0 | 80.0% | 80.0% | 80.0% | 80.0 / 80.0 |" in table
    assert "| centralized - fedavg <= 3 points | 5.00 | no |" in table


def test_a_tie_on_validation_takes_the_lower_rate_and_a_row_some_runs_lack_is_chosen_among_the_rest() -> None:
    same = {"fedavg": 0.8, "aircomp_20db": 0.8, "centralized": 0.8, "independent": 0.5}
    only_fed = {k: v for k, v in same.items() if k != "aircomp_20db"}
    a = _report(2e-3, [_run(0, same, same)])
    b = _report(1e-3, [_run(0, only_fed, only_fed)], snr_db=[])
    selection = json.loads(select_by_validation([a, b]))
    assert selection["variants"]["fedavg"]["lr"] == 1e-3
    assert selection["variants"]["aircomp_20db"]["lr"] == 2e-3
    assert selection["variants"]["aircomp_20db"]["candidates"] == 1


def test_a_server_momentum_grid_is_chosen_over_on_validation_like_the_rate() -> None:
    """FedAvgM's momentum is part of the setting: fedavg takes m0.5 (better on validation, worse on
    test), centralized, which momentum does not touch, ties and keeps plain FedAvg's report."""
    plain_test = {"fedavg": 0.9, "aircomp_20db": 0.9, "centralized": 0.9, "independent": 0.5}
    plain_valid = {"fedavg": 0.7, "aircomp_20db": 0.9, "centralized": 0.8, "independent": 0.5}
    momentum_test = {**plain_test, "fedavg": 0.6, "aircomp_20db": 0.5}
    momentum_valid = {**plain_valid, "fedavg": 0.95, "aircomp_20db": 0.5}
    plain = _report(2e-3, [_run(0, plain_test, plain_valid)])
    momentum = _report(2e-3, [_run(0, momentum_test, momentum_valid)], server_momentum=0.5)
    selection = json.loads(select_by_validation([momentum, plain]))
    chosen = {name: row["setting"] for name, row in selection["variants"].items()}
    assert chosen["fedavg"] == "0.002 m0.5" and selection["variants"]["fedavg"]["test"]["mean"] == 60.0
    assert chosen["aircomp_20db"] == "0.002" and chosen["centralized"] == "0.002"
    assert selection["variants"]["fedavg"]["server_momentum"] == 0.5
    assert selection["grid"] == ["0.002", "0.002 m0.5"]
    assert "| fedavg | 0.002 m0.5 | 70.0 / 95.0 | 60.0% |" in markdown_table(json.dumps(selection))


def test_an_lr_schedule_is_part_of_the_setting_and_a_tie_keeps_the_constant_rate() -> None:
    """Each variant chooses its schedule on validation like its rate: fedavg takes cosine (better on
    validation), centralized ties and keeps the constant rate (the simpler setting)."""
    constant = {"fedavg": 0.8, "aircomp_20db": 0.8, "centralized": 0.9, "independent": 0.5}
    cosine_valid = {**constant, "fedavg": 0.9}
    plain = _report(2e-3, [_run(0, constant, constant)])
    cosine = _report(2e-3, [_run(0, {**constant, "fedavg": 0.7}, cosine_valid)], lr_schedule="cosine")
    selection = json.loads(select_by_validation([cosine, plain]))
    chosen = {name: row["setting"] for name, row in selection["variants"].items()}
    assert chosen["fedavg"] == "0.002 cosine" and selection["variants"]["fedavg"]["test"]["mean"] == 70.0
    assert selection["variants"]["fedavg"]["lr_schedule"] == "cosine"
    assert (
        chosen["centralized"] == "0.002" and selection["variants"]["centralized"]["lr_schedule"] == "constant"
    )
    assert selection["grid"] == ["0.002", "0.002 cosine"]


def test_reports_that_are_not_one_grid_are_refused(tmp_path, capsys) -> None:
    one, other = _grid()
    with pytest.raises(
        InvalidArgument, match=r"share a setting \(lr, server step, schedule\): \['0.004', '0.004'\]"
    ):
        select_by_validation([one, one])
    changed = json.loads(other)
    changed["config"]["rounds"] = 7
    with pytest.raises(InvalidArgument, match="differ in their config"):
        select_by_validation([one, json.dumps(changed)])
    fewer = json.loads(other)
    fewer["seeds"] = fewer["seeds"][:1]
    with pytest.raises(InvalidArgument, match="different seeds"):
        select_by_validation([one, json.dumps(fewer)])
    with pytest.raises(InvalidArgument, match="JSON reports with"):
        select_by_validation([one, json.dumps({"benchmark": "federated"})])
    (tmp_path / "a.json").write_text(one)
    (tmp_path / "bad.json").write_text("[1, 2")
    assert main(["bench", "federated", "--select", str(tmp_path / "a.json"), str(tmp_path / "bad.json")]) == 2
    assert "--select: cannot read the report" in capsys.readouterr().err
    (tmp_path / "b.json").write_text(other)
    assert main(["bench", "federated", "--select", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                 "--markdown"]) == 0  # fmt: skip
    assert "| centralized - fedavg <= 3 points | 5.00 | no |" in capsys.readouterr().out
