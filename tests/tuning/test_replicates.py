"""Replicates of a configuration: the mean and sample std over seeds, the
per-epoch and final reports of run_replicates (Tune's report replaced by a
recorder), and the evaluation reports' JSON round trip that `sweep report`
relies on."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

from cnnf.config import EvalConfig, ExperimentConfig
from cnnf.report import AttackResult, Check, Curve, EvalReport
from cnnf.train import EpochResult, TrainState
from tuning import replicates
from tuning.experiments import FINAL_KEY
from tuning.kinds.cnnf import _seeded_cnnf
from tuning.replicates import EVAL_JSON, ReplicateOutcome, mean_over_replicates, run_replicates

# --- mean_over_replicates ------------------------------------------------------------


def test_mean_and_sample_std() -> None:
    reps = [{"val_acc": 0.5, "train_loss": 1.0, "epoch": 3}, {"val_acc": 0.7, "train_loss": 2.0, "epoch": 3},
            {"val_acc": 0.9, "train_loss": 6.0, "epoch": 3}]
    out = mean_over_replicates(reps)
    assert out["val_acc"] == pytest.approx(0.7)
    assert out["val_acc_std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))  # n - 1 in the denominator
    assert out["val_acc_std"] == pytest.approx(0.2)
    assert out["train_loss"] == pytest.approx(3.0)
    assert out["train_loss_std"] == pytest.approx(statistics.stdev([1.0, 2.0, 6.0]))
    assert out["epoch"] == 3 and "epoch_std" not in out


def test_two_replicates() -> None:
    out = mean_over_replicates([{"val_clean_acc": 0.25}, {"val_clean_acc": 0.75}])
    assert out == pytest.approx({"val_clean_acc": 0.5, "val_clean_acc_std": math.sqrt(0.125)})


def test_equal_replicates_have_zero_std() -> None:
    out = mean_over_replicates([{"val_acc": 0.6}] * 4)
    assert out["val_acc"] == pytest.approx(0.6) and out["val_acc_std"] == 0.0


def test_single_replicate_is_returned_as_is() -> None:
    one = {"val_acc": 0.6, "epoch": 2, "note": "x", FINAL_KEY: True}
    out = mean_over_replicates([one])
    assert out == one and "val_acc_std" not in out
    out["val_acc"] = 0.0
    assert one["val_acc"] == 0.6  # a copy


def test_non_numeric_and_partial_metrics_are_left_out() -> None:
    reps = [{"val_acc": 0.5, "flag": True, "name": "a", "only_first": 1.0},
            {"val_acc": 0.7, "flag": False, "name": "b"}]
    assert set(mean_over_replicates(reps)) == {"val_acc", "val_acc_std"}


# --- run_replicates without Tune ------------------------------------------------------------


class Recorder:
    """Stands in for replicates._report (tune.report with a checkpoint)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def __call__(self, metrics: dict, states: list, config: Any, extra: Optional[dict] = None,
                 write_report: Optional[Callable[[Path], None]] = None, write_root: Optional[Callable[[Path], None]] = None) -> None:
        self.reports.append({"metrics": metrics, "states": states, "extra": extra, "write": write_report, "write_root": write_root})


def fake_run_one(epochs: int, acc: dict[int, list[float]]) -> Callable:
    """A replicate whose val_acc at each epoch is acc[seed][epoch - 1]."""

    def run_one(cfg: ExperimentConfig, state: Optional[TrainState], on_epoch: Callable) -> ReplicateOutcome:
        seed = cfg.train.seed
        for epoch in range(1, epochs + 1):
            result = EpochResult(epoch, 1.0 / epoch, 1.0 / epoch, 0.0, 0.5, acc[seed][epoch - 1], 0.1, 100.0)
            snapshot = TrainState(epoch, {"w": torch.tensor([float(seed)])}, {})
            on_epoch(result, snapshot)
        metrics = {"epoch": epochs, "val_acc": acc[seed][-1], "val_clean_acc": acc[seed][-1] - 0.1,
                   "test_clean_acc": 0.3, "train_loss": 1.0 / epochs}

        def write(folder: Path) -> None:
            (folder / "evaluation.md").write_text(f"seed {seed}\n")

        return ReplicateOutcome(metrics, {"eval": [{"split": "val", "seed": seed}, {"split": "test"}]}, write)

    return run_one


def test_run_replicates_reports_each_epoch_mean_then_the_final_mean(monkeypatch, tmp_path: Path) -> None:
    rec = Recorder()
    monkeypatch.setattr(replicates, "_report", rec)
    cfg = ExperimentConfig()
    acc = {0: [0.1, 0.2, 0.3], 1: [0.3, 0.4, 0.5], 2: [0.2, 0.3, 0.7]}
    run_replicates(cfg, 3, _seeded_cnnf, 3, fake_run_one(3, acc), [None] * 3, ("cnnf", "trial 0: x=1"))

    # epochs 1 and 2 on their own; epoch 3 goes with the final report
    assert len(rec.reports) == 3
    for epoch, r in zip((1, 2), rec.reports):
        m = r["metrics"]
        assert m["epoch"] == epoch and FINAL_KEY not in m
        assert m["val_acc"] == pytest.approx(statistics.mean(acc[s][epoch - 1] for s in acc))
        assert m["val_acc_std"] == pytest.approx(statistics.stdev(acc[s][epoch - 1] for s in acc))
        assert [float(s.model["w"]) for s in r["states"]] == [0.0, 1.0, 2.0]  # every replicate's state
    final = rec.reports[-1]
    m = final["metrics"]
    assert m[FINAL_KEY] is True
    assert [(s.epoch, float(s.model["w"])) for s in final["states"]] == [(3, 0.0), (3, 1.0), (3, 2.0)]  # the last epoch's states
    assert m["val_acc"] == pytest.approx(statistics.mean([0.3, 0.5, 0.7]))
    assert m["val_clean_acc_std"] == pytest.approx(statistics.stdev([0.2, 0.4, 0.6]))
    # the per-seed table in the checkpoint's config.json
    table = final["extra"]["replicates"]
    assert [row["seed"] for row in table] == [0, 1, 2]
    assert m["val_acc"] == pytest.approx(statistics.mean(row["metrics"]["val_acc"] for row in table))
    # the report folder: the first replicate's files, every replicate's evaluation, the replicates table
    final["write"](tmp_path)
    assert (tmp_path / "evaluation.md").read_text() == "seed 0\n"
    evals = json.loads((tmp_path / EVAL_JSON).read_text())
    assert [pair[0]["seed"] for pair in evals] == [0, 1, 2]
    md = (tmp_path / "replicates.md").read_text()
    assert "| seed | val_acc | val_clean_acc |" in md  # test_ metrics are not shown
    assert "| 1 | 0.5000 | 0.4000 |" in md
    # the trial figure, drawn in the trial's process into the checkpoint root
    assert all(r["write_root"] is None for r in rec.reports[:-1])
    final["write_root"](tmp_path)
    assert (tmp_path / "trial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_replicates_with_one_replicate(monkeypatch, tmp_path: Path) -> None:
    rec = Recorder()
    monkeypatch.setattr(replicates, "_report", rec)
    run_replicates(ExperimentConfig(), 1, _seeded_cnnf, 2, fake_run_one(2, {0: [0.4, 0.6]}), [None])
    assert [r["metrics"].get("val_acc") for r in rec.reports] == [0.4, 0.6]
    final = rec.reports[-1]
    assert final["metrics"][FINAL_KEY] is True and "val_acc_std" not in final["metrics"]
    assert "replicates" not in final["extra"]
    final["write"](tmp_path)
    assert json.loads((tmp_path / EVAL_JSON).read_text()) == [[{"split": "val", "seed": 0}, {"split": "test"}]]
    assert not (tmp_path / "replicates.md").exists()


def test_replicate_seeds() -> None:
    cfg = replace(ExperimentConfig(), train=replace(ExperimentConfig().train, seed=10))
    assert [_seeded_cnnf(cfg, i).train.seed for i in range(3)] == [10, 11, 12]
    assert _seeded_cnnf(cfg, 0) is cfg


# --- EvalReport JSON round trip -------------------------------------------------------------


def hand_built_report() -> EvalReport:
    return EvalReport(
        split="val", n_examples=32, n_classes=10, n_iterations=2, prediction="avg", seeds=(0, 1),
        clean_acc=0.75, clean_std=0.0,
        attacks=(AttackResult("pgd_first", "pgd_linf", "first", "exact", 0.1, "linf", 0.25, 0.01, (0.24, 0.26), 1.5, 40.0),
                 AttackResult("cw", "cw_l2", "avg", "exact", None, "none", 0.5, 0.0, (0.5, 0.5), 2.0, 30.0)),
        min_acc=0.2, min_std=0.02,
        curves=(Curve("pgd_e2e", "pgd_linf", "avg", "linf", (0.0, 0.05, 0.1), (0.75, 0.5, 0.25), (0.0, 0.01, 0.02)),),
        checks=(Check(1, "gradients", "pass", "fine", (("ratio", 0.5), ("n", 3.0))), Check(2, "transfer", "skipped", "no source")),
        seconds=3.5,
    )


def round_trip(report: EvalReport) -> EvalReport:
    return EvalReport.from_dict(json.loads(json.dumps(report.as_dict())))


def test_hand_built_report_round_trips_through_json() -> None:
    report = hand_built_report()
    back = round_trip(report)
    assert back == report
    assert back.metrics("val_") == report.metrics("val_")
    assert isinstance(back.attacks[0].per_seed, tuple) and isinstance(back.checks[0].numbers[0], tuple)


@pytest.fixture(scope="module")
def evaluated() -> tuple[EvalReport, EvalReport]:
    """A small untrained CNN-F evaluated like a sweep trial: PGD first and end
    to end with a curve, FGSM, the integrity checks; then the test split
    without checks (a few seconds on 2 cores)."""
    from cnnf.config import DataConfig
    from cnnf.data import load_splits
    from cnnf.evaluate import evaluate, suite_from_config
    from cnnf.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: threads only add overhead, more so on a busy machine
    try:
        torch.manual_seed(0)
        net = create_model("cnnf_mnist_small", ind=0).eval()
        splits = load_splits(DataConfig(dataset="fashion-mnist-sample", n_train=64))
        suite = suite_from_config(EvalConfig(pgd_steps=2, n_examples=8, eps_grid=(0.05,), check_examples=4, batch_size=8), 1)
        val = evaluate(net, splits.val, suite, split="val")
        test = evaluate(net, splits.test, replace(suite, checks=False), split="test")
    finally:
        torch.set_num_threads(threads)
    return val, test


def test_evaluated_report_round_trips_through_json(evaluated) -> None:
    val, test = evaluated
    assert val.curves and len(val.checks) == 8 and {a.label for a in val.attacks} == {"pgd_first", "pgd_e2e", "fgsm", "apgd_ce"}
    assert not test.checks
    for report in (val, test):
        back = round_trip(report)
        assert back.as_dict() == report.as_dict() or _equal_with_nan(back.as_dict(), report.as_dict())
        assert back.metrics("val_") == pytest.approx(report.metrics("val_"), nan_ok=True)


def test_eval_json_as_trials_write_it(evaluated, tmp_path: Path) -> None:
    """report/eval.json is [[val, test] per replicate] of as_dict()s; `sweep report` reads it back."""
    val, test = evaluated
    (tmp_path / EVAL_JSON).write_text(json.dumps([[val.as_dict(), test.as_dict()]] * 2, default=str))
    raw = json.loads((tmp_path / EVAL_JSON).read_text())
    pairs = [[EvalReport.from_dict(d) for d in pair] for pair in raw]
    assert len(pairs) == 2 and all(p[0].split == "val" and p[1].split == "test" for p in pairs)
    assert pairs[0][0].acc("pgd_first") == val.acc("pgd_first")


def _equal_with_nan(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_with_nan(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_with_nan(x, y) for x, y in zip(a, b))
    return a == b
