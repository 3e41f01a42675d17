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
from typing import Any, Optional

from tuning.config import SweepConfig
from tuning.experiments import ExperimentKind, experiment_kind

MLFLOW_DB = "mlflow.db"
JOURNAL = "optuna.journal"
STAGES = "stages"  # results trials share (an FL base model and its margins), computed once per sweep
SPEC_FILE = "sweep.yaml"
STATE_FILE = "sweep.json"
TUNE_DIR = "tune"
STARTED_MARK = "sweep started:"  # printed once the sweep's folder and MLflow runs exist
JOB_ID_ENV = "SWEEP_RAY_JOB_ID"  # set by `sweep submit` in the job's environment
JOBS_ADDRESS_ENV = "SWEEP_JOBS_ADDRESS"  # the dashboard the job was submitted to (for the hints it prints)


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
    metric: str  # the objective(s), comma-separated
    mode: str
    status: str  # FINISHED | KILLED (interrupted) | FAILED, as on the parent run
    n_requested: int
    n_finished: int  # ran to the end (complete)
    n_failed: int
    best: Optional[TrialSummary]  # single objective
    ui_command: str
    best_url: Optional[str]
    n_pruned: int = 0  # stopped early by the scheduler
    pareto: list[TrialSummary] = field(default_factory=list)  # several objectives
    stop_reason: str = ""  # a budget that ended the sweep early


@dataclass(frozen=True)
class SweepInfo:
    """What `sweep status` and `sweep ls` show, read from the sweep's folder."""

    sweep_id: str
    path: Path
    name: str
    status: str  # RUNNING | FINISHED | KILLED | FAILED | DEAD (the driver died without closing it)
    counts: dict[str, int]  # Optuna trial states: COMPLETE, PRUNED, FAIL, RUNNING
    n_requested: int
    metrics: list[str]
    modes: list[str]
    best: Optional[tuple[int, list[float], dict[str, Any]]]  # (trial number, values, params); first Pareto point if several
    driver_pid: Optional[int]


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


# --- the sweep's folder ------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_state(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"{sweep_dir}: not a sweep folder (no {STATE_FILE})") from None


def _write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    tmp = Path(sweep_dir) / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(Path(sweep_dir) / STATE_FILE)


def _pid_alive(pid: Optional[int], host: Optional[str]) -> bool:
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


_STAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")


def is_launch_of(sweep_id: str, name: str) -> bool:
    """Whether a sweep id is `<name>-<timestamp>[-n]` (not `<name>-2-<timestamp>`, another name)."""
    return sweep_id.startswith(f"{name}-") and _STAMP.fullmatch(sweep_id[len(name) + 1:]) is not None


def find_sweep(name: str, root: Path) -> Path:
    """A sweep folder by path, by id (`<name>-<timestamp>`) or by name (the latest launch)."""
    candidate = Path(name)
    if (candidate / STATE_FILE).exists():
        return candidate.resolve()
    root = Path(root)
    if (root / name / STATE_FILE).exists():
        return (root / name).resolve()
    matches = sorted((p for p in root.glob(f"{name}-*") if (p / STATE_FILE).exists() and is_launch_of(p.name, name)),
                     key=lambda p: read_state(p).get("created", 0))
    if not matches:
        known = sorted(p.name for p in root.glob("*") if (p / STATE_FILE).exists()) if root.is_dir() else []
        raise LaunchError(f"no sweep {name!r} under {root}" + (f"; there are: {', '.join(known)}" if known else ""))
    return matches[-1].resolve()


def list_sweeps(root: Path) -> list[SweepInfo]:
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if (p / STATE_FILE).exists()]
    return [sweep_info(p) for p in sorted(dirs, key=lambda p: read_state(p).get("created", 0))]


def sweep_info(sweep_dir: Path) -> SweepInfo:
    """Trials by state and the best so far, from the Optuna journal (no Ray, no MLflow)."""
    from optuna.trial import TrialState

    from tuning.searchers import open_study

    state = read_state(sweep_dir)
    counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0}
    best = None
    journal = Path(sweep_dir) / JOURNAL
    if journal.exists():
        study = open_study(journal, state["sweep_id"], state["modes"])
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done:
            pick = study.best_trials[0]  # the best trial; with several objectives, a Pareto-optimal one
            best = (pick.number, list(pick.values), dict(pick.params))
    status = state.get("status", "RUNNING")
    alive = _pid_alive(state.get("driver_pid"), state.get("driver_host"))
    if status == "RUNNING" and not alive and state.get("driver_host") == socket.gethostname():
        status = "DEAD"
    return SweepInfo(state["sweep_id"], Path(sweep_dir), state["name"], status, counts, state["num_trials"],
                     state["metrics"], state["modes"], best, state.get("driver_pid") if alive else None)


def stop_sweep(sweep_dir: Path) -> str:
    """Ask a running sweep's driver to stop gracefully (SIGINT: Tune saves its
    state, unfinished trials are closed as KILLED); `sweep resume` continues it."""
    state = read_state(sweep_dir)
    pid, host = state.get("driver_pid"), state.get("driver_host")
    if state.get("status") != "RUNNING":
        raise LaunchError(f"sweep {state['sweep_id']} is not running (status {state.get('status')})")
    if host != socket.gethostname():
        raise LaunchError(f"sweep {state['sweep_id']} runs on {host}; stop it there")
    if not _pid_alive(pid, host):
        raise LaunchError(f"sweep {state['sweep_id']}: its driver (pid {pid}) is gone; `sweep resume {state['sweep_id']}` continues it")
    os.kill(pid, signal.SIGINT)
    return f"sent SIGINT to the driver of {state['sweep_id']} (pid {pid}); it saves its state and exits"


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
        out = root / sweep_id if sweep_id is not None else _sweep_dir(root, cfg.name)
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
        state = {"sweep_id": out.name, "name": cfg.name, "created": time.time(), "spec_sha256": _sha(spec_text),
                 "spec_path": str(spec_path) if spec_path else None, "tracking_uri": tracking_uri,
                 "experiment_id": tracker.experiment_id, "parent_run_id": tracker.parent_run_id, "seed": seed,
                 "metrics": s.metrics, "modes": s.modes, "num_trials": s.num_trials, "status": "RUNNING"}
        return _execute(cfg, kind, out, tracker, state, restore=False)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def resume_sweep(sweep_dir: Path, *, spec_text: Optional[str] = None, spec_file: str = "<spec>",
                 address: Optional[str] = None) -> SweepOutcome:
    """Finish an interrupted sweep: trials continue from their checkpoints,
    finished ones are kept, nothing is asked or recorded twice.

    spec_text: the spec the user means to resume; refused if it differs from
    the one the sweep was launched with.
    """
    from sweeps.spec import parse_sweep
    from tuning.tracking import SweepTracker

    out = Path(sweep_dir).resolve()
    state = read_state(out)
    stored = (out / SPEC_FILE).read_text()
    if _sha(stored) != state["spec_sha256"]:
        raise LaunchError(f"{out / SPEC_FILE}: edited after launch; a sweep resumes only with the spec it was launched with")
    cfg = parse_sweep(stored, str(out / SPEC_FILE)).config
    if spec_text is not None:
        given = parse_sweep(spec_text, spec_file).config
        changed = _changed_fields(cfg, given)
        if changed:
            raise LaunchError(f"{spec_file}: differs from the spec sweep {state['sweep_id']} was launched with "
                              f"({'; '.join(changed[:5])}); resume refuses a changed spec: launch a new sweep instead")
    if state.get("status") == "FINISHED":
        raise LaunchError(f"sweep {state['sweep_id']} has finished; nothing to resume")
    if _pid_alive(state.get("driver_pid"), state.get("driver_host")) and state.get("status") == "RUNNING":
        raise LaunchError(f"sweep {state['sweep_id']} is still running (driver pid {state['driver_pid']}); `sweep stop` it first")
    kind = experiment_kind(cfg.experiment)
    kind.preflight(cfg.base)
    started_ray = _init_ray(address)
    try:
        _check_cluster(cfg, out.parent, state["tracking_uri"],
                       default_tracking=state["tracking_uri"] == f"sqlite:///{out.parent / MLFLOW_DB}")
        tracker = SweepTracker(state["tracking_uri"], "", experiment_id=state["experiment_id"])
        tracker.parent_run_id = state["parent_run_id"]
        tracker.client.update_run(tracker.parent_run_id, status="RUNNING")
        return _execute(cfg, kind, out, tracker, state, restore=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _changed_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between two configs (output_dir aside)."""
    import dataclasses

    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        out = []
        for f in dataclasses.fields(a):
            if prefix == "" and f.name == "output_dir":
                continue
            out += _changed_fields(getattr(a, f.name), getattr(b, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}: {'added' if k in b else 'removed'}")
            else:
                out += _changed_fields(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


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
    # Rungs count the trial's own epochs, not Tune's reports: a trial resumed
    # from a checkpoint newer than the one Tune recorded
    # (trainables._successor_states) has its iteration count one behind.
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule

    sc = cfg.scheduler
    if sc.name == "fifo":
        return FIFOScheduler()
    metric, mode = cfg.scheduler_metric
    max_t = sc.max_t or _max_epochs(cfg, kind)
    if sc.name == "asha":
        return ASHAScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                             grace_period=sc.grace_period, reduction_factor=sc.reduction_factor)
    if sc.name == "hyperband":
        return HyperBandScheduler(time_attr="epoch", metric=metric, mode=mode, max_t=max_t,
                                  reduction_factor=sc.reduction_factor)
    return MedianStoppingRule(time_attr="epoch", metric=metric, mode=mode, grace_period=sc.grace_period,
                              min_samples_required=sc.min_samples_required)


def _execute(cfg: SweepConfig, kind: ExperimentKind, out: Path, tracker: Any, state: dict[str, Any], *, restore: bool) -> SweepOutcome:
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
    state.update(status="RUNNING", driver_pid=os.getpid(), driver_host=socket.gethostname(),
                 ray_job_id=os.environ.get(JOB_ID_ENV) or state.get("ray_job_id"))
    _write_state(out, state)
    print(f"{STARTED_MARK} {out.name} in {out}", flush=True)  # `sweep submit` waits for this line
    status = "FAILED"
    started = time.time()
    try:
        tuner.fit()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        outcome = _finish(cfg, out, tracker, state, status, time.time() - started)
    return outcome


def _finish(cfg: SweepConfig, out: Path, tracker: Any, state: dict[str, Any], status: str, elapsed: float) -> SweepOutcome:
    """Close unfinished runs, summarise every trial in the MLflow store (this
    launch's and earlier ones') on the parent run, update sweep.json."""
    from tuning.pareto import pareto_front

    s = cfg.search
    client = tracker.client
    for run in tracker.children():
        if run.info.status == "RUNNING":  # interrupted: a resume re-attaches to it
            client.set_terminated(run.info.run_id, status="KILLED")
    records = tracker.records()
    n_complete = sum(r.complete for r in records)
    n_pruned = sum(r.status == "FINISHED" and r.state == "PRUNED" for r in records)
    n_failed = sum(r.status == "FAILED" for r in records)
    stop_reason = ""
    if cfg.budget.max_failed_trials is not None and n_failed >= cfg.budget.max_failed_trials:
        stop_reason = f"{n_failed} trials failed (budget.max_failed_trials {cfg.budget.max_failed_trials})"
    best = _best(records, s.metrics[0], s.modes[0]) if not s.multi_objective else None
    if best is not None and cfg.budget.target is not None and (
            best.value >= cfg.budget.target if s.modes[0] == "max" else best.value <= cfg.budget.target):
        stop_reason = stop_reason or f"trial {best.trial_id} reached the target {cfg.budget.target:g}"
    if cfg.budget.time_s is not None and elapsed >= cfg.budget.time_s * 0.98:
        stop_reason = stop_reason or f"time budget of {cfg.budget.time_s:g} s spent"
    if status == "FINISHED" and n_complete + n_pruned + n_failed < s.num_trials and not stop_reason:
        status = "KILLED"  # Tune returns normally after Ctrl-C too
    front = pareto_front(records, s.metrics, s.modes) if s.multi_objective else []
    _finish_parent(tracker, out, records, best, front, cfg, status, stop_reason)
    state.update(status=status, driver_pid=None, stop_reason=stop_reason)
    _write_state(out, state)
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
        stop_reason=stop_reason,
    )


def _best(records: list, metric: str, mode: str) -> Optional[TrialSummary]:
    done = [r for r in records if r.complete and metric in r.metrics and math.isfinite(r.metrics[metric])]
    if not done:
        return None
    r = (max if mode == "max" else min)(done, key=lambda r: r.metrics[metric])
    return TrialSummary(r.trial_id, r.run_id, r.params, r.metrics[metric], r.metrics)


def _finish_parent(tracker: Any, out: Path, records: list, best: Optional[TrialSummary], front: list, cfg: SweepConfig,
                   status: str, stop_reason: str) -> None:
    """Trial table, sweep plot, Pareto front and best trial on the parent run; then end it."""
    from tuning.pareto import plot_pareto
    from tuning.tracking import plot_sweep

    client, run_id = tracker.client, tracker.parent_run_id
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
    client.log_artifact(run_id, str(table))
    if plot_sweep(records, s.metrics[0], cfg.space, best.trial_id if best else None, out / "sweep.png"):
        client.log_artifact(run_id, str(out / "sweep.png"))
    if s.multi_objective:
        for r in records:
            if r.complete:
                client.set_tag(r.run_id, "pareto", str(r.run_id in on_front).lower())
        if plot_pareto(records, front, s.metrics, s.modes, out / "pareto.png"):
            client.log_artifact(run_id, str(out / "pareto.png"))
        client.log_metric(run_id, "n_pareto", len(front))
        client.set_tag(run_id, "pareto.trials", ",".join(r.trial_id for r in front))
    client.log_metric(run_id, "n_trials_finished", sum(r.complete for r in records))
    client.log_metric(run_id, "n_trials_pruned", sum(r.status == "FINISHED" and r.state == "PRUNED" for r in records))
    client.log_metric(run_id, "n_trials_failed", sum(r.status == "FAILED" for r in records))
    if stop_reason:
        client.set_tag(run_id, "stop_reason", stop_reason)
    summary: dict[str, Any] = {"status": status, "metric": s.metric, "mode": s.mode, "best": None, "stop_reason": stop_reason,
                               "pareto": [{"trial": r.trial_id, "run_id": r.run_id, "params": r.params,
                                           "values": [r.metrics[m] for m in s.metrics]} for r in front]}
    if best is not None:
        metric = s.metrics[0]
        client.log_metric(run_id, f"best_{metric}", best.value)
        if f"{metric}_std" in best.metrics:
            client.log_metric(run_id, f"best_{metric}_std", best.metrics[f"{metric}_std"])
        client.set_tag(run_id, "best.run_id", best.run_id)
        client.set_tag(run_id, "best.trial", best.trial_id)
        summary["best"] = {"trial": best.trial_id, "run_id": best.run_id, "params": best.params, "value": best.value,
                           "std": best.metrics.get(f"{s.metrics[0]}_std")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    client.set_terminated(run_id, status=status)
