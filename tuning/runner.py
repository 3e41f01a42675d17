"""Launch, resume and stop sweeps: preflight, Ray, Optuna, Tune, MLflow, summary.

Nothing is written (no output folder, no MLflow run) until every check
that can fail before the first trial has passed. A sweep's folder holds
everything needed to resume it after the driver died at any moment: the
spec as launched (`sweep.yaml`), `sweep.json` (where its MLflow runs are,
its seed, the driver's pid), the Optuna journal and Tune's state.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from tuning.config import SweepConfig
from tuning.status import SweepStatus, TrialOutcome
from tuning.study_plots import plot_study
from tuning.folder import (JOB_ID_ENV, JOBS_ADDRESS_ENV, JOURNAL, MLFLOW_DB, SPEC_FILE, STAGES, STARTED_MARK, STATE_FILE, TUNE_DIR,
                           LaunchError, SweepInfo, find_sweep, is_launch_of, list_sweeps, new_sweep_dir, pid_alive, read_state,
                           spec_sha, stop_sweep, sweep_info, write_state)
from tuning.kinds import ExperimentKind, experiment_kind

if TYPE_CHECKING:
    from tuning.tracking import SweepTracker  # imports Ray: only where a sweep runs


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    run_id: str
    params: dict[str, Any]
    value: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class SweepOutcome:
    sweep_id: str
    output_dir: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    metric: str  # the objective(s), comma-separated
    mode: str
    status: SweepStatus  # FINISHED | KILLED (interrupted) | FAILED, as on the parent run
    n_requested: int
    n_finished: int  # ran to the end (complete)
    n_failed: int
    best: Optional[TrialSummary]  # single objective
    ui_command: str
    best_url: Optional[str]
    experiment_url: str = ""  # the sweep's runs in the MLflow UI
    n_pruned: int = 0  # stopped early by the scheduler
    pareto: list[TrialSummary] = field(default_factory=list)  # several objectives
    stop_reason: str = ""  # a budget that ended the sweep early


def _git_commit(cwd: Path) -> tuple[str, bool]:
    """(commit, dirty) of the repository holding cwd, or ('unknown', False)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


# --- Ray --------------------------------------------------------------------------------


def _init_ray(address: Optional[str]) -> bool:
    """Start a local Ray, or join the cluster at `address` ('auto', 'HOST:PORT',
    'ray://HOST:10001'); returns True if this call started or joined it."""
    import ray

    from tuning.cluster import client_server_failed, explain_ray_error, is_dashboard, use_token_auth

    if ray.is_initialized():
        return False
    if is_dashboard(address):
        raise LaunchError(f"--address {address}: that is a Ray dashboard (Jobs) address; "
                          f"`sweep submit FILE --address {address}` runs a sweep there as a Ray job")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    use_token_auth()
    if not address or address == "local":
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        return True
    attempts = CLIENT_START_ATTEMPTS if address.startswith("ray://") else 1
    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
            return True
        except Exception as exc:  # noqa: BLE001 - unreachable or refused: one line saying which and what to do
            message = explain_ray_error(exc, address)
            if message is None:
                raise
            if attempt < attempts and client_server_failed(exc):
                print(f"note: attempt {attempt} of {attempts}: {message}; trying again", file=sys.stderr, flush=True)
                time.sleep(CLIENT_RETRY_PAUSE_S)
                continue
            raise LaunchError(message) from None
    raise AssertionError("unreachable")


# A Ray Client (ray://) connection makes the head start a server process for this
# client; on a loaded head that start can fail or outlast the head's 30 s wait
# once and succeed the next time. Nothing has been written yet, so try again.
CLIENT_START_ATTEMPTS = 3
CLIENT_RETRY_PAUSE_S = 5.0


def _check_cluster(cfg: SweepConfig, root: Path, tracking_uri: str, default_tracking: bool) -> None:
    """Fail now, before anything is written, if the cluster cannot run the sweep
    as asked; print how its trials pack onto the nodes."""
    from tuning.cluster import ClusterError, check_cluster

    try:
        line = check_cluster(root, tracking_uri, default_tracking, cfg.resources.cpu, cfg.resources.gpu,
                             cfg.search.max_concurrent)
    except ClusterError as exc:
        raise LaunchError(str(exc)) from None
    print(line, flush=True)


# --- launch and resume ------------------------------------------------------------------


def launch_sweep(cfg: SweepConfig, spec_text: str, *, spec_path: Optional[Path] = None, address: Optional[str] = None,
                 sweep_id: Optional[str] = None) -> SweepOutcome:
    """Run the whole sweep and return its outcome (best trial, where to look).

    sweep_id: the sweep folder's name (`sweep submit` chooses it so the Ray
    job and the folder share it); default `<name>-<timestamp>`.
    """
    from tuning.tracking import SweepTracker

    kind = experiment_kind(cfg.experiment)
    kind.preflight(cfg.base)  # e.g. the dataset files exist
    root = Path(cfg.output_dir).resolve()
    if sweep_id is not None and (root / sweep_id).exists():
        raise LaunchError(f"{root / sweep_id}: exists already; a sweep id names a new folder")
    tracking_uri = cfg.tracking.uri or f"sqlite:///{root / MLFLOW_DB}"

    started_ray = _init_ray(address)
    try:
        _check_cluster(cfg, root, tracking_uri, default_tracking=cfg.tracking.uri is None)
        out = root / sweep_id if sweep_id is not None else new_sweep_dir(root, cfg.name)
        out.mkdir(parents=True)
        (out / SPEC_FILE).write_text(spec_text)
        seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)
        # With an MLflow server the server stores the artifacts (proxied); with a file store, next to the sweeps.
        artifacts = None if tracking_uri.startswith(("http://", "https://")) else (root / "mlartifacts").as_uri()
        tracker = SweepTracker(tracking_uri, cfg.tracking.experiment or cfg.name, artifact_location=artifacts)
        commit, dirty = _git_commit(spec_path.parent if spec_path else Path.cwd())
        s = cfg.search
        tracker.start_parent(
            out.name,
            params={"seed": seed, "experiment": cfg.experiment, "sampler": s.sampler, "num_trials": s.num_trials,
                    "metric": ",".join(s.metrics), "mode": ",".join(s.modes), "space": ", ".join(cfg.space),
                    "scheduler": cfg.scheduler.name, "replicates": s.replicates, "max_failures": s.max_failures},
            tags={"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower(), "sweep.id": out.name,
                  "sweep.output_dir": str(out), "sweep.spec": str(spec_path) if spec_path else ""},
            artifacts=[out / SPEC_FILE],
        )
        state = {"sweep_id": out.name, "name": cfg.name, "created": time.time(), "spec_sha256": spec_sha(spec_text),
                 "spec_path": str(spec_path) if spec_path else None, "tracking_uri": tracking_uri,
                 "experiment_id": tracker.experiment_id, "parent_run_id": tracker.parent_run_id, "seed": seed,
                 "metrics": s.metrics, "modes": s.modes, "num_trials": s.num_trials, "status": SweepStatus.RUNNING}
        return _execute(cfg, kind, out, tracker, state, restore=False)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def resume_sweep(sweep_dir: Path, cfg: SweepConfig, *, address: Optional[str] = None) -> SweepOutcome:
    """Finish an interrupted sweep: trials continue from their checkpoints,
    finished ones are kept, nothing is asked or recorded twice.

    cfg: the sweep's config, parsed from the spec stored in its folder (the
    caller checks it is the spec it was launched with, sweeps.stored).
    """
    from tuning.tracking import SweepTracker

    out = Path(sweep_dir).resolve()
    state = read_state(out)
    if state.get("status") == SweepStatus.FINISHED:
        raise LaunchError(f"sweep {state['sweep_id']} has finished; nothing to resume")
    if pid_alive(state.get("driver_pid"), state.get("driver_host")) and state.get("status") == SweepStatus.RUNNING:
        raise LaunchError(f"sweep {state['sweep_id']} is still running (driver pid {state['driver_pid']}); `sweep stop` it first")
    kind = experiment_kind(cfg.experiment)
    kind.preflight(cfg.base)
    started_ray = _init_ray(address)
    try:
        _check_cluster(cfg, out.parent, state["tracking_uri"],
                       default_tracking=state["tracking_uri"] == f"sqlite:///{out.parent / MLFLOW_DB}")
        tracker = SweepTracker(state["tracking_uri"], "", experiment_id=state["experiment_id"])
        tracker.reopen_parent(state["parent_run_id"])
        return _execute(cfg, kind, out, tracker, state, restore=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _tune_trial_ids(tune_dir: Path) -> set[str]:
    """The trial ids in Tune's saved experiment state."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id for t in ExperimentAnalysis(str(tune_dir)).trials}
    except Exception:  # noqa: BLE001 - no state saved yet: Tune knows no trial
        return set()


def _max_epochs(cfg: SweepConfig, kind: ExperimentKind) -> int:
    from tuning.space import boundary_values

    epochs = cfg.base
    for part in kind.epochs_path.split("."):
        epochs = getattr(epochs, part)
    spec = cfg.space.get(kind.epochs_path)
    if spec is not None:
        return max(int(v) for v in boundary_values(spec))
    return int(epochs)


def _scheduler(cfg: SweepConfig, kind: ExperimentKind) -> Any:
    from tuning.schedulers import SCHEDULERS

    metric, mode = cfg.scheduler_metric
    return SCHEDULERS.create(cfg.scheduler.name, sc=cfg.scheduler, metric=metric, mode=mode,
                             max_t=cfg.scheduler.max_t or _max_epochs(cfg, kind))


def _execute(cfg: SweepConfig, kind: ExperimentKind, out: Path, tracker: SweepTracker, state: dict[str, Any], *,
             restore: bool) -> SweepOutcome:
    from ray import tune

    from tuning.searchers import OptunaSweepSearcher, mark_orphans
    from tuning.stopper import BudgetStopper
    from tuning.tracking import MlflowTrialCallback

    s = cfg.search
    trainable = tune.with_resources(
        tune.with_parameters(kind.trainable, base=cfg.base, cpus=cfg.resources.cpu, gpus=cfg.resources.gpu,
                              stage_dir=str(out / STAGES), replicates=s.replicates),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    # Keeping one checkpoint per trial forces a state snapshot at every
    # checkpoint, which is what crash-safe resume wants; Tune warns about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # An objective may be a final-only metric (val_min_acc, val_pgd_first_acc)
    # that the per-epoch reports lack; Tune's strict check would fail the
    # trial on its first epoch. The spec already checked the metric is one
    # the experiment kind reports, and the searcher skips reports without it.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tune_dir = out / TUNE_DIR
    restorable = tune.Tuner.can_restore(str(tune_dir)) and any(tune_dir.glob("experiment_state-*.json"))
    if restore:
        orphans = mark_orphans(out / JOURNAL, state["sweep_id"], s.modes, _tune_trial_ids(tune_dir) if restorable else set())
        if orphans:
            print(f"resume: Optuna trials {orphans} were asked but never started; they run now", flush=True)
        if not restorable and tune_dir.exists():  # killed before Tune saved anything: start Tune afresh
            tune_dir.rename(out / f"{TUNE_DIR}.unsaved-{int(time.time())}")
    if restore and restorable:
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=False)
    else:
        callback = MlflowTrialCallback(tracker.tracking_uri, tracker.experiment_id, tracker.parent_run_id, kind, cfg.base,
                                       out.name, s.metrics, s.modes)
        callback.use_tracker(tracker)  # one MLflow client in the driver (a restored callback opens its own)
        searcher = OptunaSweepSearcher(cfg.space, s.metrics, s.modes, s.sampler, state["seed"], out / JOURNAL, out.name)
        stopper = BudgetStopper(callback, cfg.budget.max_failed_trials, cfg.budget.target, s.modes[0])
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=_scheduler(cfg, kind), num_samples=s.num_trials,
                max_concurrent_trials=s.max_concurrent, time_budget_s=cfg.budget.time_s,
                # A trial reuses a finished trial's worker process: no new Python, no
                # re-import of torch (about 4 s per trial here, benchmarks/sweep_overhead.py).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=str(out), callbacks=[callback], stop=stopper,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                verbose=1,
            ),
        )
    state.update(status=SweepStatus.RUNNING, driver_pid=os.getpid(), driver_host=socket.gethostname(),
                 ray_job_id=os.environ.get(JOB_ID_ENV) or state.get("ray_job_id"))
    write_state(out, state)
    print(f"{STARTED_MARK} {out.name} in {out}", flush=True)  # `sweep submit` waits for this line
    status = SweepStatus.FAILED
    started = time.time()
    try:
        tuner.fit()
        status = SweepStatus.FINISHED
    except KeyboardInterrupt:
        status = SweepStatus.KILLED
        raise
    finally:
        outcome = _finish(cfg, out, tracker, state, status, time.time() - started)
    return outcome


def _finish(cfg: SweepConfig, out: Path, tracker: SweepTracker, state: dict[str, Any], status: SweepStatus,
            elapsed: float) -> SweepOutcome:
    """Close unfinished runs, summarise every trial in the MLflow store (this
    launch's and earlier ones') on the parent run, update sweep.json."""
    from tuning.pareto import pareto_front
    from tuning.tracking import trial_counts

    s = cfg.search
    tracker.close_interrupted()
    records = tracker.records()
    counts = trial_counts(records)
    n_complete, n_pruned, n_failed = counts[TrialOutcome.COMPLETE], counts[TrialOutcome.PRUNED], counts[TrialOutcome.FAILED]
    stop_reason = ""
    if cfg.budget.max_failed_trials is not None and n_failed >= cfg.budget.max_failed_trials:
        stop_reason = f"{n_failed} trials failed (budget.max_failed_trials {cfg.budget.max_failed_trials})"
    best = _best(records, s.metrics[0], s.modes[0]) if not s.multi_objective else None
    if best is not None and cfg.budget.target is not None and (
            best.value >= cfg.budget.target if s.modes[0] == "max" else best.value <= cfg.budget.target):
        stop_reason = stop_reason or f"trial {best.trial_id} reached the target {cfg.budget.target:g}"
    if cfg.budget.time_s is not None and elapsed >= cfg.budget.time_s * 0.98:
        stop_reason = stop_reason or f"time budget of {cfg.budget.time_s:g} s spent"
    if status == SweepStatus.FINISHED and n_complete + n_pruned + n_failed < s.num_trials and not stop_reason:
        status = SweepStatus.KILLED  # Tune returns normally after Ctrl-C too
    front = pareto_front(records, s.metrics, s.modes) if s.multi_objective else []
    files = _summary_files(out, records, best, front, cfg, status, stop_reason)
    optuna_plots = plot_study(out / JOURNAL, state["sweep_id"], s.metrics, s.modes, out) if cfg.space else []
    tracker.log_parent_files(optuna_plots, "optuna")
    best_record = next((r for r in records if best is not None and r.run_id == best.run_id), None)
    tracker.finish_parent(status, records=records, files=files, front=front, best=best_record, metric=s.metrics[0],
                          stop_reason=stop_reason)
    state.update(status=status, driver_pid=None, stop_reason=stop_reason)
    write_state(out, state)
    tracking_uri = tracker.tracking_uri
    if tracking_uri.startswith(("http://", "https://")):  # an MLflow server already serves the UI
        ui, ui_base = f"open {tracking_uri}", tracking_uri.rstrip("/")
    else:
        mlflow_exe = Path(sys.executable).with_name("mlflow")
        ui = f"{mlflow_exe if mlflow_exe.exists() else 'mlflow'} ui --backend-store-uri {tracking_uri} --port 5000"
        ui_base = "http://127.0.0.1:5000"
    pareto = [TrialSummary(r.trial_id, r.run_id, r.params, r.metrics[s.metrics[0]], r.metrics) for r in front]
    return SweepOutcome(
        sweep_id=out.name, output_dir=out, tracking_uri=tracking_uri, experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id or "", metric=",".join(s.metrics), mode=",".join(s.modes),
        status=status, n_requested=s.num_trials, n_finished=n_complete, n_failed=n_failed, best=best, ui_command=ui,
        best_url=f"{ui_base}/{tracker.run_url(best.run_id)}" if best else None, n_pruned=n_pruned, pareto=pareto,
        experiment_url=f"{ui_base}/{tracker.experiment_url()}",
        stop_reason=stop_reason,
    )


def _best(records: list, metric: str, mode: str) -> Optional[TrialSummary]:
    done = [r for r in records if r.complete and metric in r.metrics and math.isfinite(r.metrics[metric])]
    if not done:
        return None
    r = (max if mode == "max" else min)(done, key=lambda r: r.metrics[metric])
    return TrialSummary(r.trial_id, r.run_id, r.params, r.metrics[metric], r.metrics)


def _summary_files(out: Path, records: list, best: Optional[TrialSummary], front: list, cfg: SweepConfig,
                   status: SweepStatus, stop_reason: str) -> list[Path]:
    """The sweep's summary in its folder (trials.csv, sweep.png, pareto.png,
    summary.json), for the parent run; returns the files written."""
    from tuning.pareto import plot_pareto
    from tuning.tracking import plot_sweep

    s = cfg.search
    table = out / "trials.csv"
    params = sorted({k for r in records for k in r.params})
    metrics = sorted({k for r in records for k in r.metrics})
    on_front = {r.run_id for r in front}
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "run_id", "status", "state", *(["pareto"] if s.multi_objective else []), *params, *metrics])
        for r in records:
            writer.writerow([r.trial_id, r.run_id, r.status, r.state, *([str(r.run_id in on_front).lower()] if s.multi_objective else []),
                             *(r.params.get(p, "") for p in params), *(r.metrics.get(m, "") for m in metrics)])
    files = [table]
    if plot_sweep(records, s.metrics[0], cfg.space, best.trial_id if best else None, out / "sweep.png"):
        files.append(out / "sweep.png")
    if s.multi_objective and plot_pareto(records, front, s.metrics, s.modes, out / "pareto.png"):
        files.append(out / "pareto.png")
    summary: dict[str, Any] = {"status": status, "metric": s.metric, "mode": s.mode, "best": None, "stop_reason": stop_reason,
                               "pareto": [{"trial": r.trial_id, "run_id": r.run_id, "params": r.params,
                                           "values": [r.metrics[m] for m in s.metrics]} for r in front]}
    if best is not None:
        summary["best"] = {"trial": best.trial_id, "run_id": best.run_id, "params": best.params, "value": best.value,
                           "std": best.metrics.get(f"{s.metrics[0]}_std")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    files.append(out / "summary.json")
    return files
