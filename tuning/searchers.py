"""Optuna as Tune's searcher: seeded samplers, a crash-safe journal, several
objectives, conditional parameters, pruned trials told as pruned, and
trials that survive a killed driver without being asked twice.

Tune names trials by its own ids; the identity of a configuration is its
Optuna trial number, which the searcher puts in the trial's config under
TRIAL_KEY (MLflow runs are keyed by it too). The journal file is the only
state: the searcher object may be pickled (Tune stores it with the
experiment) and reopens the study on first use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ray.tune.search import Searcher

from cnnf.registry import Registry

from tuning.experiments import FINAL_KEY, TRIAL_KEY
from tuning.space import Choice, Grid, IntRange, LogUniform, ParamSpec, Uniform
TUNE_ID_ATTR = "tune_trial_id"
ORPHAN_ATTR = "orphan"  # asked before a crash, never reached Tune's saved state: handed out again

SAMPLERS: Registry[Callable[..., Any]] = Registry("sampler")


@SAMPLERS.register("tpe")
def _tpe(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


@SAMPLERS.register("random")
def _random(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("grid")
def _grid(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    class _TuneGridSampler(optuna.samplers.GridSampler):
        """GridSampler without its study.stop() once the grid is exhausted:
        outside study.optimize that raises, and Tune's num_samples ends the
        sweep anyway."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            pass

    return _TuneGridSampler({k: list(v.values) for k, v in space.items()}, seed=seed)  # type: ignore[union-attr]


@SAMPLERS.register("gp")
def _gp(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)


@SAMPLERS.register("cmaes")
def _cmaes(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    # Categorical parameters are drawn independently (CMA-ES is continuous).
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


@SAMPLERS.register("nsga2")
def _nsga2(seed: int, space: Mapping[str, ParamSpec]) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed)


def open_study(journal: Path, study_name: str, modes: list[str], sampler: Any = None) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    return optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, directions=directions, load_if_exists=True)


def sample(trial: Any, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Define-by-run sampling in the order of `space`; a conditional parameter
    is sampled only when its condition holds on the values drawn before it."""
    values: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.when is not None and not spec.when.holds(values):
            continue
        if isinstance(spec, Uniform):
            values[name] = trial.suggest_float(name, spec.low, spec.high)
        elif isinstance(spec, LogUniform):
            values[name] = trial.suggest_float(name, spec.low, spec.high, log=True)
        elif isinstance(spec, IntRange):
            values[name] = trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, (Choice, Grid)):
            values[name] = trial.suggest_categorical(name, list(spec.values))
        else:  # pragma: no cover - the spec module builds only the kinds above
            raise TypeError(f"unknown parameter spec {spec!r}")
    return values


def mark_orphans(journal: Path, study_name: str, modes: list[str], known_trial_ids: set[str]) -> list[int]:
    """Before a resume: flag RUNNING Optuna trials that Tune's saved state does
    not know (asked just before the driver died). The searcher hands them out
    again instead of asking new ones, so the study keeps exactly one trial per
    configuration. Returns their numbers."""
    from optuna.trial import TrialState

    study = open_study(journal, study_name, modes)
    orphans = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(TUNE_ID_ATTR) not in known_trial_ids:
            study._storage.set_trial_user_attr(t._trial_id, ORPHAN_ATTR, True)
            orphans.append(t.number)
    return orphans


class OptunaSweepSearcher(Searcher):
    """Tune searcher over an Optuna study stored in a journal file."""

    def __init__(self, space: Mapping[str, ParamSpec], metrics: list[str], modes: list[str], sampler: str, seed: int,
                 journal: Path, study_name: str):
        super().__init__(metric=None, mode=None)
        self.space = dict(space)
        self.metrics, self.modes = list(metrics), list(modes)
        self.sampler_name, self.seed = sampler, seed
        self.journal, self.study_name = Path(journal), study_name
        self._study: Any = None
        self._numbers: dict[str, int] = {}

    # pickling: Tune stores the searcher with the experiment; the study is reopened from the journal
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_study"] = None
        return state

    @property
    def study(self) -> Any:
        if self._study is None:
            study = open_study(self.journal, self.study_name, self.modes)
            n = len(study.get_trials(deepcopy=False))
            # Reopened with trials in it (a resume): a sampler seeded as at launch
            # would replay the launch's draws and repeat configurations, so its
            # seed moves on with the number of trials. The grid sampler keeps the
            # launch seed: trial k is the k-th point of the grid it shuffled.
            seed = self.seed if n == 0 or self.sampler_name == "grid" else (self.seed + 7919 * n) % 2**31
            study.sampler = SAMPLERS.create(self.sampler_name, seed=seed, space=self.space)
            self._study = study
        return self._study

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec: Any) -> bool:
        return True  # the objectives are this searcher's own

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text("state is in the Optuna journal\n")

    def restore(self, checkpoint_path: str) -> None:
        pass

    # Tune hooks ------------------------------------------------------------
    def suggest(self, trial_id: str) -> Optional[dict]:
        import optuna

        study = self.study
        orphan = self._take_orphan()
        trial = optuna.trial.Trial(study, orphan._trial_id) if orphan is not None else study.ask()
        params = sample(trial, self.space)  # an orphan's values come back as they were drawn
        study._storage.set_trial_user_attr(trial._trial_id, TUNE_ID_ATTR, trial_id)
        self._numbers[trial_id] = trial.number
        return {**params, TRIAL_KEY: trial.number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Intermediate values let Optuna see the learning curves (single objective only).
        metric = self.metrics[0]
        if len(self.metrics) == 1 and metric in result and not result.get(FINAL_KEY):
            number = self._number(trial_id, result)
            step = int(result.get("epoch", result.get("training_iteration", 0)))  # the epoch, as the schedulers count
            if number is not None and _finite(result[metric]):
                trial = self.study.get_trials(deepcopy=False)[number]
                if not trial.state.is_finished() and step not in trial.intermediate_values:
                    self.study._storage.set_trial_intermediate_value(trial._trial_id, step, float(result[metric]))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        number = self._number(trial_id, result)
        if number is None:
            return
        values = [result.get(m) for m in self.metrics] if result else []
        if error or not result:
            state, values_ = TrialState.FAIL, None
        elif not result.get(FINAL_KEY):
            state, values_ = TrialState.PRUNED, None  # stopped early: its value is a low-fidelity one
        elif all(_finite(v) for v in values):
            state, values_ = TrialState.COMPLETE, [float(v) for v in values]
        else:
            state, values_ = TrialState.FAIL, None
        self.study.tell(number, values_, state=state, skip_if_finished=True)  # a trial re-run after a crash was told already

    # helpers -----------------------------------------------------------------
    def _number(self, trial_id: str, result: Optional[dict]) -> Optional[int]:
        if trial_id in self._numbers:
            return self._numbers[trial_id]
        config = (result or {}).get("config") or {}
        if TRIAL_KEY in config:
            number = int(config[TRIAL_KEY])
        else:
            number = next((t.number for t in self.study.get_trials(deepcopy=False)
                           if t.user_attrs.get(TUNE_ID_ATTR) == trial_id), None)
        if number is not None:
            self._numbers[trial_id] = number
        return number

    def _take_orphan(self) -> Any:
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(ORPHAN_ATTR):
                self.study._storage.set_trial_user_attr(t._trial_id, ORPHAN_ATTR, False)
                return t
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
