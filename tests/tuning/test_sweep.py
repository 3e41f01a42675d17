"""A real sweep in process (local Ray, Optuna journal, MLflow in SQLite),
then the MLflow store, the journal and the output folder are inspected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeps.spec import parse_sweep
from tests.conftest import TINY_SWEEP
from tuning.kinds import experiment_kind
from tuning.replicates import GPU_MEM_PEAK
from tuning.space import apply_params
from tuning.runner import JOURNAL, MLFLOW_DB, LaunchError, launch_sweep

pytestmark = pytest.mark.slow

TUNE_BOOKKEEPING = {"pid", "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "iterations_since_restore", "done"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("sweep")
    loaded = parse_sweep(TINY_SWEEP.replace("resources:", f"output_dir: {out}\nresources:"), "tiny.yaml")
    outcome = launch_sweep(loaded.config, loaded.text, spec_path=None)
    return out, loaded, outcome


def test_outcome_names_best_trial_and_ui_command(sweep) -> None:
    out, _, outcome = sweep
    assert (outcome.status, outcome.n_requested, outcome.n_finished, outcome.n_failed) == ("FINISHED", 2, 2, 0)
    assert outcome.output_dir.parent == out and outcome.output_dir.name.startswith("tiny-")
    assert outcome.tracking_uri == f"sqlite:///{out / MLFLOW_DB}"
    assert f"ui --backend-store-uri {outcome.tracking_uri}" in outcome.ui_command
    assert outcome.best is not None and outcome.best_url.endswith(f"/runs/{outcome.best.run_id}")
    # MLflow 3.17's UI shows the runs table (not the GenAI overview) only for this workflowType in the URL.
    assert outcome.experiment_url == f"http://127.0.0.1:5000/#/experiments/{outcome.experiment_id}?workflowType=machine_learning"


def test_mlflow_holds_one_parent_and_two_children(sweep) -> None:
    from mlflow import MlflowClient

    out, loaded, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    runs = client.search_runs([outcome.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    assert all(r.info.status == "FINISHED" for r in runs)

    parent = parents[0]
    assert parent.info.run_id == outcome.parent_run_id
    assert parent.data.params["seed"] == "3"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert {"sweep.yaml", "trials.csv", "sweep.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    # Optuna's plots of the study (a contour when both knobs took two values), and the tag that opens the runs view.
    children_params = [r.data.params for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]
    varied = [p for p in ("model.ind", "model.step_size") if len({c[p] for c in children_params}) > 1]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")} == {
        "optuna/optuna_history.png", "optuna/optuna_importances.png", *(["optuna/optuna_contour.png"] if len(varied) == 2 else [])}
    assert client.get_experiment(outcome.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    spec_copy = Path(client.download_artifacts(parent.info.run_id, "sweep.yaml", str(out)))
    assert spec_copy.read_text() == loaded.text
    assert parent.data.metrics["best_val_acc"] == pytest.approx(max(c.data.metrics["val_acc"] for c in children))

    for child in children:
        assert set(child.data.params) == {"model.ind", "model.step_size"}
        assert child.data.params["model.ind"] in {"0", "2"}
        assert 0.05 <= float(child.data.params["model.step_size"]) <= 0.2
        metrics = child.data.metrics
        for key in ("val_acc", "train_loss", "val_clean_acc", "val_pgd_first_acc", "val_pgd_e2e_acc", "test_clean_acc"):
            assert 0.0 <= metrics[key] if key == "train_loss" else 0.0 <= metrics[key] <= 1.0, key
        assert metrics["val_pgd_first_acc"] <= metrics["val_clean_acc"]
        assert not TUNE_BOOKKEEPING & set(metrics) and not any(k.startswith("config") for k in metrics)
        # Exactly the metrics the suite names for this trial's config, the time breakdown among them.
        params = {"model.ind": int(child.data.params["model.ind"]), "model.step_size": float(child.data.params["model.step_size"])}
        declared = set(experiment_kind("cnnf").metrics(apply_params(loaded.config.base, params))) - {GPU_MEM_PEAK}  # a CPU trial: no GPU memory
        assert set(metrics) == declared, set(metrics) ^ declared
        assert metrics["time_trial_s"] >= metrics["time_train_s"] + metrics["time_eval_s"]
        assert metrics["time_val_eval_s"] > metrics["time_val_checks_s"] > 0 and metrics["time_test_checks_s"] == 0
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2]
        assert {"trial.png", "config.json"} <= {a.path for a in client.list_artifacts(child.info.run_id)}


def test_each_child_has_a_loadable_logged_model(sweep) -> None:
    import mlflow.pytorch
    import torch
    from mlflow import MlflowClient

    _, _, outcome = sweep
    client = MlflowClient(outcome.tracking_uri)
    models = client.search_logged_models([outcome.experiment_id])
    children = {r.info.run_id for r in client.search_runs([outcome.experiment_id]) if "mlflow.parentRunId" in r.data.tags}
    assert {m.source_run_id for m in models} == children
    mlflow.set_tracking_uri(outcome.tracking_uri)
    model = mlflow.pytorch.load_model(models[0].model_uri)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_optuna_journal_has_the_two_complete_trials(sweep) -> None:
    import optuna
    from mlflow import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _, _, outcome = sweep
    study = optuna.load_study(study_name=outcome.sweep_id, storage=JournalStorage(JournalFileBackend(str(outcome.output_dir / JOURNAL))))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    client = MlflowClient(outcome.tracking_uri)
    child_values = sorted(r.data.metrics["val_acc"] for r in client.search_runs([outcome.experiment_id]) if "mlflow.parentRunId" in r.data.tags)
    assert sorted(t.value for t in study.trials) == pytest.approx(child_values)


def test_output_folder_summary(sweep) -> None:
    _, _, outcome = sweep
    summary = json.loads((outcome.output_dir / "summary.json").read_text())
    assert summary["status"] == "FINISHED"
    assert summary["best"]["run_id"] == outcome.best.run_id
    assert len((outcome.output_dir / "trials.csv").read_text().strip().splitlines()) == 3


def test_infeasible_resources_fail_at_launch_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    text = TINY_SWEEP.replace("  cpu: 1", "  cpu: 64").replace("resources:", f"output_dir: {out}\nresources:")
    loaded = parse_sweep(text, "tiny.yaml")
    with pytest.raises(LaunchError, match=r"resources: a trial asks for cpu=64 gpu=0, but no node of the Ray cluster has that \(node \S+ \(\w+\): CPU="):
        launch_sweep(loaded.config, loaded.text)
    assert not out.exists()
