"""MLflow tracking of a sweep: one parent run, one child run per trial.

All MLflow writes happen in the driver process (a Tune callback), so a
SQLite store never sees concurrent writers, and Tune's bookkeeping (pid,
timestamps, config/*) never becomes a metric: only the metrics the
experiment kind declares are logged. A trial that is restarted keeps its
child run (looked up by trial id) instead of opening a second one.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.experiment import Trial

from tuning.experiments import REPORT_DIR, ExperimentKind
from tuning.space import Choice, IntRange, LogUniform, ParamSpec, apply_params

TRIAL_ID_TAG = "ray.trial_id"
SWEEP_ID_TAG = "sweep.id"
PARENT_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class TrialRecord:
    """What the driver knows about one finished (or failed) trial."""

    trial_id: str
    run_id: str
    status: str  # FINISHED | FAILED
    params: dict[str, Any]
    metrics: dict[str, float]  # the last reported value of each metric


class SweepTracker:
    """Owns the MLflow client, the experiment and the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: Optional[str] = None):
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)  # the fluent API is used to log models
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id if found is not None
            else self.client.create_experiment(experiment, artifact_location=artifact_location)
        )
        self.parent_run_id: Optional[str] = None

    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str], artifacts: list[Path]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        log_params(self.client, self.parent_run_id, params)
        for path in artifacts:
            self.client.log_artifact(self.parent_run_id, str(path))
        return self.parent_run_id

    def run_url(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


class MlflowTrialCallback(Callback):
    """Tune callback writing each trial to a child run of the sweep's parent run."""

    def __init__(self, tracker: SweepTracker, kind: ExperimentKind, base_config: Any, sweep_id: str):
        self.tracker = tracker
        self.kind = kind
        self.base_config = base_config
        self.sweep_id = sweep_id
        self.run_ids: dict[str, str] = {}
        self.history: dict[str, list[dict[str, float]]] = {}
        self.records: dict[str, TrialRecord] = {}

    # Tune hooks --------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if trial.trial_id in self.run_ids:  # a retried trial re-attaches to its run
            self.tracker.client.update_run(self.run_ids[trial.trial_id], status="RUNNING")
            return
        run = self.tracker.client.create_run(
            self.tracker.experiment_id,
            run_name=str(trial),
            tags={PARENT_TAG: self.tracker.parent_run_id, TRIAL_ID_TAG: trial.trial_id, SWEEP_ID_TAG: self.sweep_id},
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        self.history[trial.trial_id] = []
        log_params(self.tracker.client, run.info.run_id, trial.config)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        metrics = {k: float(result[k]) for k in self.kind.metrics if k in result}
        self.history[trial.trial_id].append(metrics)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        timestamp = int(result.get("timestamp", 0) * 1000)
        self.tracker.client.log_batch(
            self.run_ids[trial.trial_id], metrics=[Metric(k, v, timestamp, step) for k, v in metrics.items()]
        )

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_ids[trial.trial_id]
        config = apply_params(self.base_config, trial.config)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(asdict(config), indent=2))
            self.tracker.client.log_artifact(run_id, str(Path(tmp) / "config.json"))
            figure_path = Path(tmp) / "trial.png"
            title = f"{trial}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in trial.config.items())
            plot_trial(self.history[trial.trial_id], self.kind, title, self.kind.describe_eval(config), figure_path)
            self.tracker.client.log_artifact(run_id, str(figure_path))
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as d:
                model, example = self.kind.load_model(Path(d), config)
                report = Path(d) / REPORT_DIR  # evaluation tables and plots written by the trainable
                if report.is_dir() and any(report.iterdir()):
                    self.tracker.client.log_artifacts(run_id, str(report), REPORT_DIR)
            log_torch_model(run_id, model, example)
        self._finish(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error = _first_error_line(trial)
        if error:
            self.tracker.client.set_tag(run_id, "error", error[:5000])
        self._finish(trial, "FAILED")

    def close_unfinished(self) -> int:
        """Mark runs of trials that never completed (an interrupted sweep) KILLED.

        No child run is left RUNNING forever; returns how many were closed.
        """
        open_ids = [tid for tid in self.run_ids if tid not in self.records]
        for trial_id in open_ids:
            self.tracker.client.set_terminated(self.run_ids[trial_id], status="KILLED")
        return len(open_ids)

    # helpers -----------------------------------------------------------------
    def _finish(self, trial: Trial, status: str) -> None:
        run_id = self.run_ids[trial.trial_id]
        self.tracker.client.set_terminated(run_id, status=status)
        last: dict[str, float] = {}
        for metrics in self.history[trial.trial_id]:
            last.update(metrics)
        self.records[trial.trial_id] = TrialRecord(trial.trial_id, run_id, status, dict(trial.config), last)


def _first_error_line(trial: Trial) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def log_torch_model(run_id: str, model: Any, example: Any) -> None:
    """Log `model` as the run's LoggedModel `model`.

    Pickle format: MLflow 3.17's default 'pt2' export specialises the batch
    size to the example's, so the loaded model would reject other batch
    sizes. Requirements are given to skip MLflow's slow inference of them.
    """
    import mlflow
    import mlflow.pytorch
    import numpy
    import torch

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    level = pytorch_logger.level
    pytorch_logger.setLevel(logging.ERROR)  # the pickle-format caution, once per trial
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                model, name="model", input_example=example, pip_requirements=requirements, serialization_format="pickle"
            )
    finally:
        pytorch_logger.setLevel(level)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_trial(history: list[dict[str, float]], kind: ExperimentKind, title: str, note: str, path: Path) -> None:
    """Learning curves (per-epoch accuracies and loss) and the final accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h for h in history if any(k in h for k in kind.epoch_metrics)]
    final = history[-1] if history else {}
    fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(1, len(epochs) + 1))
    for key in (k for k in kind.epoch_metrics if k.endswith("_acc")):
        ys = [h.get(key, math.nan) for h in epochs]
        ax_curve.plot(xs, ys, marker="o", label=key)
    ax_curve.set_xlabel("epoch")
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_curve.set_ylabel("accuracy")
    ax_curve.set_ylim(0, 1)
    if "train_loss" in kind.epoch_metrics:
        ax_loss = ax_curve.twinx()
        ax_loss.plot(xs, [h.get("train_loss", math.nan) for h in epochs], color="grey", linestyle="--", label="train_loss")
        ax_loss.set_ylabel("train loss")
        ax_loss.legend(loc="upper right")
    ax_curve.legend(loc="lower left")
    ax_curve.set_title("learning curves")
    bars = [(k, final[k]) for k in kind.final_metrics if k in final and k.endswith("_acc")]
    ax_bar.barh([k for k, _ in bars], [v for _, v in bars], color=["tab:blue" if k.startswith("val_") else "tab:orange" for k, _ in bars])
    for i, (_, v) in enumerate(bars):
        ax_bar.text(v, i, f" {v:.3f}", va="center")
    ax_bar.set_xlim(0, 1.1)
    ax_bar.invert_yaxis()
    ax_bar.set_title("final accuracy (blue: validation, orange: test)")
    ax_bar.set_xlabel(note, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(records: list[TrialRecord], metric: str, space: dict[str, ParamSpec], best_trial_id: Optional[str], path: Path) -> bool:
    """Objective against each sampled parameter, one panel per parameter.

    Choices are categorical axes, log-uniform parameters get a log axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [r for r in records if metric in r.metrics]
    if not done or not space:
        return False
    fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.6), squeeze=False)
    for ax, (name, spec) in zip(axes[0], space.items()):
        if isinstance(spec, Choice):
            order = [str(v) for v in spec.values]
            ax.set_xticks(range(len(order)), order)
            ax.set_xlim(-0.5, len(order) - 0.5)
            position = lambda v: order.index(str(v)) if str(v) in order else float("nan")  # noqa: E731
        else:
            position = lambda v: v  # noqa: E731
            if isinstance(spec, LogUniform) or (isinstance(spec, IntRange) and spec.log):
                ax.set_xscale("log")
            if isinstance(spec, IntRange):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.scatter([position(r.params.get(name)) for r in done], [r.metrics[metric] for r in done], color="tab:blue")
        for best in (r for r in done if r.trial_id == best_trial_id):
            ax.scatter([position(best.params.get(name))], [best.metrics[metric]], color="tab:red", marker="*", s=200, label="best")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
    if best_trial_id is not None:
        axes[0][0].legend()
    fig.suptitle(f"{metric} per trial ({len(done)} trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
