"""Launch a sweep: preflight, local Ray, Optuna, Tune, MLflow, summary.

Nothing is written (no output folder, no MLflow run) until every check
that can fail before the first trial has passed.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuning.config import SweepConfig
from tuning.experiments import ExperimentKind, experiment_kind

MLFLOW_DB = "mlflow.db"
JOURNAL = "optuna.journal"
STAGES = "stages"  # results trials share (an FL base model and its margins), computed once per sweep


class LaunchError(RuntimeError):
    """A sweep that cannot start; the message says what to change."""


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
    metric: str
    mode: str
    status: str  # FINISHED | KILLED (interrupted) | FAILED, as on the parent run
    n_requested: int
    n_finished: int
    n_failed: int
    best: Optional[TrialSummary]
    ui_command: str
    best_url: Optional[str]


def _git_commit(cwd: Path) -> tuple[str, bool]:
    """(commit, dirty) of the repository holding cwd, or ('unknown', False)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def _sweep_dir(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / f"{name}-{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{stamp}-{n}"
    return candidate


def _init_ray(address: Optional[str]) -> bool:
    """Start (or join) Ray; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address or "local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    return True


def _check_feasible(cfg: SweepConfig) -> None:
    """Fail now, naming the request, if no node could ever run one trial."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    want_cpu, want_gpu = cfg.resources.cpu, cfg.resources.gpu
    if not any(n.get("CPU", 0) >= want_cpu and n.get("GPU", 0) >= want_gpu for n in nodes):
        have = ", ".join(f"node {i}: CPU={n.get('CPU', 0):g} GPU={n.get('GPU', 0):g}" for i, n in enumerate(nodes))
        raise LaunchError(
            f"resources: a trial asks for cpu={want_cpu:g} gpu={want_gpu:g}, but no node of the Ray cluster has that ({have})"
        )


def launch_sweep(cfg: SweepConfig, spec_text: str, *, spec_path: Optional[Path] = None, address: Optional[str] = None) -> SweepOutcome:
    """Run the whole sweep and return its outcome (best trial, where to look)."""
    kind = experiment_kind(cfg.experiment)
    kind.preflight(cfg.base)  # e.g. the dataset files exist

    started_ray = _init_ray(address)
    try:
        _check_feasible(cfg)
        return _run(cfg, kind, spec_text, spec_path)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _run(cfg: SweepConfig, kind: ExperimentKind, spec_text: str, spec_path: Optional[Path]) -> SweepOutcome:
    from ray import tune

    from tuning.searchers import create_searcher
    from tuning.tracking import MlflowTrialCallback, SweepTracker

    root = Path(cfg.output_dir).resolve()
    out = _sweep_dir(root, cfg.name)
    out.mkdir(parents=True)
    spec_file = out / "sweep.yaml"
    spec_file.write_text(spec_text)
    seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31)

    tracking_uri = cfg.tracking.uri or f"sqlite:///{root / MLFLOW_DB}"
    tracker = SweepTracker(tracking_uri, cfg.tracking.experiment or cfg.name, artifact_location=(root / "mlartifacts").as_uri())
    commit, dirty = _git_commit(spec_path.parent if spec_path else Path.cwd())
    tracker.start_parent(
        out.name,
        params={"seed": seed, "experiment": cfg.experiment, "sampler": cfg.search.sampler, "num_trials": cfg.search.num_trials,
                "metric": cfg.search.metric, "mode": cfg.search.mode, "space": ", ".join(cfg.space)},
        tags={"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower(), "sweep.id": out.name,
              "sweep.output_dir": str(out), "sweep.spec": str(spec_path) if spec_path else ""},
        artifacts=[spec_file],
    )
    callback = MlflowTrialCallback(tracker, kind, cfg.base, out.name)
    searcher = create_searcher(cfg.space, cfg.search.metric, cfg.search.mode, cfg.search.sampler, seed, out / JOURNAL, out.name)
    trainable = tune.with_resources(
        tune.with_parameters(kind.trainable, base=cfg.base, cpus=cfg.resources.cpu, gpus=cfg.resources.gpu,
                              stage_dir=str(out / STAGES)),
        {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=cfg.search.num_trials, max_concurrent_trials=cfg.search.max_concurrent,
            metric=cfg.search.metric, mode=cfg.search.mode,  # Tune's table then shows the objective
        ),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(out), callbacks=[callback],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
    # Keeping one checkpoint per trial forces a state snapshot at every
    # checkpoint, which is what crash-safe resume wants; Tune warns about it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # An objective may be a final-only metric (val_min_acc, val_pgd_first_acc)
    # that the per-epoch reports lack; Tune's strict check would fail the
    # trial on its first epoch. The spec already checked the metric is one
    # the experiment kind reports, and the searcher skips reports without it.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    status = "FAILED"
    try:
        tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        closed = callback.close_unfinished()
        if status == "FINISHED" and (closed or len(callback.records) < cfg.search.num_trials):
            status = "KILLED"  # Tune returns normally after Ctrl-C too
        records = list(callback.records.values())
        n_finished = sum(r.status == "FINISHED" for r in records)
        n_failed = sum(r.status == "FAILED" for r in records)
        best = _best(records, cfg.search.metric, cfg.search.mode)
        _finish_parent(tracker, out, records, best, cfg, status, n_finished, n_failed)
    if tracking_uri.startswith(("http://", "https://")):  # an MLflow server already serves the UI
        ui, ui_base = f"open {tracking_uri}", tracking_uri.rstrip("/")
    else:
        mlflow_exe = Path(sys.executable).with_name("mlflow")
        ui = f"{mlflow_exe if mlflow_exe.exists() else 'mlflow'} ui --backend-store-uri {tracking_uri} --port 5000"
        ui_base = "http://127.0.0.1:5000"
    return SweepOutcome(
        sweep_id=out.name, output_dir=out, tracking_uri=tracking_uri, experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id or "", metric=cfg.search.metric, mode=cfg.search.mode,
        status=status, n_requested=cfg.search.num_trials, n_finished=n_finished,
        n_failed=n_failed, best=best, ui_command=ui,
        best_url=f"{ui_base}/{tracker.run_url(best.run_id)}" if best else None,
    )


def _best(records: list, metric: str, mode: str) -> Optional[TrialSummary]:
    done = [r for r in records if r.status == "FINISHED" and metric in r.metrics]
    if not done:
        return None
    r = (max if mode == "max" else min)(done, key=lambda r: r.metrics[metric])
    return TrialSummary(r.trial_id, r.run_id, r.params, r.metrics[metric], r.metrics)


def _finish_parent(
    tracker: Any, out: Path, records: list, best: Optional[TrialSummary], cfg: SweepConfig, status: str, n_finished: int, n_failed: int
) -> None:
    """Trial table, sweep plot and best trial on the parent run; then end it."""
    from tuning.tracking import plot_sweep

    client, run_id = tracker.client, tracker.parent_run_id
    metric = cfg.search.metric
    table = out / "trials.csv"
    params = sorted({k for r in records for k in r.params})
    metrics = sorted({k for r in records for k in r.metrics})
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial_id", "run_id", "status", *params, *metrics])
        for r in records:
            writer.writerow([r.trial_id, r.run_id, r.status, *(r.params.get(p, "") for p in params), *(r.metrics.get(m, "") for m in metrics)])
    client.log_artifact(run_id, str(table))
    if plot_sweep(records, metric, cfg.space, best.trial_id if best else None, out / "sweep.png"):
        client.log_artifact(run_id, str(out / "sweep.png"))
    client.log_metric(run_id, "n_trials_finished", n_finished)
    client.log_metric(run_id, "n_trials_failed", n_failed)
    summary: dict[str, Any] = {"status": status, "metric": metric, "mode": cfg.search.mode, "best": None}
    if best is not None:
        client.log_metric(run_id, f"best_{metric}", best.value)
        client.set_tag(run_id, "best.run_id", best.run_id)
        client.set_tag(run_id, "best.trial_id", best.trial_id)
        summary["best"] = {"trial_id": best.trial_id, "run_id": best.run_id, "params": best.params, "value": best.value}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    client.set_terminated(run_id, status=status)
