"""A real feedback-learning quota sweep in process (local Ray, Optuna, MLflow
in SQLite) on the bundled sample: the base model, its evaluation, its
margins and the reduced-FL baseline at the sweep's budget are shared stages
computed once; each trial logs the FL metrics (the baseline's among them)
and report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.spec import parse_sweep
from tuning.kinds import experiment_kind
from tuning.replicates import GPU_MEM_PEAK
from tuning.runner import STAGES, launch_sweep
from tuning.space import apply_params

pytestmark = pytest.mark.slow

FL_SWEEP = """\
name: fl-tiny
experiment: fl
seed: 1
base:
  data: {dataset: fashion-mnist-sample, n_train: 1500}
  model: {arch: cnn_mnist_small}
  train: {epochs: 2, batch_size: 32, lr: 3.0e-3, n_iterations: 0}
  search: {n_samples: 20, n_directions: 8, step: 0.05}
  selection: {budget: 10, directions_per_sample: 3}     # 2 searched samples per class: at most 5 x 2
  retrain: {epochs: 2}
  eval: {n_examples: 16, check_examples: 8, fgsm_grid: [0.05]}
space:
  selection.medium_ratio: {uniform: [0.0, 1.0]}
  selection.high_ratio: {uniform: [0.0, 1.0]}
search: {metric: val_min_acc, mode: max, num_trials: 2, max_concurrent: 2}
resources: {cpu: 1}
"""


@pytest.fixture(scope="module")
def fl_sweep(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("flsweep")
    loaded = parse_sweep(FL_SWEEP.replace("resources:", f"output_dir: {out}\nresources:"), "fl-tiny.yaml")
    return launch_sweep(loaded.config, loaded.text, spec_path=None), loaded


def test_both_trials_finish_with_a_final_only_objective(fl_sweep) -> None:
    fl_sweep, _ = fl_sweep
    # val_min_acc exists only in the last report (after retraining and evaluation).
    assert (fl_sweep.status, fl_sweep.n_finished, fl_sweep.n_failed) == ("FINISHED", 2, 0)
    assert fl_sweep.best is not None and 0.0 <= fl_sweep.best.value <= 1.0


def test_shared_stages_are_computed_once(fl_sweep) -> None:
    fl_sweep, _ = fl_sweep
    stages = Path(fl_sweep.output_dir) / STAGES
    assert len(list(stages.glob("base-????????????????.pt"))) == 1
    assert len(list(stages.glob("base-eval-*.pt"))) == 1
    assert len(list(stages.glob("control-eval-*.pt"))) == 1
    assert len(list(stages.glob("reduced-eval-*.pt"))) == 1  # one budget, one seed: one reduced-FL baseline
    # The base model's margins along its directions and the held-out ones (once for the sweep), then per
    # retrained model (two trials) both direction sets, and the baseline's own: 3 to 7 files.
    assert 3 <= len(list(stages.glob("margins-*.pt"))) <= 7


def test_trial_runs_carry_fl_metrics_and_reports(fl_sweep) -> None:
    from mlflow import MlflowClient

    fl_sweep, loaded = fl_sweep

    client = MlflowClient(fl_sweep.tracking_uri)
    runs = client.search_runs([fl_sweep.experiment_id], f"tags.mlflow.parentRunId = '{fl_sweep.parent_run_id}'")
    assert len(runs) == 2
    base_r = {r.data.metrics["base_R"] for r in runs}
    assert len(base_r) == 1  # both trials started from the same base model and margins
    assert len({r.data.metrics["reduced_val_min_acc"] for r in runs}) == 1  # and compare with the same baseline
    for run in runs:
        m = run.data.metrics
        for key in ("val_min_acc", "val_fgsm_acc", "val_cw_l2_acc", "val_gaussian_noise_acc", "test_pgd_linf_acc", "R",
                    "R_spread", "n_generated", "base_val_min_acc", "control_val_min_acc", "val_acc", "n_wrong",
                    "R_heldout", "R_spread_heldout", "base_R_heldout", "val_uniform_noise_worst_acc"):
            assert key in m, key
        assert m["n_generated"] > 0
        assert m["reduced_n_generated"] > 0 and 0.0 <= m["reduced_val_min_acc"] <= 1.0
        assert m["vs_reduced_val_min_acc"] == pytest.approx(m["val_min_acc"] - m["reduced_val_min_acc"])
        assert m["vs_reduced_R_spread"] == pytest.approx(m["R_spread"] - m["reduced_R_spread"], nan_ok=True)
        # Every metric the FL pipeline names for this config is logged, and nothing else
        # (CNNF_STRICT_METRICS=1 makes an undeclared one fail the sweep).
        params = {k: v == "True" if v in ("True", "False") else json.loads(v) for k, v in run.data.params.items()}
        cfg = apply_params(loaded.config.base, params)
        declared = set(experiment_kind("fl").metrics(cfg)) - {GPU_MEM_PEAK}  # a CPU trial: no GPU memory
        declared -= {"val_check_8_ok"}  # skipped: a plain CNN has no feedback to compare end to end
        assert set(m) == declared, set(m) ^ declared
        assert m["time_trial_s"] > m["time_train_s"] > 0 and m["time_val_checks_s"] > 0
        files = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert {"report/evaluation.md", "report/margin_heatmap.png", "report/class_robustness.png",
                "report/fgsm_curve.png", "report/noise_curve.png", "report/class_centres.png"} <= files
