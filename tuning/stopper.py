"""Sweep-level budgets that end a sweep early (Tune's stop_all)."""

from __future__ import annotations

from typing import Any, Optional

from ray.tune import Stopper


class BudgetStopper(Stopper):
    """Ends the sweep once too many trials failed or a trial reached the
    target; reads the counts the MLflow callback keeps (after a resume it
    first counts what the store already holds)."""

    def __init__(self, callback: Any, max_failed: Optional[int], target: Optional[float], mode: str):
        self.callback, self.max_failed, self.target, self.mode = callback, max_failed, target, mode

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # never one trial: the schedulers do that

    def stop_all(self) -> bool:
        if self.max_failed is None and self.target is None:
            return False
        cb = self.callback
        cb.ensure_attached()
        if self.max_failed is not None and cb.n_failed >= self.max_failed:
            return True
        if self.target is not None and cb.best is not None:
            return cb.best >= self.target if self.mode == "max" else cb.best <= self.target
        return False
