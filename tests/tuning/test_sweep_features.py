"""The sweep engine's features end to end: early stopping told as pruned,
several objectives with a Pareto front, replicates, the CNN-F transfer
stage, `sweep report` / `status` / `ls`, and budgets.

The transfer-source unit tests at the top are fast. The rest are slow: each
runs a real sweep in process (one local Ray for the whole module, an Optuna
journal, MLflow in SQLite) on a tiny slice of the bundled sample with the
small MNIST CNN-F; each sweep is a module fixture, run once, when a test
first needs it.
"""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from cnnf.config import ConfigError, ExperimentConfig, ModelConfig, TrainConfig
from cnnf.train import build_model, transfer_source
from cnnf.stages import config_key

# --- the transfer source (fast) ----------------------------------------------------------


def cnnf_config(**train: Any) -> ExperimentConfig:
    return ExperimentConfig(model=ModelConfig(arch="cnnf_fmnist_std", ind=1, step_size=0.2),
                            train=TrainConfig(epochs=2, n_iterations=2, clean_coef=0.5, init_from_cnn=True, **train))


def test_transfer_source_is_the_plain_twin_with_no_feedback() -> None:
    cfg = cnnf_config(lr=3e-3, seed=4)
    source = transfer_source(cfg)
    assert source.model.arch == "cnn_fmnist_std"
    assert source.train.n_iterations == 0 and source.eval_iterations == 0
    assert source.train.init_from_cnn is False
    assert (source.train.lr, source.train.seed, source.train.epochs) == (3e-3, 4, 2)  # trained with the trial's settings
    assert source.data == cfg.data


def source_key(cfg: ExperimentConfig) -> str:
    s = transfer_source(cfg)
    return config_key(s.data, s.model, s.train)


def test_configs_differing_only_in_feedback_knobs_share_one_source() -> None:
    cfg = cnnf_config()
    key = source_key(cfg)
    variants = [
        replace(cfg, model=replace(cfg.model, ind=2)),
        replace(cfg, model=replace(cfg.model, step_size=0.05)),
        replace(cfg, train=replace(cfg.train, clean_coef=1.0)),
        replace(cfg, train=replace(cfg.train, n_iterations=1, recon_coef=0.3)),
        replace(cfg, model=replace(cfg.model, ind=0, step_size=0.1), train=replace(cfg.train, clean_coef=0.1)),
    ]
    assert {source_key(v) for v in variants} == {key}


def test_training_settings_change_the_source() -> None:
    cfg = cnnf_config()
    others = [replace(cfg, train=replace(cfg.train, lr=1e-2)), replace(cfg, train=replace(cfg.train, seed=1)),
              replace(cfg, train=replace(cfg.train, epochs=3)), replace(cfg, data=replace(cfg.data, n_train=128))]
    keys = {source_key(o) for o in others}
    assert len(keys) == len(others) and source_key(cfg) not in keys


def test_plain_cnn_state_dict_loads_into_the_cnnf() -> None:
    cfg = cnnf_config()
    torch.manual_seed(0)
    plain = build_model(transfer_source(cfg))
    torch.manual_seed(1)
    cnnf = build_model(cfg)
    cnnf.load_state_dict(plain.state_dict())  # strict: the same parameters and buffers
    for name, value in plain.state_dict().items():
        assert torch.equal(cnnf.state_dict()[name], value), name
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():  # the CNN-F's first pass is the plain CNN
        assert torch.allclose(cnnf.eval()(x, 0, "first"), plain.eval()(x, 0, "first"), atol=1e-5)


def test_init_from_cnn_is_refused_for_a_plain_cnn() -> None:
    with pytest.raises(ConfigError, match="is itself the plain CNN"):
        ExperimentConfig(model=ModelConfig(arch="cnn_fmnist_std"), train=TrainConfig(n_iterations=0, init_from_cnn=True))


def test_init_from_cnn_is_accepted_for_every_cnnf_with_a_twin() -> None:
    for arch in ("cnnf_fmnist_std", "cnnf_fmnist_adv", "cnnf_mnist_small"):
        cfg = ExperimentConfig(model=ModelConfig(arch=arch), train=TrainConfig(init_from_cnn=True))
        assert transfer_source(cfg).model.arch == arch.replace("cnnf_", "cnn_")


def test_schedulers_from_the_spec() -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from sweeps.spec import parse_sweep
    from tuning.kinds import experiment_kind
    from tuning.runner import _scheduler

    kind = experiment_kind("cnnf")
    body = "space:\n  model.ind: {choice: [0, 2]}\nsearch: {metric: val_acc, num_trials: 2}\n"

    def build(scheduler: str, epochs: int = 4) -> Any:
        return _scheduler(parse_sweep(spec("s", Path("runs"), body + scheduler, epochs=epochs)).config, kind)

    assert isinstance(build(""), FIFOScheduler)
    asha = build("scheduler: {name: asha, grace_period: 1, reduction_factor: 2}\n", epochs=4)
    assert isinstance(asha, ASHAScheduler)
    assert (asha._metric, asha._mode, asha._max_t) == ("val_acc", "max", 4)  # max_t: the epochs
    assert isinstance(build("scheduler: {name: median, grace_period: 2}\n"), MedianStoppingRule)
    loss = build("scheduler: {name: asha, metric: train_loss, mode: min, max_t: 3}\n")
    assert (loss._metric, loss._mode, loss._max_t) == ("train_loss", "min", 3)


# --- real sweeps (slow) ---------------------------------------------------------------------

BASE = """\
name: {name}
experiment: cnnf
seed: {seed}
output_dir: {out}
base:
  data: {{dataset: fashion-mnist-sample, n_train: 256, val_fraction: 0.05}}
  model: {{arch: cnnf_mnist_small}}
  train: {{epochs: {epochs}, batch_size: 32, lr: 3.0e-3{train}}}
  eval: {{pgd_steps: 2, n_examples: 32, check_examples: 16}}
resources: {{cpu: 1}}
"""


def spec(name: str, out: Path, body: str, *, epochs: int = 1, seed: int = 0, train: str = "") -> str:
    return BASE.format(name=name, seed=seed, out=out, epochs=epochs, train=train) + body


@dataclass
class Launched:
    root: Path
    outcome: Any  # SweepOutcome, or None when the launch raised
    error: Optional[BaseException]

    def ok(self) -> Any:
        if self.error is not None:
            raise AssertionError(f"the sweep raised {self.error!r}") from self.error
        return self.outcome


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for every sweep of the module (launch_sweep joins it and leaves it running)."""
    import os

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def launch(tmp_path_factory: pytest.TempPathFactory, name: str, body: str, **kw: Any) -> Launched:
    from sweeps.spec import parse_sweep
    from tuning.runner import launch_sweep

    root = tmp_path_factory.mktemp(name)
    loaded = parse_sweep(spec(name, root, body, **kw), f"{name}.yaml")
    try:
        return Launched(root, launch_sweep(loaded.config, loaded.text), None)
    except Exception as exc:  # noqa: BLE001 - kept for the tests to report
        return Launched(root, None, exc)


def client(outcome: Any):
    from mlflow import MlflowClient

    return MlflowClient(outcome.tracking_uri)


def children(outcome: Any) -> list:
    runs = client(outcome).search_runs([outcome.experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == outcome.parent_run_id]


def parent(outcome: Any):
    return client(outcome).get_run(outcome.parent_run_id)


def study(outcome: Any):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from tuning.runner import JOURNAL

    return optuna.load_study(study_name=outcome.sweep_id,
                             storage=JournalStorage(JournalFileBackend(str(outcome.output_dir / JOURNAL))))


def artifacts(outcome: Any, run_id: str, path: Optional[str] = None) -> set[str]:
    return {a.path for a in client(outcome).list_artifacts(run_id, path)}


# --- ASHA: trials stopped early are pruned, in Optuna and in MLflow --------------------------

# lr 1e-7 learns nothing in an epoch (val_acc ~0.12) while 3e-3 reaches ~0.45;
# seed 2 makes the grid hand out [good, bad, bad, good] (OptunaSweepSearcher,
# GridSampler), so the third trial meets the first two's rung values and is stopped.
ASHA = """\
space:
  train.lr: {grid: [3.0e-3, 1.0e-7]}
  model.step_size: {grid: [0.05, 0.1, 0.2]}
search: {metric: val_acc, sampler: grid, num_trials: 4, max_concurrent: 2}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
"""


@pytest.fixture(scope="module")
def asha(ray_session, tmp_path_factory) -> Launched:
    return launch(tmp_path_factory, "asha", ASHA, epochs=4, seed=2)


@pytest.mark.slow
def test_asha_stops_a_trial_early(asha: Launched) -> None:
    outcome = asha.ok()
    assert outcome.status == "FINISHED", outcome
    assert outcome.n_pruned >= 1
    assert outcome.n_finished + outcome.n_pruned + outcome.n_failed == 4
    assert outcome.n_failed == 0


@pytest.mark.slow
def test_asha_pruned_trials_agree_in_optuna_and_mlflow(asha: Launched) -> None:
    from optuna.trial import TrialState

    outcome = asha.ok()
    trials = {t.number: t for t in study(outcome).trials}
    runs = {int(r.data.tags["optuna.trial"]): r for r in children(outcome)}
    assert sorted(trials) == sorted(runs) == [0, 1, 2, 3]
    pruned = [n for n, t in trials.items() if t.state == TrialState.PRUNED]
    complete = [n for n, t in trials.items() if t.state == TrialState.COMPLETE]
    assert pruned and sorted(pruned + complete) == [0, 1, 2, 3]
    for n in pruned:
        run = runs[n]
        assert (run.info.status, run.data.tags["trial.state"]) == ("FINISHED", "PRUNED")
        steps = [m.step for m in client(outcome).get_metric_history(run.info.run_id, "val_acc")]
        assert steps and max(steps) < 4, steps  # stopped before its last epoch
        assert "val_pgd_first_acc" not in run.data.metrics  # never evaluated
    for n in complete:
        run = runs[n]
        assert (run.info.status, run.data.tags["trial.state"]) == ("FINISHED", "COMPLETE")
        assert [m.step for m in client(outcome).get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3, 4]
        assert trials[n].values == [pytest.approx(run.data.metrics["val_acc"])]
    assert any(runs[n].data.params["train.lr"] == "1e-07" for n in pruned), "the trial that cannot learn was not the one stopped"


@pytest.mark.slow
def test_asha_parent_counts(asha: Launched) -> None:
    from optuna.trial import TrialState

    outcome = asha.ok()
    metrics = parent(outcome).data.metrics
    states = [t.state for t in study(outcome).trials]
    assert metrics["n_trials_pruned"] == states.count(TrialState.PRUNED) == outcome.n_pruned
    assert metrics["n_trials_finished"] == states.count(TrialState.COMPLETE) == outcome.n_finished
    assert metrics["n_trials_failed"] == 0
    rows = list(csv.DictReader((outcome.output_dir / "trials.csv").open()))
    assert sorted(r["state"] for r in rows) == sorted(s.name for s in states)


@pytest.mark.slow
def test_asha_status_command_counts_pruned(asha: Launched) -> None:
    from typer.testing import CliRunner

    from sweeps.cli import app

    outcome = asha.ok()
    result = CliRunner().invoke(app, ["status", outcome.sweep_id, "-o", str(asha.root)])
    assert result.exit_code == 0, result.output
    assert f"trials: {outcome.n_finished} complete, {outcome.n_pruned} pruned, 0 failed, 0 running, of 4 requested" in result.output


@pytest.mark.slow
def test_asha_report_counts_pruned_trials(asha: Launched) -> None:
    from sweeps.report import build_report

    outcome = asha.ok()
    text = build_report(outcome.output_dir, log_to_mlflow=False).read_text()
    assert f"{outcome.n_finished} complete, {outcome.n_pruned} pruned (stopped early), 0 failed" in text
    best = text.split("## Best configurations")[1].split("##")[0]
    assert best.count("\n| ") - 1 == outcome.n_finished  # pruned trials are not ranked (header row aside)


# --- several objectives: the Pareto front ------------------------------------------------------

MULTI = """\
space:
  model.ind: {choice: [0, 1, 2]}
  model.step_size: {loguniform: [0.05, 0.3]}
search: {metric: [val_clean_acc, val_pgd_first_acc], sampler: nsga2, num_trials: 3, max_concurrent: 2}
"""


@pytest.fixture(scope="module")
def multi(ray_session, tmp_path_factory) -> Launched:
    return launch(tmp_path_factory, "multi", MULTI)


@pytest.mark.slow
def test_multi_objective_parent_has_the_front(multi: Launched) -> None:
    from tuning.pareto import pareto_front
    from tuning.tracking import SweepTracker

    outcome = multi.ok()
    assert (outcome.status, outcome.n_finished) == ("FINISHED", 3)
    assert outcome.best is None and outcome.pareto
    tracker = SweepTracker(outcome.tracking_uri, "", experiment_id=outcome.experiment_id)
    tracker.parent_run_id = outcome.parent_run_id
    records = tracker.records()
    front = pareto_front(records, ["val_clean_acc", "val_pgd_first_acc"], ["max", "max"])
    run = parent(outcome)
    assert "pareto.png" in artifacts(outcome, run.info.run_id)
    assert run.data.metrics["n_pareto"] == len(front) >= 1
    assert run.data.tags["pareto.trials"] == ",".join(r.trial_id for r in front)
    assert [t.trial_id for t in outcome.pareto] == [r.trial_id for r in front]
    summary = json.loads((outcome.output_dir / "summary.json").read_text())
    assert [p["trial"] for p in summary["pareto"]] == [r.trial_id for r in front]


@pytest.mark.slow
def test_multi_objective_children_are_tagged_consistently(multi: Launched) -> None:
    from tuning.pareto import dominates

    outcome = multi.ok()
    runs = children(outcome)
    assert len(runs) == 3
    values = {r.info.run_id: [r.data.metrics["val_clean_acc"], r.data.metrics["val_pgd_first_acc"]] for r in runs}
    for r in runs:
        assert r.data.tags["trial.state"] == "COMPLETE"
        dominated = any(dominates(values[o], values[r.info.run_id], ["max", "max"]) for o in values)
        assert r.data.tags["pareto"] == str(not dominated).lower()
    trials = {t.number: t for t in study(outcome).trials}
    for r in runs:  # Optuna holds both objectives, in the metric order
        assert trials[int(r.data.tags["optuna.trial"])].values == pytest.approx(values[r.info.run_id])


# --- replicates -------------------------------------------------------------------------------

REPLICATES = """\
space:
  model.ind: {choice: [0, 2]}
search: {metric: val_acc, num_trials: 2, max_concurrent: 2, replicates: 2}
"""


@pytest.fixture(scope="module")
def replicated(ray_session, tmp_path_factory) -> Launched:
    return launch(tmp_path_factory, "reps", REPLICATES, epochs=2)


def _checkpoint_config(outcome: Any, ray_trial_id: str) -> dict:
    found = sorted(outcome.output_dir.glob(f"tune/*{ray_trial_id}*/checkpoint_*/config.json"))
    assert found, f"no checkpoint of trial {ray_trial_id} under {outcome.output_dir / 'tune'}"
    return json.loads(found[-1].read_text())


@pytest.mark.slow
def test_replicates_record_mean_and_std(replicated: Launched) -> None:
    outcome = replicated.ok()
    assert (outcome.status, outcome.n_finished, outcome.n_failed) == ("FINISHED", 2, 0)
    runs = children(outcome)
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        assert {"val_acc_std", "val_clean_acc_std", "val_pgd_first_acc_std", "train_loss_std"} <= set(m)
        assert {"report/replicates.md", "report/eval.json"} <= artifacts(outcome, run.info.run_id, "report")
        # the per-epoch curve is the mean over the seeds: one point per epoch
        assert [p.step for p in client(outcome).get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
        table = _checkpoint_config(outcome, run.data.tags["ray.trial_id"])["replicates"]
        assert [row["seed"] for row in table] == [0, 1]
        per_seed = [row["metrics"]["val_acc"] for row in table]
        assert m["val_acc"] == pytest.approx(statistics.mean(per_seed))
        assert m["val_acc_std"] == pytest.approx(statistics.stdev(per_seed))
        clean = [row["metrics"]["val_clean_acc"] for row in table]
        assert m["val_clean_acc"] == pytest.approx(statistics.mean(clean))
        assert m["val_clean_acc_std"] == pytest.approx(statistics.stdev(clean))


@pytest.mark.slow
def test_replicates_artifacts_hold_every_seed(replicated: Launched, tmp_path: Path) -> None:
    from cnnf.report import EvalReport

    outcome = replicated.ok()
    for run in children(outcome):
        folder = Path(client(outcome).download_artifacts(run.info.run_id, "report", str(tmp_path / run.info.run_id)))
        pairs = [[EvalReport.from_dict(d) for d in pair] for pair in json.loads((folder / "eval.json").read_text())]
        assert len(pairs) == 2 and all((v.split, t.split) == ("val", "test") for v, t in pairs)
        assert run.data.metrics["val_clean_acc"] == pytest.approx(statistics.mean(v.clean_acc for v, _ in pairs))
        table = (folder / "replicates.md").read_text()
        rows = [line for line in table.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
        assert len(rows) == 2
        header = [h.strip() for h in next(line for line in table.splitlines() if line.startswith("| seed |")).strip("|").split("|")]
        values = [float(row.strip("|").split("|")[header.index("val_acc")]) for row in rows]
        assert run.data.metrics["val_acc"] == pytest.approx(statistics.mean(values), abs=1e-4)
        assert not any(h.startswith("test_") for h in header)
    assert parent(outcome).data.metrics["best_val_acc_std"] == pytest.approx(outcome.best.metrics["val_acc_std"])


# --- sweep report, status, ls -------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_replicated_sweep(replicated: Launched) -> None:
    from sweeps.report import REPORT_FILE, build_report

    outcome = replicated.ok()
    path = build_report(outcome.output_dir)
    assert path == outcome.output_dir / REPORT_FILE
    text = path.read_text()
    assert "## Best configurations by `val_acc`" in text
    assert "| rank | trial | model.ind | val_acc |" in text
    assert "## Robustness of every complete trial (paper format)" in text
    assert "### Validation split" in text and "### Test split" in text
    assert "2 replicate(s) per configuration" in text
    assert "±" in text  # mean ± std over the seeds
    for run in children(outcome):
        assert f"trial {run.data.tags['optuna.trial']}: ind=" in text
    assert "report/report.md" in artifacts(outcome, outcome.parent_run_id, "report")


@pytest.mark.slow
def test_report_of_a_multi_objective_sweep(multi: Launched) -> None:
    from sweeps.report import build_report

    outcome = multi.ok()
    text = build_report(outcome.output_dir).read_text()
    assert f"## Pareto front ({len(outcome.pareto)} of 3 complete trials)" in text
    assert "![Pareto front](pareto.png)" in text and (outcome.output_dir / "pareto.png").exists()
    assert "## Best configurations by `val_clean_acc`" in text
    assert {"report/report.md", "report/pareto.png"} <= artifacts(outcome, outcome.parent_run_id, "report")


@pytest.mark.slow
def test_report_command(replicated: Launched) -> None:
    from typer.testing import CliRunner

    from sweeps.cli import app

    outcome = replicated.ok()
    result = CliRunner().invoke(app, ["report", outcome.sweep_id, "-o", str(replicated.root)])
    assert result.exit_code == 0, result.output
    assert f"report: {outcome.output_dir / 'report.md'}" in result.output.replace("\n", "")


@pytest.mark.slow
def test_status_and_ls_commands(replicated: Launched, monkeypatch) -> None:
    from typer.testing import CliRunner

    from sweeps import cli
    from sweeps.cli import app

    outcome = replicated.ok()
    runner = CliRunner()
    status = runner.invoke(app, ["status", outcome.sweep_id, "-o", str(replicated.root)])
    assert status.exit_code == 0, status.output
    assert f"sweep {outcome.sweep_id}: FINISHED" in status.output
    assert "trials: 2 complete, 0 pruned, 0 failed, 0 running, of 2 requested" in status.output
    assert f"best so far: trial {outcome.best.trial_id}: val_acc={outcome.best.value:.4f} (max)" in status.output
    by_name = runner.invoke(app, ["status", "reps", "-o", str(replicated.root)])  # the latest launch of a name
    assert by_name.exit_code == 0 and outcome.sweep_id in by_name.output

    monkeypatch.setattr(cli.out, "_width", 250)  # not a terminal: rich would wrap the table at 80 columns
    ls = runner.invoke(app, ["ls", "-o", str(replicated.root)])
    assert ls.exit_code == 0, ls.output
    row = next(line for line in ls.output.splitlines() if outcome.sweep_id in line)
    cells = [c.strip() for c in row.replace("│", "|").strip("| ").split("|")]
    assert cells[:6] == [outcome.sweep_id, "FINISHED", "2", "0", "0", "2"], cells
    assert f"{outcome.best.value:.4f} (trial {outcome.best.trial_id})" in row


# --- the CNN-F transfer stage -----------------------------------------------------------------

# The grid sampler over exactly its grid: two different step sizes, once each.
TRANSFER = """\
space:
  model.step_size: {grid: [0.05, 0.2]}
search: {metric: val_acc, sampler: grid, num_trials: 2, max_concurrent: 2}
"""


@pytest.fixture(scope="module")
def transfer(ray_session, tmp_path_factory) -> Launched:
    return launch(tmp_path_factory, "transfer", TRANSFER, train=", init_from_cnn: true")


@pytest.mark.slow
def test_transfer_source_is_trained_once_per_sweep(transfer: Launched) -> None:
    from sweeps.spec import parse_sweep
    from tuning.runner import SPEC_FILE, STAGES

    if transfer.outcome is None:
        out = next(transfer.root.glob("transfer-*"))
    else:
        out = transfer.outcome.output_dir
    files = sorted((out / STAGES).glob("transfer-cnn-*.pt"))
    assert len(files) == 1, files
    base = parse_sweep((out / SPEC_FILE).read_text()).config.base
    assert base.train.device == "auto"  # the key leaves the resolved device out: CPU and GPU trials share one source
    assert files[0].name == f"transfer-cnn-{source_key(base)}.pt"
    weights = torch.load(files[0], weights_only=True)
    net = build_model(base)
    net.load_state_dict(weights)


@pytest.mark.slow
def test_a_grid_sweep_over_its_whole_grid_finishes_every_trial(transfer: Launched) -> None:
    """num_trials equal to the grid size (the spec allows it): every trial
    completes in Optuna and MLflow, none is recorded as failed."""
    outcome = transfer.ok()
    runs = children(outcome)
    assert sorted(float(r.data.params["model.step_size"]) for r in runs) == [0.05, 0.2]
    assert [(r.info.status, r.data.tags.get("trial.state"), r.data.tags.get("error")) for r in runs] == [
        ("FINISHED", "COMPLETE", None)] * 2
    assert (outcome.status, outcome.n_finished, outcome.n_failed) == ("FINISHED", 2, 0)


# --- budgets ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing(ray_session, tmp_path_factory) -> Launched:
    body = ("space:\n  train.lr: {choice: [1.0e+30]}\n"
            "search: {metric: val_acc, num_trials: 3, max_concurrent: 1}\n"
            "budget: {max_failed_trials: 1}\n")
    return launch(tmp_path_factory, "failing", body)


@pytest.mark.slow
def test_max_failed_trials_stops_the_sweep(failing: Launched) -> None:
    outcome = failing.ok()
    assert outcome.n_failed == 1 and outcome.n_finished == 0
    assert "max_failed_trials" in outcome.stop_reason
    assert outcome.status == "FINISHED"
    runs = children(outcome)
    assert [r.info.status for r in runs] == ["FAILED"]  # the other two never started
    assert "FloatingPointError" in runs[0].data.tags["error"]
    assert "max_failed_trials" in parent(outcome).data.tags["stop_reason"]
    assert json.loads((outcome.output_dir / "sweep.json").read_text())["stop_reason"] == outcome.stop_reason


@pytest.mark.slow
def test_report_lists_the_failed_trial(failing: Launched) -> None:
    from sweeps.report import build_report

    outcome = failing.ok()
    text = build_report(outcome.output_dir, log_to_mlflow=False).read_text()
    assert "max_failed_trials" in text and "## Failed trials" in text and "FloatingPointError" in text


@pytest.fixture(scope="module")
def targeted(ray_session, tmp_path_factory) -> Launched:
    body = ("space:\n  model.ind: {choice: [0, 1, 2]}\n"
            "search: {metric: val_acc, num_trials: 3, max_concurrent: 1}\n"
            "budget: {target: 0.05}\n")
    return launch(tmp_path_factory, "target", body)


@pytest.mark.slow
def test_target_reached_stops_the_sweep(targeted: Launched) -> None:
    outcome = targeted.ok()
    assert outcome.n_finished == 1 and outcome.best is not None and outcome.best.value >= 0.05
    assert "target" in outcome.stop_reason and "0.05" in outcome.stop_reason
    assert outcome.status == "FINISHED"
    assert len(children(outcome)) == 1
    assert "target" in parent(outcome).data.tags["stop_reason"]
