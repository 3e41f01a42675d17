"""A sweep's folder: where everything of one sweep lives, and its state file.

`runs/<sweep id>/` holds the spec as launched (`sweep.yaml`), the state
(`sweep.json`: ids, seed, objectives, driver pid and host, status), the
Optuna journal, Tune's experiment folder and the stages trials share. These
functions read and write it without Ray or MLflow (`sweep status`, `sweep ls`,
`sweep stop` and finding a sweep by name need neither).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tuning.status import SweepStatus, TrialOutcome, count, outcome_of_optuna

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
class SweepInfo:
    """What `sweep status` and `sweep ls` show, read from the sweep's folder."""

    sweep_id: str
    path: Path
    name: str
    status: SweepStatus  # DEAD: RUNNING in the folder, but the driver died without closing it
    counts: dict[TrialOutcome, int]  # from the Optuna journal (no KILLED there: an interrupted trial is RUNNING)
    n_requested: int
    metrics: list[str]
    modes: list[str]
    best: Optional[tuple[int, list[float], dict[str, Any]]]  # (trial number, values, params); first Pareto point if several
    driver_pid: Optional[int]


def new_sweep_dir(root: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = root / f"{name}-{stamp}", 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{stamp}-{n}"
    return candidate


# --- the sweep's folder ------------------------------------------------------------


def spec_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_state(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LaunchError(f"{sweep_dir}: not a sweep folder (no {STATE_FILE})") from None


def write_state(sweep_dir: Path, state: dict[str, Any]) -> None:
    tmp = Path(sweep_dir) / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(Path(sweep_dir) / STATE_FILE)


def pid_alive(pid: Optional[int], host: Optional[str]) -> bool:
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
    counts = count([])
    best = None
    journal = Path(sweep_dir) / JOURNAL
    if journal.exists():
        study = open_study(journal, state["sweep_id"], state["modes"])
        trials = study.get_trials(deepcopy=False)
        counts = count(outcome_of_optuna(t.state.name) for t in trials)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done:
            pick = study.best_trials[0]  # the best trial; with several objectives, a Pareto-optimal one
            best = (pick.number, list(pick.values), dict(pick.params))
    status = SweepStatus(state.get("status", SweepStatus.RUNNING))
    alive = pid_alive(state.get("driver_pid"), state.get("driver_host"))
    if status == SweepStatus.RUNNING and not alive and state.get("driver_host") == socket.gethostname():
        status = SweepStatus.DEAD
    return SweepInfo(state["sweep_id"], Path(sweep_dir), state["name"], status, counts, state["num_trials"],
                     state["metrics"], state["modes"], best, state.get("driver_pid") if alive else None)


def stop_sweep(sweep_dir: Path) -> str:
    """Ask a running sweep's driver to stop gracefully (SIGINT: Tune saves its
    state, unfinished trials are closed as KILLED); `sweep resume` continues it."""
    state = read_state(sweep_dir)
    pid, host = state.get("driver_pid"), state.get("driver_host")
    if state.get("status") != SweepStatus.RUNNING:
        raise LaunchError(f"sweep {state['sweep_id']} is not running (status {state.get('status')})")
    if host != socket.gethostname():
        raise LaunchError(f"sweep {state['sweep_id']} runs on {host}; stop it there")
    if not pid_alive(pid, host):
        raise LaunchError(f"sweep {state['sweep_id']}: its driver (pid {pid}) is gone; `sweep resume {state['sweep_id']}` continues it")
    os.kill(pid, signal.SIGINT)
    return f"sent SIGINT to the driver of {state['sweep_id']} (pid {pid}); it saves its state and exits"
