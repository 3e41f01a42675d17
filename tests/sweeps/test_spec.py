"""The sweep YAML schema: valid files load into typed configs, invalid ones
fail with one line naming file, line, key and what was expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnf.config import ExperimentConfig, TrainConfig
from sweeps.spec import SpecError, load_sweep, parse_sweep
from tests.conftest import EXAMPLES, QUICKSTART, TINY_SWEEP
from tuning.space import Choice, IntRange, LogUniform, Uniform


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_validates(path: Path) -> None:
    loaded = load_sweep(path)
    assert loaded.config.name
    assert loaded.config.space


def test_quickstart_becomes_typed_config() -> None:
    c = load_sweep(QUICKSTART).config
    assert isinstance(c.base, ExperimentConfig)
    assert c.base.train == TrainConfig(epochs=2, batch_size=64, lr=1e-3)
    assert (c.base.data.dataset, c.base.data.n_train, c.base.eval.n_examples) == ("fashion-mnist-sample", 2000, 100)
    assert c.space == {
        "model.ind": Choice((0, 1, 2)),
        "model.step_size": LogUniform(0.03, 0.3),
        "train.n_iterations": IntRange(1, 2),
        "train.clean_coef": Uniform(0.5, 1.0),
    }
    assert (c.search.num_trials, c.search.max_concurrent, c.search.sampler) == (6, 2, "tpe")


def test_yaml_12_float_without_dot_is_a_float() -> None:
    # YAML 1.1 (PyYAML's default) reads 1e-3 as the string "1e-3".
    c = parse_sweep(TINY_SWEEP.replace("    batch_size: 64", "    batch_size: 64\n    lr: 1e-3")).config
    assert c.base.train.lr == pytest.approx(1e-3)


def test_omitted_fields_keep_dataclass_defaults() -> None:
    c = parse_sweep(TINY_SWEEP).config
    assert c.base.model == ExperimentConfig().model
    assert c.base.train.lr == TrainConfig().lr
    assert c.output_dir == "runs" and c.tracking.uri is None


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# (old, new, key in the message, text in the message, line marker or None)
BAD = [
    ("    n_train: 256", "    n_train: 256\n    n_trian: 3", "base.data.n_trian", "did you mean 'n_train'", "n_trian"),
    ("  num_trials: 2", "  num_trails: 2", "search.num_trails", "did you mean 'num_trials'", "num_trails"),
    ("seed: 3", "seed: 3\nsed: 4", "sed", "did you mean 'seed'", "sed:"),
    ("    epochs: 2", "    epochs: two", "base.train.epochs", "valid integer", "epochs: two"),
    ("    epochs: 2", "    epochs: 2.5", "base.train.epochs", "valid integer", "epochs: 2.5"),
    ("    epochs: 2", "    epochs: null", "base.train.epochs", "valid integer", "epochs: null"),
    ("    epochs: 2", "    epochs: 0", "base.train.epochs", "must be >= 1", "epochs: 0"),
    ("    pgd_steps: 2", "    pgd_steps: 2\n    prediction: mean", "base.eval.prediction", "'first', 'last' or 'avg'", "prediction: mean"),
    ("    pgd_steps: 2", "    pgd_steps: 2\n    eps_linf: 8", "base.eval.eps_linf", "[0, 1] pixel units", "eps_linf: 8"),
    ("    pgd_steps: 2", "    pgd_steps: 2\n    eps_grid: [0.05, 2.0]", "base.eval.eps_grid", "[0, 1] pixel units", "eps_grid: [0.05, 2.0]"),
    ("    pgd_steps: 2", "    pgd_steps: 2\n    check_examples: 0", "base.eval.check_examples", "must be positive", "check_examples: 0"),
    ("    dataset: fashion-mnist-sample", "    dataset: fmnist", "base.data.dataset", "fashion-mnist-sample", "dataset: fmnist"),
    ("  train:\n", "  model:\n    ind: 7\n  train:\n", "base.model.ind", "expected one of [0, 1, 2]", "ind: 7"),
    ("experiment: cnnf", "experiment: cnnn", "experiment", "expected one of: cnnf", "experiment: cnnn"),
    ("name: tiny", "name: tiny sweep", "name", "names folders", "name: tiny sweep"),
    ("seed: 3", "seed: 3\nseed: 4", "seed", "duplicate key", "seed: 4"),
    ("{choice: [0, 2]}", "{choice: [0, 5]}", "space.model.ind", "ind=5 is not legal", "model.ind"),
    ("{choice: [0, 2]}", "{choice: []}", "space.model.ind.choice", "non-empty list", "model.ind"),
    ("{choice: [0, 2]}", "{choice: [0, 0]}", "space.model.ind.choice", "distinct", "model.ind"),
    ("{choice: [0, 2]}", "{pick: [0, 2]}", "space.model.ind.pick", "unknown key", "model.ind"),
    ("{choice: [0, 2]}", "{uniform: [0, 2]}", "space.model.ind", "use {int: [low, high]}", "model.ind"),
    ("{choice: [0, 2]}", "{int: [0, 2], log: true}", "space.model.ind.log", "low >= 1", "model.ind"),
    ("{loguniform: [0.05, 0.2]}", "{loguniform: [0.2, 0.05]}", "space.model.step_size.loguniform", "low < high", "step_size"),
    ("{loguniform: [0.05, 0.2]}", "{loguniform: [0.0, 0.2]}", "space.model.step_size.loguniform", "low > 0", "step_size"),
    ("{loguniform: [0.05, 0.2]}", "{loguniform: [0.05, 2.0]}", "space.model.step_size", "must be in (0, 1]", "step_size"),
    ("{loguniform: [0.05, 0.2]}", "{choice: [0.1, fast]}", "space.model.step_size", "does not fit the field's type", "step_size"),
    ("  model.ind:", "  model.indx:", "space.model.indx", "did you mean 'model.ind'", "model.indx"),
    ("  metric: val_acc", "  metric: test_clean_acc", "search.metric", "never drive selection", "metric:"),
    ("  metric: val_acc", "  metric: accuracy", "search.metric", "expected one of: ", "metric:"),
    ("  cpu: 1", "  cpu: 0", "resources.cpu", "must be > 0", "cpu: 0"),
    ("  cpu: 1", "  cpu: 1\n  gpu: 1.5", "resources.gpu", "whole number", "gpu: 1.5"),
    ("    pgd_steps: 2", "    pgd_steps: 2\n   wrong_indent: 1", "", "invalid YAML", "wrong_indent"),
]


@pytest.mark.parametrize("old,new,key,text,marker", BAD, ids=[b[2] or b[3] for b in BAD])
def test_bad_input_names_key_line_and_expectation(old: str, new: str, key: str, text: str, marker: str, write_sweep) -> None:
    assert old in TINY_SWEEP
    bad = TINY_SWEEP.replace(old, new, 1)
    path = write_sweep(bad)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:")
    assert text in message
    if key:
        assert info.value.key == key
    assert info.value.line == _line_of(bad, marker), message


def test_plain_cnn_with_feedback_iterations_is_rejected_on_its_line() -> None:
    bad = TINY_SWEEP.replace("  train:\n", "  model:\n    arch: cnn_fmnist_std\n  train:\n    n_iterations: 1\n")
    bad = bad.replace("  model.ind: {choice: [0, 2]}\n", "")
    with pytest.raises(SpecError, match=r"base\.train\.n_iterations: must be 0 for the plain CNN") as info:
        parse_sweep(bad, "f.yaml")
    assert info.value.line == _line_of(bad, "n_iterations: 1")


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("name: x\nexperiment: cnnf\n", "space: expected a mapping of at least one parameter"),
        ("experiment: cnnf\nspace: {model.ind: {choice: [0]}}\n", "name: required key is missing"),
        ("name: x\nexperiment: cnnf\nbase: 3\nspace: {model.ind: {choice: [0]}}\n", "base: expected a mapping"),
    ],
)
def test_structural_errors(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=re.escape(needle)):
        parse_sweep(text, "s.yaml")


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: no such file$"):
        load_sweep(tmp_path / "nope.yaml")


def test_a_combination_the_space_allows_must_be_legal(write_sweep) -> None:
    # Each value is legal alone; together they break high_fraction + low_fraction <= 1.
    text = TINY_SWEEP.replace("space:\n  model.ind: {choice: [0, 2]}\n  model.step_size: {loguniform: [0.05, 0.2]}",
                              "space:\n  train.epochs: {int: [1, 3]}\n  train.adv_eps_linf: {choice: [0.0, 0.1]}\n"
                              "  train.adv_steps: {int: [1, 2]}")
    assert parse_sweep(text).config.space  # no cross-field rule among these
    fl = """\
name: bad
experiment: fl
base:
  data: {dataset: mnist}
  model: {arch: cnn_mnist_small}
  train: {n_iterations: 0, epochs: 1}
space:
  selection.high_fraction: {choice: [0.1, 0.5]}
  selection.low_fraction: {choice: [0.3, 0.6]}
search: {metric: val_min_acc, num_trials: 2}
"""
    with pytest.raises(SpecError) as info:
        parse_sweep(fl, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml:8: space: the combination selection.high_fraction=0.5, selection.low_fraction=0.6")
    assert "high_fraction + low_fraction must be <= 1" in message and "\n" not in message


FL_QUOTAS = """\
name: q
experiment: fl
base:
  data: {dataset: mnist}
  model: {arch: cnn_mnist_small}
  train: {n_iterations: 0, epochs: 1}
  selection: {quota_high: 4, quota_medium: 10, quota_low: 16}
space:
SPACE
search: {metric: val_min_acc, num_trials: 2}
"""


@pytest.mark.parametrize("space, key, needle", [
    ("  selection.quota_high: {int: [0, 8]}\n  selection.quota_medium: {int: [4, 16]}",
     "space.selection.quota_high", "selection.quota_high may be drawn as 8 with selection.quota_medium 4"),
    # issue #22: the old fl_quota.yaml space (~30 % of its draws were non-monotone); quota_low 8 is
    # already refused beside the base's quota_medium 10, by the quotas' own check
    ("  selection.quota_medium: {int: [4, 16]}\n  selection.quota_low: {int: [8, 20]}\n  selection.quota_high: {int: [0, 8]}",
     "space.selection.quota_low", "value 8 is not allowed: quota_medium (10) must be <= quota_low (8)"),
    ("  selection.quota_medium: {choice: [6, 12]}\n  selection.quota_low: {choice: [11, 20]}",
     "space.selection.quota_medium", "selection.quota_medium may be drawn as 12 with selection.quota_low 11"),
    ("  selection.quota_low: {choice: [12, 20]}\n  selection.quota_medium: {int: [8, 14]}",
     "space.selection.quota_medium", "selection.quota_medium may be drawn as 14 with selection.quota_low 12"),
    # A conditional quota keeps the base's value when its condition fails.
    ("  selection.equal_quotas: {choice: [false, true]}\n  selection.quota_medium: {int: [4, 6], when: {selection.equal_quotas: true}}\n"
     "  selection.quota_high: {int: [4, 8]}",
     "space.selection.quota_high", "selection.quota_high may be drawn as 8 with selection.quota_medium 4"),
    ("  selection.budget: {choice: [50, 100]}\n  selection.quota_low: {int: [16, 20]}",
     "space.selection.quota_low", "explicit quotas are ignored when selection.budget is set"),
    ("  selection.high_ratio: {uniform: [0.0, 1.0]}",
     "space.selection.high_ratio", "the ratios set quotas only with selection.budget"),
], ids=["overlapping-ranges", "old-example", "overlapping-choices", "names-the-lower-quota", "conditional", "with-a-budget",
        "ratios-alone"])
def test_an_fl_space_cannot_draw_non_monotone_quotas(space: str, key: str, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_sweep(FL_QUOTAS.replace("SPACE", space), "q.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"q.yaml:{_line_of(FL_QUOTAS.replace('SPACE', space), key[6:] + ':')}: {key}: ")
    assert needle in message
    assert "selection.budget" in message or "set budget and vary medium_ratio and high_ratio" in message


def test_an_fl_space_of_ordered_quotas_or_ratios_is_accepted() -> None:
    ordered = "  selection.quota_high: {int: [0, 4]}\n  selection.quota_medium: {int: [4, 10]}\n  selection.quota_low: {choice: [10, 16]}"
    assert len(parse_sweep(FL_QUOTAS.replace("SPACE", ordered)).config.space) == 3
    ratios = "  selection.medium_ratio: {uniform: [0.0, 1.0]}\n  selection.high_ratio: {uniform: [0.0, 1.0]}"
    text = FL_QUOTAS.replace("SPACE", ratios).replace("quota_low: 16}", "quota_low: 16, budget: 500}")
    config = parse_sweep(text).config
    assert config.base.selection.budget == 500 and set(config.space) == {"selection.medium_ratio", "selection.high_ratio"}
