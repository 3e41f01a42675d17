"""Optuna as Tune's search algorithm, seeded, with a crash-safe journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from ray.tune.search.optuna import OptunaSearch

from cnnf.registry import Registry

from tuning.space import ParamSpec, to_optuna

SAMPLERS: Registry[Callable[[int], Any]] = Registry("sampler")


@SAMPLERS.register("tpe")
def _tpe(seed: int) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


@SAMPLERS.register("random")
def _random(seed: int) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


class OptunaSearcher(OptunaSearch):
    """OptunaSearch that skips intermediate results lacking the objective.

    Per-epoch reports need not carry a final-only objective such as
    `val_pgd_first_acc`; plain OptunaSearch raises KeyError on them.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and self.metric not in result:
            return
        super().on_trial_result(trial_id, result)


def create_searcher(
    space: Mapping[str, ParamSpec], metric: str, mode: str, sampler: str, seed: int, journal: Path, study_name: str
) -> OptunaSearcher:
    """TPE (or random) over `space`, its study stored in an Optuna journal file.

    A journal file survives a killed driver and needs no database lock.
    """
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return OptunaSearcher(
        space=to_optuna(space), metric=metric, mode=mode,
        sampler=SAMPLERS.create(sampler, seed=seed), study_name=study_name, storage=storage,
    )
