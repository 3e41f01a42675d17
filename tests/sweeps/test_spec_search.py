"""The sweep YAML's search features: samplers, several objectives, grid
parameters, conditional (`when:`) parameters, schedulers, budgets and
replicates. Every error is one line: FILE:LINE: KEY: what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.spec import SpecError, load_sweep, parse_sweep
from tests.conftest import TINY_SWEEP
from tuning.config import SAMPLER_NAMES
from tuning.space import Choice, Condition, Grid, IntRange

SEARCH = "search:\n  metric: val_acc\n  num_trials: 2\n  max_concurrent: 2\n"
SPACE = "space:\n  model.ind: {choice: [0, 2]}\n  model.step_size: {loguniform: [0.05, 0.2]}\n"
assert SEARCH in TINY_SWEEP and SPACE in TINY_SWEEP


def sweep_text(search: str = "", space: str | None = None, extra: str = "") -> str:
    """TINY_SWEEP with the search block extended by `search` lines (indented
    two spaces), the space replaced, and top-level `extra` blocks added."""
    text = TINY_SWEEP.replace(SEARCH, SEARCH + search)
    if space is not None:
        text = text.replace(SPACE, "space:\n" + space)
    return text + extra


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def expect_error(write_sweep, text: str, key: str, needle: str, marker: str) -> SpecError:
    """The file fails with one line `<path>:<line of marker>: <key>: ...needle...`."""
    path = write_sweep(text)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message, message
    line = line_of(text, marker)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert info.value.key == key and info.value.line == line
    assert needle in message, message
    return info.value


# --- samplers ------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_each_sampler_validates(sampler: str) -> None:
    if sampler == "grid":  # the grid enumerates values: categorical parameters only
        text = sweep_text("  sampler: grid\n", "  model.ind: {grid: [0, 2]}\n  model.step_size: {choice: [0.05, 0.2]}\n")
    else:
        text = sweep_text(f"  sampler: {sampler}\n")
    c = parse_sweep(text, "s.yaml").config
    assert c.search.sampler == sampler


def test_unknown_sampler_is_rejected(write_sweep) -> None:
    text = sweep_text("  sampler: bayes\n")
    expect_error(write_sweep, text, "search.sampler", "bayes", "sampler: bayes")


# --- several objectives -------------------------------------------------------------


def test_metric_list_with_one_mode_for_all() -> None:
    text = sweep_text().replace("  metric: val_acc\n", "  metric: [val_clean_acc, val_pgd_first_acc]\n  sampler: nsga2\n")
    s = parse_sweep(text, "s.yaml").config.search
    assert s.multi_objective
    assert (s.metrics, s.modes) == (["val_clean_acc", "val_pgd_first_acc"], ["max", "max"])


def test_metric_list_with_a_mode_per_metric() -> None:
    text = sweep_text("  mode: [max, min]\n").replace("  metric: val_acc\n", "  metric: [val_clean_acc, train_loss]\n")
    s = parse_sweep(text, "s.yaml").config.search
    assert (s.metrics, s.modes, s.sampler) == (["val_clean_acc", "train_loss"], ["max", "min"], "tpe")


def test_mode_count_must_match_the_metrics(write_sweep) -> None:
    text = sweep_text("  mode: [max, min, max]\n").replace("  metric: val_acc\n", "  metric: [val_clean_acc, val_pgd_first_acc]\n")
    expect_error(write_sweep, text, "search.mode", "one mode for all metrics or one per metric (2)", "mode: [max, min, max]")


def test_one_metric_with_two_modes_is_rejected(write_sweep) -> None:
    text = sweep_text("  mode: [max, min]\n")
    expect_error(write_sweep, text, "search.mode", "one per metric (1)", "mode: [max, min]")


@pytest.mark.parametrize("sampler", ["cmaes", "grid"])
def test_single_objective_samplers_refuse_several_metrics(sampler: str, write_sweep) -> None:
    space = "  model.ind: {grid: [0, 2]}\n" if sampler == "grid" else None
    text = sweep_text(f"  sampler: {sampler}\n", space).replace("  metric: val_acc\n", "  metric: [val_clean_acc, val_pgd_first_acc]\n")
    error = expect_error(write_sweep, text, "search.sampler", "optimises one objective", f"sampler: {sampler}")
    assert "nsga2" in error.message


def test_duplicate_metrics_are_rejected(write_sweep) -> None:
    text = sweep_text("  sampler: nsga2\n").replace("  metric: val_acc\n", "  metric: [val_acc, val_acc]\n")
    expect_error(write_sweep, text, "search.metric", "distinct", "metric: [val_acc, val_acc]")


def test_each_metric_of_a_list_is_checked(write_sweep) -> None:
    text = sweep_text("  sampler: nsga2\n").replace("  metric: val_acc\n", "  metric: [val_acc, test_clean_acc]\n")
    expect_error(write_sweep, text, "search.metric", "never drive selection", "metric: [val_acc, test_clean_acc]")


# --- the grid sampler ------------------------------------------------------------------


def test_grid_sampler_with_grid_and_choice_parameters() -> None:
    text = sweep_text("  sampler: grid\n", "  model.ind: {grid: [0, 1, 2]}\n  model.step_size: {choice: [0.05, 0.2]}\n")
    c = parse_sweep(text.replace("num_trials: 2", "num_trials: 6"), "s.yaml").config
    assert c.space == {"model.ind": Grid((0, 1, 2)), "model.step_size": Choice((0.05, 0.2))}
    assert c.search.num_trials == 6


def test_grid_sampler_refuses_continuous_parameters(write_sweep) -> None:
    text = sweep_text("  sampler: grid\n")  # model.step_size is loguniform
    expect_error(write_sweep, text, "space.model.step_size", "the grid sampler enumerates values", "model.step_size:")


def test_grid_sampler_refuses_more_trials_than_the_grid_has(write_sweep) -> None:
    text = sweep_text("  sampler: grid\n", "  model.ind: {grid: [0, 1, 2]}\n  model.step_size: {choice: [0.05, 0.2]}\n")
    text = text.replace("num_trials: 2", "num_trials: 7")
    expect_error(write_sweep, text, "search.num_trials", "the grid has 6 configurations; num_trials must be at most 6", "num_trials: 7")


def test_grid_sampler_refuses_conditional_parameters(write_sweep) -> None:
    space = "  model.ind: {grid: [0, 1, 2]}\n  model.step_size: {choice: [0.05, 0.2], when: {model.ind: 2}}\n"
    text = sweep_text("  sampler: grid\n", space)
    expect_error(write_sweep, text, "space.model.step_size.when", "no conditional parameters", "model.step_size:")


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes", "nsga2"])
def test_grid_values_need_the_grid_sampler(sampler: str, write_sweep) -> None:
    text = sweep_text(f"  sampler: {sampler}\n", "  model.ind: {grid: [0, 2]}\n  model.step_size: {loguniform: [0.05, 0.2]}\n")
    expect_error(write_sweep, text, "space.model.ind", "sampler: grid only", "model.ind:")


def test_grid_with_the_default_sampler_is_rejected(write_sweep) -> None:
    text = sweep_text("", "  model.ind: {grid: [0, 2]}\n")
    expect_error(write_sweep, text, "space.model.ind", "with sampler 'tpe' use {choice: [...]}", "model.ind:")


# --- conditional parameters ------------------------------------------------------------

CONDITIONAL = ("  model.arch: {choice: [cnnf_fmnist_std]}\n  train.n_iterations: {int: [1, 3]}\n"
               "  model.ind: {choice: [0, 1, 2]}\n")


def test_condition_on_an_earlier_choice_and_int() -> None:
    space = (CONDITIONAL + "  train.clean_coef: {uniform: [0.5, 1.0], when: {model.ind: [1, 2]}}\n"
             "  model.step_size: {loguniform: [0.05, 0.2], when: {train.n_iterations: 2}}\n")
    c = parse_sweep(sweep_text("", space), "s.yaml").config
    assert c.space["train.clean_coef"].when == Condition("model.ind", (1, 2))
    assert c.space["model.step_size"].when == Condition("train.n_iterations", (2,))
    assert c.space["model.ind"].when is None
    assert c.space["train.n_iterations"] == IntRange(1, 3)


def test_condition_parent_must_be_listed_earlier(write_sweep) -> None:
    space = ("  train.clean_coef: {uniform: [0.5, 1.0], when: {model.ind: 1}}\n"
             "  model.ind: {choice: [0, 1, 2]}\n")
    text = sweep_text("", space)
    error = expect_error(write_sweep, text, "space.train.clean_coef.when.model.ind", "listed before this one", "train.clean_coef:")
    assert "listed before: none" in error.message


BAD_CONDITIONS = [  # (space, key in the message, text in the message)
    ("  model.ind: {choice: [0, 1, 2]}\n  train.clean_coef: {uniform: [0.5, 1.0], when: {train.n_iterations: 1}}\n",
     "space.train.clean_coef.when.train.n_iterations", "listed before: model.ind"),
    ("  model.ind: {choice: [0, 2]}\n  train.clean_coef: {uniform: [0.5, 1.0], when: {model.ind: [1]}}\n",
     "space.train.clean_coef.when.model.ind", "values [1] are not among model.ind's values [0, 2]"),
    ("  train.n_iterations: {int: [1, 3]}\n  train.clean_coef: {uniform: [0.5, 1.0], when: {train.n_iterations: 5}}\n",
     "space.train.clean_coef.when.train.n_iterations", "outside train.n_iterations's range [1, 3]"),
    ("  model.step_size: {loguniform: [0.05, 0.2]}\n  train.clean_coef: {uniform: [0.5, 1.0], when: {model.step_size: 0.1}}\n",
     "space.train.clean_coef.when.model.step_size", "is continuous"),
]


@pytest.mark.parametrize("space,key,needle", BAD_CONDITIONS,
                         ids=["parent-not-listed-before", "value-not-a-choice", "value-outside-int-range", "continuous-parent"])
def test_bad_condition_is_rejected(write_sweep, space: str, key: str, needle: str) -> None:
    expect_error(write_sweep, sweep_text("", space), key, needle, "train.clean_coef:")


def test_condition_with_two_parents_is_rejected(write_sweep) -> None:
    space = ("  model.ind: {choice: [0, 1]}\n  train.n_iterations: {int: [1, 2]}\n"
             "  train.clean_coef: {uniform: [0.5, 1.0], when: {model.ind: 1, train.n_iterations: 1}}\n")
    expect_error(write_sweep, sweep_text("", space), "space.train.clean_coef.when", "one earlier parameter", "train.clean_coef:")


# --- schedulers -------------------------------------------------------------------------

SCHEDULER = "scheduler:\n  name: asha\n  grace_period: 1\n  reduction_factor: 2\n"


def test_asha_on_a_per_epoch_objective() -> None:
    c = parse_sweep(sweep_text(extra=SCHEDULER), "s.yaml").config
    assert (c.scheduler.name, c.scheduler.grace_period, c.scheduler.reduction_factor) == ("asha", 1, 2)
    assert c.scheduler_metric == ("val_acc", "max")


def test_asha_on_a_final_only_objective_is_rejected(write_sweep) -> None:
    text = sweep_text(extra=SCHEDULER).replace("  metric: val_acc\n", "  metric: val_min_acc\n")
    error = expect_error(write_sweep, text, "search.metric", "reported only at the end", "metric: val_min_acc")
    assert "scheduler.metric" in error.message and "val_acc" in error.message


def test_scheduler_metric_val_acc_with_a_final_only_objective(write_sweep) -> None:
    text = (sweep_text(extra=SCHEDULER + "  metric: val_acc\n")
            .replace("  metric: val_acc\n  num_trials", "  metric: val_min_acc\n  num_trials"))
    # val_acc is not an objective here, so its direction must be given
    expect_error(write_sweep, text, "scheduler.metric", "set scheduler.mode", "metric: val_acc")
    c = parse_sweep(text + "  mode: min\n", "s.yaml").config
    assert c.search.metrics == ["val_min_acc"] and c.scheduler_metric == ("val_acc", "min")


def test_final_only_scheduler_metric_is_rejected(write_sweep) -> None:
    text = sweep_text(extra=SCHEDULER + "  metric: val_min_acc\n")
    expect_error(write_sweep, text, "scheduler.metric", "reported only at the end", "metric: val_min_acc")


def test_test_metric_as_scheduler_metric_is_rejected(write_sweep) -> None:
    text = sweep_text(extra=SCHEDULER + "  metric: test_clean_acc\n")
    expect_error(write_sweep, text, "scheduler.metric", "never drive selection", "metric: test_clean_acc")


def test_unknown_scheduler_is_rejected(write_sweep) -> None:
    text = sweep_text(extra="scheduler:\n  name: pbt\n")
    expect_error(write_sweep, text, "scheduler.name", "pbt", "name: pbt")


def test_scheduler_with_several_objectives_needs_a_metric(write_sweep) -> None:
    text = (sweep_text("  sampler: nsga2\n", extra=SCHEDULER)
            .replace("  metric: val_acc\n", "  metric: [val_clean_acc, val_pgd_first_acc]\n"))
    expect_error(write_sweep, text, "scheduler.metric", "name it when search.metric lists several", "scheduler:")
    ok = parse_sweep(text + "  metric: val_acc\n  mode: max\n", "s.yaml").config
    assert ok.scheduler_metric == ("val_acc", "max")


# --- budgets and replicates ------------------------------------------------------------


def test_budget_target_with_one_objective() -> None:
    c = parse_sweep(sweep_text(extra="budget:\n  target: 0.5\n  max_failed_trials: 1\n"), "s.yaml").config
    assert (c.budget.target, c.budget.max_failed_trials) == (0.5, 1)


def test_budget_target_with_several_objectives_is_rejected(write_sweep) -> None:
    text = (sweep_text("  sampler: nsga2\n", extra="budget:\n  target: 0.5\n")
            .replace("  metric: val_acc\n", "  metric: [val_clean_acc, val_pgd_first_acc]\n"))
    expect_error(write_sweep, text, "budget.target", "single objective", "target: 0.5")


def test_budget_max_failed_trials_zero_is_rejected(write_sweep) -> None:
    expect_error(write_sweep, sweep_text(extra="budget:\n  max_failed_trials: 0\n"), "budget.max_failed_trials", "must be >= 1",
                 "max_failed_trials: 0")


@pytest.mark.parametrize("value", [2, 3])
def test_replicates_accepted(value: int) -> None:
    assert parse_sweep(sweep_text(f"  replicates: {value}\n"), "s.yaml").config.search.replicates == value


def test_replicates_zero_is_rejected(write_sweep) -> None:
    expect_error(write_sweep, sweep_text("  replicates: 0\n"), "search.replicates", "must be >= 1", "replicates: 0")


def test_max_failures_negative_is_rejected(write_sweep) -> None:
    expect_error(write_sweep, sweep_text("  max_failures: -1\n"), "search.max_failures", "must be >= 0", "max_failures: -1")


def test_transfer_from_cnn_validates_and_is_refused_for_a_plain_cnn(write_sweep) -> None:
    ok = TINY_SWEEP.replace("    batch_size: 64", "    batch_size: 64\n    init_from_cnn: true")
    assert parse_sweep(ok, "s.yaml").config.base.train.init_from_cnn is True
    bad = ok.replace("  train:\n", "  model:\n    arch: cnn_fmnist_std\n  train:\n    n_iterations: 0\n")
    bad = bad.replace("  model.ind: {choice: [0, 2]}\n", "")
    expect_error(write_sweep, bad, "base.train.init_from_cnn", "is itself the plain CNN", "init_from_cnn: true")


def test_spec_file_path_is_in_the_error(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "my sweep.yaml"
    path.parent.mkdir()
    path.write_text(sweep_text("  replicates: 0\n"))
    with pytest.raises(SpecError, match=r"my sweep\.yaml:\d+: search\.replicates: must be >= 1"):
        load_sweep(path)
