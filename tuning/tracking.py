"""MLflow tracking of a sweep: one parent run, one child run per trial.

All MLflow writes happen in the driver process (a Tune callback), so a
SQLite store never sees concurrent writers, and Tune's bookkeeping (pid,
timestamps, config/*) never becomes a metric: the metrics logged are those
the experiment kind declares for the trial's config (one it fails to
declare is logged too, with a warning, and is an error in tests). A trial
that is restarted keeps its child run (looked up by trial id) instead of
opening a second one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, TRIAL_ID

from tuning.experiments import FINAL_KEY, REPORT_DIR, TRIAL_KEY
from tuning.kinds import ExperimentKind
from tuning.plots import TRIAL_PLOT, plot_trial, trial_title
from tuning.space import Choice, Grid, IntRange, LogUniform, ParamSpec, apply_params, public_params
from tuning.status import RunStatus, TrialOutcome, count, outcome_of_run

TRIAL_ID_TAG = "ray.trial_id"
TRIAL_NUMBER_TAG = "optuna.trial"  # the trial's identity across retries and resumes
STATE_TAG = "trial.state"  # COMPLETE | PRUNED | FAILED, as told to Optuna
SWEEP_ID_TAG = "sweep.id"
PARENT_TAG = "mlflow.parentRunId"
NODE_ID_TAG = "ray.node_id"  # the Ray node a trial runs on (the latest, if a restart moved it)
NODE_IP_TAG = "ray.node_ip"
GPU_IDS_TAG = "ray.gpu_ids"  # the GPUs Ray gave the trial ('' for none)
STRICT_METRICS_ENV = "CNNF_STRICT_METRICS"  # "1": a metric the experiment kind did not declare raises (set by the tests)
# What Tune adds to every result (ray.tune.result), and the trainable's own
# control keys: never metrics. "epoch" is the step the metrics are logged at.
TUNE_BOOKKEEPING = frozenset(AUTO_RESULT_KEYS) | {DONE, TRIAL_ID, EXPERIMENT_TAG, "iterations_since_restore", "should_checkpoint",
                                                  FINAL_KEY, TRIAL_KEY, "epoch"}

logger = logging.getLogger(__name__)


# What the MLflow UI reads to open an experiment on its runs rather than the GenAI overview (traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW = "machine_learning"  # the UI's "Model training" view (runs, not traces)


class UndeclaredMetricError(RuntimeError):
    """A trial reported a metric its experiment kind does not declare (raised only with STRICT_METRICS_ENV=1)."""


@dataclass(frozen=True)
class TrialRecord:
    """What the MLflow store holds about one trial (a configuration)."""

    trial_id: str  # the Optuna trial number, stable across resumes
    run_id: str
    status: str  # FINISHED | FAILED | KILLED | RUNNING (the MLflow run status)
    params: dict[str, Any]
    metrics: dict[str, float]  # the last logged value of each metric
    state: str = ""  # COMPLETE | PRUNED | FAILED ('' while running)

    @property
    def outcome(self) -> TrialOutcome:
        return outcome_of_run(self.status, self.state)

    @property
    def complete(self) -> bool:
        return self.outcome == TrialOutcome.COMPLETE


def trial_counts(records: list[TrialRecord]) -> dict[TrialOutcome, int]:
    """How the trials ended: the one count the summary, the parent run and `sweep report` use."""
    return count(r.outcome for r in records)


class SweepTracker:
    """Owns the MLflow client, the experiment and the sweep's parent run."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: Optional[str] = None,
                 experiment_id: Optional[str] = None):
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)  # the fluent API is used to log models
        self.client = MlflowClient(tracking_uri)
        if experiment_id is None:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_location,
                                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            else:
                experiment_id = found.experiment_id
                if EXPERIMENT_KIND_TAG not in found.tags:  # created by an earlier version, or by hand
                    self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self.experiment_id = experiment_id
        self.parent_run_id: Optional[str] = None

    def reopen_parent(self, parent_run_id: str) -> None:
        """A resumed sweep's parent run is RUNNING again until it finishes."""
        self.parent_run_id = parent_run_id
        self.client.update_run(parent_run_id, status=RunStatus.RUNNING)

    def close_interrupted(self) -> None:
        """Child runs still RUNNING when the driver stops were interrupted: KILLED (a resume re-attaches to them)."""
        for run in self.children():
            if run.info.status == RunStatus.RUNNING:
                self.client.set_terminated(run.info.run_id, status=RunStatus.KILLED)

    def finish_parent(self, status: str, *, records: list[TrialRecord], files: list[Path], front: list[TrialRecord],
                      best: Optional[TrialRecord], metric: str, stop_reason: str) -> None:
        """The sweep's summary on its parent run, then end it with `status`:
        the files (trial table, plots, summary.json), the trial counts, the
        Pareto front (a `pareto` tag on every complete trial's run) and the best trial."""
        client, run_id = self.client, self.parent_run_id
        counts = trial_counts(records)
        self.log_parent_files(files)
        if front:
            on_front = {r.run_id for r in front}
            for r in records:
                if r.complete:
                    client.set_tag(r.run_id, "pareto", str(r.run_id in on_front).lower())
            client.log_metric(run_id, "n_pareto", len(front))
            client.set_tag(run_id, "pareto.trials", ",".join(r.trial_id for r in front))
        client.log_metric(run_id, "n_trials_finished", counts[TrialOutcome.COMPLETE])
        client.log_metric(run_id, "n_trials_pruned", counts[TrialOutcome.PRUNED])
        client.log_metric(run_id, "n_trials_failed", counts[TrialOutcome.FAILED])
        if stop_reason:
            client.set_tag(run_id, "stop_reason", stop_reason)
        if best is not None:
            client.log_metric(run_id, f"best_{metric}", best.metrics[metric])
            if f"{metric}_std" in best.metrics:
                client.log_metric(run_id, f"best_{metric}_std", best.metrics[f"{metric}_std"])
            client.set_tag(run_id, "best.run_id", best.run_id)
            client.set_tag(run_id, "best.trial", best.trial_id)
        client.set_terminated(run_id, status=status)

    def log_parent_files(self, paths: list[Path], folder: Optional[str] = None) -> None:
        for path in paths:
            self.client.log_artifact(self.parent_run_id, str(path), folder)

    def run_tag(self, run_id: str, key: str, default: str = "") -> str:
        return self.client.get_run(run_id).data.tags.get(key, default)

    def run_file(self, run_id: str, artifact: str) -> Optional[str]:
        """The text of one of a run's artifacts, or None if it has none by that name."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, artifact, tmp)
            except Exception:  # noqa: BLE001 - a pruned or failed trial has no report
                return None
            return Path(path).read_text()

    def start_parent(self, run_name: str, params: dict[str, Any], tags: dict[str, str], artifacts: list[Path]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.parent_run_id = run.info.run_id
        log_params(self.client, self.parent_run_id, params)
        for path in artifacts:
            self.client.log_artifact(self.parent_run_id, str(path))
        return self.parent_run_id

    def run_url(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"

    def experiment_url(self) -> str:
        """The experiment's runs table in the MLflow UI. MLflow 3.17's UI picks
        its view from the `workflowType` in the URL (else the browser's last
        choice, GenAI by default, which opens an empty traces overview); the
        experiment's `mlflow.experimentKind` tag is read only when that toggle is off."""
        return f"#/experiments/{self.experiment_id}?workflowType={UI_WORKFLOW}"

    def children(self) -> list[Any]:
        """Every child run of the parent (all pages)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                           max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def records(self) -> list[TrialRecord]:
        """The trials as the MLflow store has them, ordered by trial number."""
        out = []
        for run in self.children():
            tags = run.data.tags
            number = tags.get(TRIAL_NUMBER_TAG, "")
            out.append(TrialRecord(number, run.info.run_id, run.info.status, _parse_params(run.data.params),
                                   dict(run.data.metrics), tags.get(STATE_TAG, "")))
        return sorted(out, key=lambda r: (int(r.trial_id) if r.trial_id.isdigit() else 1 << 30, r.run_id))


def sweep_counts(tracking_uri: str, sweep_id: str) -> dict[TrialOutcome, int]:
    """A sweep's trials by state, read from the MLflow store alone (for
    `sweep status` where the sweep's folder is not visible): COMPLETE,
    PRUNED, FAILED, RUNNING, KILLED."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    outcomes = []
    token = None
    while experiments:
        page = client.search_runs(experiments, f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'", max_results=1000, page_token=token)
        outcomes += [outcome_of_run(run.info.status, run.data.tags.get(STATE_TAG, "")) for run in page
                     if PARENT_TAG in run.data.tags]  # not the sweep's parent run
        token = page.token
        if not token:
            break
    return count(outcomes)


def _parse_params(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        try:
            out[k] = json.loads(v) if v not in ("True", "False") else v == "True"
        except ValueError:
            out[k] = v
    return out


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


class MlflowTrialCallback(Callback):
    """Tune callback writing each trial to a child run of the sweep's parent run.

    A trial's run is keyed by its Optuna trial number (tag `optuna.trial`):
    a trial restarted after a failure or re-created after a resume re-attaches
    to its run instead of opening a second one. Tune pickles this callback
    with the experiment; only plain settings are kept, the MLflow client and
    the per-trial bookkeeping are rebuilt after a restore.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, kind: ExperimentKind, base_config: Any,
                 sweep_id: str, metrics: list[str], modes: list[str]):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.kind, self.base_config, self.sweep_id = kind, base_config, sweep_id
        self.objectives, self.modes = list(metrics), list(modes)
        self._reset()

    def _reset(self) -> None:
        self._tracker: Optional[SweepTracker] = None
        self.run_ids: dict[str, str] = {}
        self.history: dict[str, list[dict[str, float]]] = {}
        self.last_step: dict[str, int] = {}
        self.done_before: set[str] = set()  # trials whose run was finished before a resume re-ran them
        self.final: dict[str, bool] = {}
        self.placement: dict[str, dict[str, str]] = {}
        self.declared: dict[str, frozenset[str]] = {}  # per trial: the metrics its config reports
        self.undeclared_seen: set[str] = set()  # warned about once each
        self.n_failed = 0
        self.best: Optional[float] = None
        self._attached = False

    def __getstate__(self) -> dict:
        keep = ("tracking_uri", "experiment_id", "parent_run_id", "kind", "base_config", "sweep_id", "objectives", "modes")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def use_tracker(self, tracker: SweepTracker) -> None:
        self._tracker = tracker

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = SweepTracker(self.tracking_uri, "", experiment_id=self.experiment_id)
            self._tracker.parent_run_id = self.parent_run_id
        return self._tracker

    @property
    def client(self) -> Any:
        return self.tracker.client

    def ensure_attached(self) -> None:
        """Count the failures and the best value already in the store (a resumed sweep), once."""
        if self._attached:
            return
        self._attached = True
        for r in self.tracker.records():
            if r.run_id in self.run_ids.values():
                continue  # counted by this session's hooks
            if r.status == RunStatus.FAILED:
                self.n_failed += 1
            self._note_best(r)

    # Tune hooks --------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        tid = trial.trial_id
        if tid in self.run_ids:  # a retried trial re-attaches to its run
            self.client.update_run(self.run_ids[tid], status=RunStatus.RUNNING)
            return
        number = str(trial.config.get(TRIAL_KEY, ""))
        existing = self._find_run(number)
        self.history[tid], self.last_step[tid] = [], 0
        if existing is not None:  # re-created after a resume: the same configuration, the same run
            self.run_ids[tid] = existing.info.run_id
            if existing.info.status in (RunStatus.FINISHED, RunStatus.FAILED):
                self.done_before.add(tid)
            else:
                self.client.update_run(existing.info.run_id, status=RunStatus.RUNNING)
            self._load_history(tid, existing)
            return
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number}" if number else str(trial),
            tags={PARENT_TAG: self.parent_run_id, TRIAL_ID_TAG: tid, SWEEP_ID_TAG: self.sweep_id, TRIAL_NUMBER_TAG: number},
        )
        self.run_ids[tid] = run.info.run_id
        log_params(self.client, run.info.run_id, public_params(trial.config))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        tid = trial.trial_id
        self.final[tid] = bool(result.get(FINAL_KEY))
        metrics = self._metrics_of(trial, result)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        if tid not in self.run_ids:
            return
        if step <= self.last_step.get(tid, 0):
            # An epoch reported again after a restart from its checkpoint: its
            # per-epoch metrics are logged already; only a final report's own
            # metrics (the evaluation) are new.
            if not self.final[tid]:
                return
            logged = self.client.get_run(self.run_ids[tid]).data.metrics  # rare path: a restart at the end
            metrics = {k: v for k, v in metrics.items() if _base_name(k) not in self.kind.epoch_metrics and logged.get(k) != v}
            if self.history[tid]:
                self.history[tid][-1].update(metrics)
        else:
            self.last_step[tid] = step
            self.history[tid].append(metrics)
        tags = self._placement_tags(tid, result)
        if not metrics and not tags:
            return
        timestamp = int(result.get("timestamp", 0) * 1000)
        self.client.log_batch(self.run_ids[tid], metrics=[Metric(k, v, timestamp, step) for k, v in metrics.items()], tags=tags)

    def _placement_tags(self, tid: str, result: dict) -> list[Any]:
        """Tags saying where the trial runs (Ray node, its IP, the GPUs Ray gave it), when that changes."""
        from mlflow.entities import RunTag

        where = {NODE_ID_TAG: result.get("trial_node_id"), NODE_IP_TAG: result.get("node_ip"),
                 GPU_IDS_TAG: result.get("trial_gpu_ids")}
        where = {k: str(v) for k, v in where.items() if v is not None}
        if not where or self.placement.get(tid) == where:
            return []
        self.placement[tid] = where
        return [RunTag(k, v) for k, v in where.items()]

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None:
            retries = int(self.client.get_run(run_id).data.tags.get("retries", "0")) + 1
            self.client.set_tag(run_id, "retries", str(retries))
            error = _first_error_line(trial)
            if error:
                self.client.set_tag(run_id, f"retry_{retries}_error", error[:5000])

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        tid = trial.trial_id
        if tid not in self.run_ids:  # never started (a budget ended the sweep while it was pending)
            return
        run_id = self.run_ids[tid]
        if tid in self.done_before:  # finished before the crash; the re-run adds nothing
            self._close(tid, self.client.get_run(run_id).info.status, None)
            return
        pruned = not self.final.get(tid, False)
        config = apply_params(self.base_config, trial.config)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(asdict(config), indent=2))
            self.client.log_artifact(run_id, str(Path(tmp) / "config.json"))
            if pruned or trial.checkpoint is None:  # a trial that ran to the end drew its own figure
                figure_path = Path(tmp) / TRIAL_PLOT
                plot_trial(self.history[tid], self.kind, trial_title(trial.config), self.kind.describe_eval(config), figure_path)
                self.client.log_artifact(run_id, str(figure_path))
        if trial.checkpoint is not None and not pruned:
            with trial.checkpoint.as_directory() as d:
                model, example = self.kind.load_model(Path(d), config)
                if (Path(d) / TRIAL_PLOT).exists():
                    self.client.log_artifact(run_id, str(Path(d) / TRIAL_PLOT))
                report = Path(d) / REPORT_DIR  # evaluation tables and plots written by the trainable
                if report.is_dir() and any(report.iterdir()):
                    self.client.log_artifacts(run_id, str(report), REPORT_DIR)
            log_torch_model(run_id, model, example)
        self._close(tid, RunStatus.FINISHED, TrialOutcome.PRUNED if pruned else TrialOutcome.COMPLETE)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error = _first_error_line(trial)
        if error:
            self.client.set_tag(run_id, "error", error[:5000])
        self.n_failed += 1
        self._close(trial.trial_id, RunStatus.FAILED, TrialOutcome.FAILED)

    # helpers -----------------------------------------------------------------
    def _metrics_of(self, trial: Trial, result: dict) -> dict[str, float]:
        """The trial's own numeric metrics in a Tune result (not Tune's bookkeeping).

        The experiment kind declares what a trial with this config reports
        (named by the evaluation suite and the FL pipeline). A metric it did
        not declare is a bug in that declaration: it is still logged (a
        finished trial's data is never dropped) with a warning, or raises
        UndeclaredMetricError where STRICT_METRICS_ENV is set (the tests).
        """
        tid = trial.trial_id
        if tid not in self.declared:
            self.declared[tid] = frozenset(self.kind.metrics(apply_params(self.base_config, trial.config)))
        declared = self.declared[tid]
        metrics: dict[str, float] = {}
        for key, value in result.items():
            if key in TUNE_BOOKKEEPING or not isinstance(value, (int, float)):
                continue
            if _base_name(key) not in declared and key not in self.undeclared_seen:
                self.undeclared_seen.add(key)
                message = (f"trial {tid} reported {key!r}, which experiment kind {self.kind.name!r} does not declare "
                           "(ExperimentKind.final_metrics / epoch_metrics)")
                if os.environ.get(STRICT_METRICS_ENV) == "1":
                    raise UndeclaredMetricError(f"{message}; an error under {STRICT_METRICS_ENV}=1")
                logger.warning(f"{message}; logged anyway")
            metrics[key] = float(value)
        return metrics

    def _find_run(self, number: str) -> Any:
        if not number:
            return None
        found = self.client.search_runs([self.experiment_id], f"tags.`{SWEEP_ID_TAG}` = '{self.sweep_id}' and "
                                        f"tags.`{TRIAL_NUMBER_TAG}` = '{number}'", max_results=1)
        return found[0] if found else None

    def _load_history(self, tid: str, run: Any) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for key in run.data.metrics:
            if key in self.kind.epoch_metrics:
                for m in self.client.get_metric_history(run.info.run_id, key):
                    by_step.setdefault(m.step, {})[key] = m.value
        self.history[tid] = [by_step[k] for k in sorted(by_step)]
        self.last_step[tid] = max(by_step, default=0)

    def _close(self, tid: str, status: str, state: Optional[str]) -> None:
        run_id = self.run_ids[tid]
        if state is not None:
            self.client.set_tag(run_id, STATE_TAG, state)
        self.client.set_terminated(run_id, status=status)
        if state == TrialOutcome.COMPLETE and len(self.objectives) == 1 and self.history.get(tid):
            last: dict[str, float] = {}
            for m in self.history[tid]:
                last.update(m)
            self._note_best(TrialRecord("", run_id, status, {}, last, state))

    def _note_best(self, record: TrialRecord) -> None:
        if len(self.objectives) != 1 or not record.complete or self.objectives[0] not in record.metrics:
            return
        value = record.metrics[self.objectives[0]]
        if self.best is None or (value > self.best if self.modes[0] == "max" else value < self.best):
            self.best = value


def _base_name(metric: str) -> str:
    return metric[: -len("_std")] if metric.endswith("_std") else metric


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


def plot_sweep(records: list[TrialRecord], metric: str, space: dict[str, ParamSpec], best_trial_id: Optional[str], path: Path) -> bool:
    """Objective against each sampled parameter, one panel per parameter.

    Choices are categorical axes, log-uniform parameters get a log axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [r for r in records if r.complete and metric in r.metrics]
    if not done or not space:
        return False
    fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.6), squeeze=False)
    for ax, (name, spec) in zip(axes[0], space.items()):
        if isinstance(spec, (Choice, Grid)):
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
        xs, ys = [position(r.params.get(name)) for r in done], [r.metrics[metric] for r in done]
        ax.scatter(xs, ys, color="tab:blue")
        errors = [r.metrics.get(f"{metric}_std", math.nan) for r in done]
        if any(math.isfinite(e) for e in errors):  # replicates: mean +- std over seeds
            ax.errorbar(xs, ys, yerr=[e if math.isfinite(e) else 0.0 for e in errors], fmt="none", ecolor="tab:blue", alpha=0.5)
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
