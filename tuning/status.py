"""The status words of a sweep and of its trials, one vocabulary for the
sweep folder, the MLflow runs, the summary and the CLI.

`SweepStatus` is the sweep's (its folder's `sweep.json` and its MLflow
parent run); `TrialOutcome` is how a trial ended, as the summary, `sweep
status` and `sweep report` count it (and a trial run's `trial.state` tag);
`RunStatus` is MLflow's word for a run. Both are `StrEnum`s: each member is its
own word in JSON, in MLflow and on the terminal.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Iterable, Optional


class SweepStatus(StrEnum):
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # every requested trial ended (or a budget stopped the sweep)
    KILLED = "KILLED"  # interrupted (Ctrl-C, `sweep stop`): `sweep resume` continues it
    FAILED = "FAILED"  # the driver raised
    DEAD = "DEAD"  # never stored: RUNNING in the folder, but its driver is gone


class TrialOutcome(StrEnum):
    COMPLETE = "COMPLETE"  # ran to its end
    PRUNED = "PRUNED"  # stopped early by the scheduler
    FAILED = "FAILED"  # raised (after its retries)
    RUNNING = "RUNNING"  # not ended yet
    KILLED = "KILLED"  # interrupted with the sweep; a resume continues it


class RunStatus(StrEnum):
    """MLflow's run statuses, the ones a sweep's runs take."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# Optuna's trial states in these words.
_FROM_OPTUNA = {"COMPLETE": TrialOutcome.COMPLETE, "PRUNED": TrialOutcome.PRUNED, "FAIL": TrialOutcome.FAILED,
                "RUNNING": TrialOutcome.RUNNING, "WAITING": TrialOutcome.RUNNING}


def outcome_of_run(run_status: str, state: Optional[str]) -> TrialOutcome:
    """A trial run's outcome from its MLflow status and its `trial.state` tag."""
    if run_status == RunStatus.FINISHED:
        return TrialOutcome.PRUNED if state == TrialOutcome.PRUNED else TrialOutcome.COMPLETE
    return TrialOutcome(run_status)  # RUNNING, FAILED, KILLED


def outcome_of_optuna(state_name: str) -> TrialOutcome:
    """An Optuna trial state (`TrialState.name`) in these words."""
    return _FROM_OPTUNA[state_name]


def count(outcomes: Iterable[TrialOutcome]) -> dict[TrialOutcome, int]:
    """How many trials ended each way (every outcome present, zeros included)."""
    counts = dict.fromkeys(TrialOutcome, 0)
    for o in outcomes:
        counts[o] += 1
    return counts
