"""The metrics a trial logs are named by the library that computes them (the
evaluation suite, the FL pipeline); the tracker derives what to log from
them, and a metric nobody declared is logged with a warning, or is an error
under CNNF_STRICT_METRICS=1 (set for every test in tests/conftest.py)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from cnnf.config import EvalConfig, ExperimentConfig
from tests.conftest import TINY_SWEEP
from tuning.kinds import experiment_kind
from tuning.replicates import GPU_MEM_PEAK
from tuning.tracking import STRICT_METRICS_ENV, MlflowTrialCallback, UndeclaredMetricError


def _callback(base: ExperimentConfig) -> MlflowTrialCallback:
    # The MLflow client is created lazily: _metrics_of never touches the store.
    return MlflowTrialCallback("sqlite:///unused.db", "0", "parent", experiment_kind("cnnf"), base, "sweep", ["val_acc"], ["max"])


def test_cnnf_metrics_follow_the_suite() -> None:
    kind = experiment_kind("cnnf")
    names = kind.metrics(ExperimentConfig())
    for name in ("val_acc", "train_loss", "val_pgd_first_acc", "val_pgd_e2e_acc", "val_fgsm_acc", "val_min_acc",
                 "val_checks_flagged", "val_check_8_ok", "test_pgd_e2e_acc", "time_train_s", "time_eval_s",
                 "time_val_checks_s", "time_val_pgd_e2e_s", "time_test_fgsm_s"):
        assert name in names, name
    assert "test_checks_flagged" not in names, "the checks run on the validation split only"
    unchecked = kind.metrics(ExperimentConfig(eval=EvalConfig(checks=False)))
    assert not [n for n in unchecked if "check" in n and not n.startswith("time_")]
    assert len(set(names)) == len(names)


def test_undeclared_metric_is_an_error_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_METRICS_ENV, "1")
    cb = _callback(ExperimentConfig())
    trial = SimpleNamespace(trial_id="t0", config={"_trial": 0})
    result = {"val_acc": 0.5, "val_acc_std": 0.1, "epoch": 1, "timestamp": 1, "pid": 7, "done": False, "trial_id": "t0",
              "final_report": True, "trial_node_id": "abc", "iterations_since_restore": 1}
    assert cb._metrics_of(trial, result) == {"val_acc": 0.5, "val_acc_std": 0.1}, "Tune's bookkeeping is not a metric"
    with pytest.raises(UndeclaredMetricError, match="'val_new_attack_acc'.*does not declare"):
        cb._metrics_of(trial, {**result, "val_new_attack_acc": 0.3})


def test_undeclared_metric_is_logged_with_a_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(STRICT_METRICS_ENV, "0")
    cb = _callback(ExperimentConfig())
    trial = SimpleNamespace(trial_id="t0", config={"_trial": 0})
    with caplog.at_level(logging.WARNING, logger="tuning.tracking"):
        got = cb._metrics_of(trial, {"val_acc": 0.5, "val_new_attack_acc": 0.3})
        cb._metrics_of(trial, {"val_new_attack_acc": 0.2})
    assert got == {"val_acc": 0.5, "val_new_attack_acc": 0.3}, "a finished trial's data is never dropped"
    warned = [r.getMessage() for r in caplog.records if "val_new_attack_acc" in r.getMessage()]
    assert len(warned) == 1 and "logged anyway" in warned[0], "warned once per name"


@pytest.mark.slow
def test_a_new_attack_in_the_suite_reaches_the_mlflow_child_run(tmp_path) -> None:
    """A kind whose suite has one more attack than the CNN-F trial's, declared
    only in that suite: its accuracy and time land in the trial's MLflow run,
    beside every other metric the kind declares for the trial's config."""
    from mlflow import MlflowClient

    from sweeps.spec import parse_sweep
    from tests.tuning import extra_attack
    from tuning.runner import launch_sweep
    from tuning.space import apply_params

    extra_attack.register()
    text = (TINY_SWEEP.replace("experiment: cnnf", f"experiment: {extra_attack.KIND}")
            .replace("n_train: 256", "n_train: 128").replace("epochs: 2", "epochs: 1")
            .replace("n_examples: 32", "n_examples: 16\n    check_examples: 16")
            .replace("num_trials: 2", "num_trials: 1").replace("resources:", f"output_dir: {tmp_path}\nresources:"))
    loaded = parse_sweep(text, "extra.yaml")
    outcome = launch_sweep(loaded.config, loaded.text)
    assert (outcome.n_finished, outcome.n_failed) == (1, 0)
    client = MlflowClient(outcome.tracking_uri)
    (child,) = [r for r in client.search_runs([outcome.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    metrics = child.data.metrics
    label = extra_attack.LABEL
    assert 0.0 <= metrics[f"val_{label}_acc"] <= metrics["val_clean_acc"]
    assert 0.0 <= metrics[f"test_{label}_acc"] <= metrics["test_clean_acc"]
    assert metrics[f"time_val_{label}_s"] > 0 and metrics[f"time_test_{label}_s"] > 0
    kind = experiment_kind(extra_attack.KIND)
    params = {k: float(v) if k == "model.step_size" else int(v) for k, v in child.data.params.items()}
    declared = set(kind.metrics(apply_params(loaded.config.base, params))) - {GPU_MEM_PEAK}  # a CPU trial: no GPU memory
    assert set(metrics) == declared, (set(metrics) ^ declared)
    assert metrics["time_trial_s"] >= metrics["time_train_s"] + metrics["time_eval_s"] > 0
