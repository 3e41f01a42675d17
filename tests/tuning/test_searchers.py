"""OptunaSweepSearcher against a real Optuna journal, without a Ray cluster:
Tune's hooks (suggest, on_trial_result, on_trial_complete) are called
directly, as Tune's controller would."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuning.experiments import FINAL_KEY, TRIAL_KEY
from tuning.searchers import ORPHAN_ATTR, SAMPLERS, TUNE_ID_ATTR, OptunaSweepSearcher, mark_orphans, open_study, sample
from tuning.config import SAMPLER_NAMES
from tuning.space import Choice, Condition, Grid, IntRange, LogUniform, Uniform

STUDY = "study"

SPACE = {
    "model.ind": Choice((0, 1, 2)),
    "model.step_size": LogUniform(0.03, 0.3),
    "train.n_iterations": IntRange(1, 3),
    "train.clean_coef": Uniform(0.5, 1.0),
}
GRID_SPACE = {"model.ind": Grid((0, 1, 2)), "train.clean_coef": Choice((0.1, 0.5, 1.0))}
CONDITIONAL = {
    "model.ind": Choice((0, 1, 2)),
    "train.clean_coef": Uniform(0.5, 1.0, when=Condition("model.ind", (1, 2))),
    "train.n_iterations": IntRange(1, 3),
    "model.step_size": LogUniform(0.03, 0.3, when=Condition("train.n_iterations", (2,))),
}


def make(tmp_path: Path, space=SPACE, metrics=("val_acc",), modes=("max",), sampler="tpe", seed=0,
         journal: str = "optuna.journal") -> OptunaSweepSearcher:
    return OptunaSweepSearcher(space, list(metrics), list(modes), sampler, seed, tmp_path / journal, STUDY)


def load(tmp_path: Path, journal: str = "optuna.journal") -> optuna.Study:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(tmp_path / journal))))


def objective(params: dict) -> float:
    """A smooth fake objective over the sampled values."""
    return (0.1 * params.get("model.ind", 0) + params.get("train.clean_coef", 0.7)
            - abs(params.get("model.step_size", 0.1) - 0.1) + 0.01 * params.get("train.n_iterations", 1))


def final(params: dict, **extra: float) -> dict:
    return {"val_acc": objective(params), FINAL_KEY: True, "config": params, **extra}


def test_is_a_tune_searcher(tmp_path: Path) -> None:
    assert isinstance(make(tmp_path), Searcher)
    assert set(SAMPLERS.names()) == set(SAMPLER_NAMES)


def test_suggest_returns_params_and_the_trial_number(tmp_path: Path) -> None:
    s = make(tmp_path)
    configs = [s.suggest(f"t{i}") for i in range(3)]
    assert [c[TRIAL_KEY] for c in configs] == [0, 1, 2]
    for c in configs:
        assert set(c) == set(SPACE) | {TRIAL_KEY}
        assert c["model.ind"] in (0, 1, 2)
        assert 0.03 <= c["model.step_size"] <= 0.3 and 0.5 <= c["train.clean_coef"] <= 1.0
        assert c["train.n_iterations"] in (1, 2, 3)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 3
    assert [t.user_attrs[TUNE_ID_ATTR] for t in study.trials] == ["t0", "t1", "t2"]
    assert [{k: v for k, v in c.items() if k != TRIAL_KEY} for c in configs] == [t.params for t in study.trials]


def _run(tmp_path: Path, sampler: str, space, n: int, metrics=("val_acc",), modes=("max",), journal="j.journal") -> list[dict]:
    """Suggest and complete n trials one after the other; the suggestions."""
    s = make(tmp_path, space, metrics, modes, sampler, seed=7, journal=journal)
    out = []
    for i in range(n):
        config = s.suggest(f"t{i}")
        params = {k: v for k, v in config.items() if k != TRIAL_KEY}
        result = {"val_acc": objective(params), "val_clean_acc": 1 - objective(params) / 3, FINAL_KEY: True}
        s.on_trial_complete(f"t{i}", result)
        out.append(config)
    return out


# Enough trials that the model-based samplers leave their random start-up phase
# (TPE and GP: 10 trials; CMA-ES: one generation of its population).
SAMPLER_CASES = [
    ("tpe", SPACE, 13, ("val_acc",), ("max",)),
    ("random", SPACE, 6, ("val_acc",), ("max",)),
    ("gp", SPACE, 11, ("val_acc",), ("max",)),
    ("cmaes", SPACE, 10, ("val_acc",), ("max",)),
    ("nsga2", SPACE, 8, ("val_acc", "val_clean_acc"), ("max", "min")),
    ("grid", GRID_SPACE, 8, ("val_acc",), ("max",)),  # 8 of 9: the last one is test_grid_exhausted_...
    ("tpe", SPACE, 13, ("val_acc", "val_clean_acc"), ("max", "max")),
]


@pytest.mark.parametrize("sampler,space,n,metrics,modes", SAMPLER_CASES,
                         ids=[f"{c[0]}-{len(c[3])}obj" for c in SAMPLER_CASES])
def test_same_seed_same_suggestions(tmp_path: Path, sampler: str, space, n: int, metrics, modes) -> None:
    a = _run(tmp_path, sampler, space, n, metrics, modes, journal="a.journal")
    b = _run(tmp_path, sampler, space, n, metrics, modes, journal="b.journal")
    assert a == b
    assert len({tuple(sorted(c.items())) for c in a}) > 1, "the sampler drew the same configuration every time"
    study = load(tmp_path, "a.journal")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n
    if sampler == "grid":  # the grid enumerates distinct configurations
        assert len({(c["model.ind"], c["train.clean_coef"]) for c in a}) == n


def test_grid_exhausted_the_last_configuration_is_told_without_error(tmp_path: Path) -> None:
    """A grid sweep may run exactly the grid (the spec allows num_trials ==
    grid size). Optuna's GridSampler calls study.stop() when its last
    configuration finishes, which raises outside study.optimize; telling the
    last trial must not raise into Tune's controller."""
    s = make(tmp_path, GRID_SPACE, sampler="grid")
    configs = []
    for i in range(9):
        config = s.suggest(f"t{i}")
        configs.append(config)
        s.on_trial_complete(f"t{i}", final(config))  # the 9th raised RuntimeError: `Study.stop` is supposed to be ...
    assert sorted((c["model.ind"], c["train.clean_coef"]) for c in configs) == sorted(
        (i, cc) for i in (0, 1, 2) for cc in (0.1, 0.5, 1.0))
    assert [t.state for t in load(tmp_path).trials] == [TrialState.COMPLETE] * 9


def test_grid_exhausted_with_concurrent_trials(tmp_path: Path) -> None:
    """Two trials at a time, as max_concurrent 2: the last one to finish is told without error."""
    s = make(tmp_path, {"model.ind": Grid((0, 2)), "train.clean_coef": Choice((0.5, 1.0))}, sampler="grid")
    a, b = s.suggest("a"), s.suggest("b")
    s.on_trial_complete("a", final(a))
    c = s.suggest("c")
    s.on_trial_complete("b", final(b))
    d = s.suggest("d")
    s.on_trial_complete("c", final(c))
    s.on_trial_complete("d", final(d))
    assert len({(x["model.ind"], x["train.clean_coef"]) for x in (a, b, c, d)}) == 4
    assert [t.state for t in load(tmp_path).trials] == [TrialState.COMPLETE] * 4


def test_different_seeds_differ(tmp_path: Path) -> None:
    a = [make(tmp_path, seed=1, journal="a.journal").suggest(f"t{i}") for i in range(1)]
    b = [make(tmp_path, seed=2, journal="b.journal").suggest(f"t{i}") for i in range(1)]
    assert a != b


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "nsga2"])
def test_conditional_parameter_only_when_its_condition_holds(tmp_path: Path, sampler: str) -> None:
    s = make(tmp_path, CONDITIONAL, sampler=sampler, seed=3)
    seen = {"with_cc": 0, "without_cc": 0, "with_ss": 0, "without_ss": 0}
    for i in range(12 if sampler == "gp" else 24):  # GP: 2 model-based draws (each fit takes seconds)
        config = s.suggest(f"t{i}")
        params = {k: v for k, v in config.items() if k != TRIAL_KEY}
        assert "model.ind" in params and "train.n_iterations" in params
        if params["model.ind"] in (1, 2):
            assert 0.5 <= params["train.clean_coef"] <= 1.0
            seen["with_cc"] += 1
        else:
            assert "train.clean_coef" not in params
            seen["without_cc"] += 1
        if params["train.n_iterations"] == 2:
            assert 0.03 <= params["model.step_size"] <= 0.3
            seen["with_ss"] += 1
        else:
            assert "model.step_size" not in params
            seen["without_ss"] += 1
        s.on_trial_complete(f"t{i}", final(params))
    assert all(seen.values()), seen  # both branches of both conditions were drawn
    study = load(tmp_path)
    for t in study.trials:  # Optuna holds exactly the drawn parameters
        assert ("train.clean_coef" in t.params) == (t.params["model.ind"] in (1, 2))
        assert ("model.step_size" in t.params) == (t.params["train.n_iterations"] == 2)


def test_sample_follows_the_space_order(tmp_path: Path) -> None:
    study = open_study(tmp_path / "o.journal", STUDY, ["max"], optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = sample(trial, CONDITIONAL)
    assert list(values) == [k for k in CONDITIONAL if k in values]


# --- telling Optuna ------------------------------------------------------------------------


def test_result_without_final_report_is_pruned(tmp_path: Path) -> None:
    s = make(tmp_path)
    config = s.suggest("a")
    s.on_trial_result("a", {"val_acc": 0.3, "training_iteration": 1, "config": config})
    s.on_trial_complete("a", {"val_acc": 0.3, "training_iteration": 1, "config": config})
    (t,) = load(tmp_path).trials
    assert t.state == TrialState.PRUNED
    assert t.intermediate_values == {1: 0.3}
    assert t.values in (None, [0.3])  # Optuna keeps a pruned trial's last intermediate value as its value


def test_error_is_fail(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", {"val_acc": 0.3, "training_iteration": 1}, error=True)
    s.on_trial_complete("b", None, error=True)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL, TrialState.FAIL]


def test_non_finite_objective_is_fail(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    s.on_trial_complete("a", {"val_acc": float("nan"), FINAL_KEY: True})
    assert load(tmp_path).trials[0].state == TrialState.FAIL


def test_complete_single_objective(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    s.on_trial_complete("a", {"val_acc": 0.75, "val_clean_acc": 0.1, FINAL_KEY: True})
    (t,) = load(tmp_path).trials
    assert t.state == TrialState.COMPLETE and t.values == [0.75]


def test_complete_multi_objective_values_in_metric_order(tmp_path: Path) -> None:
    s = make(tmp_path, metrics=("val_pgd_first_acc", "val_clean_acc", "train_loss"), modes=("max", "max", "min"), sampler="nsga2")
    s.suggest("a")
    s.on_trial_complete("a", {"train_loss": 0.5, "val_clean_acc": 0.9, "val_pgd_first_acc": 0.2, "val_acc": 0.8, FINAL_KEY: True})
    study = load(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE", "MINIMIZE"]
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE and t.values == [0.2, 0.9, 0.5]


def test_multi_objective_missing_metric_is_fail(tmp_path: Path) -> None:
    s = make(tmp_path, metrics=("val_acc", "val_clean_acc"), modes=("max", "max"), sampler="nsga2")
    s.suggest("a")
    s.on_trial_complete("a", {"val_acc": 0.8, FINAL_KEY: True})
    assert load(tmp_path).trials[0].state == TrialState.FAIL


def test_intermediate_values_only_for_one_objective_and_not_the_final_report(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    for step, v in ((1, 0.2), (2, 0.4), (2, 0.9)):  # a repeated step (a restored trial) is not overwritten
        s.on_trial_result("a", {"val_acc": v, "training_iteration": step})
    s.on_trial_result("a", {"val_acc": 0.5, "training_iteration": 3, FINAL_KEY: True})
    s.on_trial_complete("a", {"val_acc": 0.5, "training_iteration": 3, FINAL_KEY: True})
    (t,) = load(tmp_path).trials
    assert t.intermediate_values == {1: 0.2, 2: 0.4} and t.values == [0.5]


def test_completing_twice_does_not_raise(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    s.on_trial_complete("a", {"val_acc": 0.75, FINAL_KEY: True})
    s.on_trial_complete("a", {"val_acc": 0.1, FINAL_KEY: True})  # e.g. re-run after a crash
    s.on_trial_complete("a", None, error=True)
    (t,) = load(tmp_path).trials
    assert t.state == TrialState.COMPLETE and t.values == [0.75]


def test_unknown_trial_is_ignored(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    s.on_trial_complete("never-suggested", {"val_acc": 0.75, FINAL_KEY: True})
    assert load(tmp_path).trials[0].state == TrialState.RUNNING


def test_a_fresh_searcher_finds_the_trial_by_config_or_tune_id(tmp_path: Path) -> None:
    """After a resume the searcher's in-memory map is empty: the trial number
    comes from the result's config, or from the Tune id stored in Optuna."""
    first = make(tmp_path)
    a, _ = first.suggest("a"), first.suggest("b")
    second = make(tmp_path)
    second.on_trial_complete("a", {"val_acc": 0.5, FINAL_KEY: True, "config": a})
    second.on_trial_complete("b", {"val_acc": 0.6, FINAL_KEY: True})
    assert [t.values for t in load(tmp_path).trials] == [[0.5], [0.6]]


# --- orphans and pickling --------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "nsga2", "grid"])
def test_orphan_is_handed_out_again_with_its_number_and_params(tmp_path: Path, sampler: str) -> None:
    space = GRID_SPACE if sampler == "grid" else CONDITIONAL
    before = make(tmp_path, space, sampler=sampler)
    done = before.suggest("a")
    before.on_trial_complete("a", final(done))
    orphan = before.suggest("b")  # asked; the driver died before Tune saved trial b
    running = before.suggest("c")  # Tune knows this one
    assert mark_orphans(tmp_path / "optuna.journal", STUDY, ["max"], {"a", "c"}) == [orphan[TRIAL_KEY]]

    after = make(tmp_path, space, sampler=sampler)  # the resumed driver's searcher
    again = after.suggest("b2")
    assert again == orphan
    study = load(tmp_path)
    assert len(study.trials) == 3  # no new Optuna trial was asked
    t = study.trials[orphan[TRIAL_KEY]]
    assert t.user_attrs[TUNE_ID_ATTR] == "b2" and t.user_attrs[ORPHAN_ATTR] is False
    fresh = after.suggest("d")  # the orphan is taken once: the next one is new
    assert fresh[TRIAL_KEY] == 3 and running[TRIAL_KEY] == 2
    after.on_trial_complete("b2", final(again))
    assert load(tmp_path).trials[orphan[TRIAL_KEY]].state == TrialState.COMPLETE


def test_orphan_seen_by_a_searcher_that_was_already_open(tmp_path: Path) -> None:
    s = make(tmp_path)
    orphan = s.suggest("a")
    assert mark_orphans(tmp_path / "optuna.journal", STUDY, ["max"], set()) == [0]
    assert s.suggest("a2") == orphan
    assert len(load(tmp_path).trials) == 1


def test_no_orphans_when_tune_knows_every_running_trial(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.suggest("a")
    assert mark_orphans(tmp_path / "optuna.journal", STUDY, ["max"], {"a"}) == []
    assert s.suggest("b")[TRIAL_KEY] == 1


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "grid"])
def test_pickled_searcher_reopens_the_study(tmp_path: Path, sampler: str) -> None:
    space = GRID_SPACE if sampler == "grid" else SPACE
    s = make(tmp_path, space, sampler=sampler)
    first = s.suggest("a")
    s.on_trial_complete("a", final(first))
    copy = pickle.loads(pickle.dumps(s))
    assert copy._study is None  # the study itself is not pickled
    second = copy.suggest("b")
    assert second[TRIAL_KEY] == 1
    copy.on_trial_complete("b", final(second))
    copy.on_trial_complete("a", {"val_acc": 0.0, FINAL_KEY: True})  # known from before pickling; told already
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    if sampler == "grid":
        assert (first["model.ind"], first["train.clean_coef"]) != (second["model.ind"], second["train.clean_coef"])


def test_save_and_restore_keep_nothing_but_a_note(tmp_path: Path) -> None:
    s = make(tmp_path)
    s.save(str(tmp_path / "ckpt"))
    assert "journal" in (tmp_path / "ckpt").read_text()
    s.restore(str(tmp_path / "ckpt"))
    assert s.set_search_properties("val_acc", "max", {}) is True


def test_every_scheduler_the_spec_accepts_is_registered() -> None:
    import typing

    from tuning.config import SchedulerConfig
    from tuning.schedulers import SCHEDULERS, TIME_ATTR

    names = typing.get_args(typing.get_type_hints(SchedulerConfig)["name"])
    assert sorted(names) == SCHEDULERS.names()
    asha = SCHEDULERS.create("asha", sc=SchedulerConfig(name="asha", grace_period=1), metric="val_acc", mode="max", max_t=4)
    assert asha._time_attr == TIME_ATTR == "epoch"
