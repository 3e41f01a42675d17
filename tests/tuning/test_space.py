"""Search-space helpers: dotted parameter paths onto typed configs, Optuna distributions."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cnnf.config import ConfigError, ExperimentConfig
from tuning.space import Choice, IntRange, LogUniform, Uniform, apply_params, boundary_values, field_paths, to_optuna


def test_apply_params_rebuilds_nested_frozen_configs() -> None:
    base = ExperimentConfig()
    cfg = apply_params(base, {"model.ind": 2, "train.clean_coef": 0.5, "eval.prediction": "last"})
    assert (cfg.model.ind, cfg.train.clean_coef, cfg.eval.prediction) == (2, 0.5, "last")
    assert cfg.data == base.data and cfg.model.arch == base.model.arch
    assert base.model.ind == 0  # the base is untouched


def test_apply_params_revalidates() -> None:
    with pytest.raises(ConfigError, match="ind=4 is not legal"):
        apply_params(ExperimentConfig(), {"model.ind": 4})


def test_apply_params_unknown_field() -> None:
    with pytest.raises(TypeError):
        apply_params(ExperimentConfig(), {"model.nope": 1})


def test_field_paths_cover_every_leaf() -> None:
    paths = field_paths(ExperimentConfig())
    assert {"model.ind", "model.step_size", "train.n_iterations", "train.clean_coef", "eval.eps_linf"} <= set(paths)
    assert "model" not in paths


def test_to_optuna_and_boundaries() -> None:
    space = {"a": Uniform(0.1, 0.9), "b": LogUniform(0.01, 1.0), "c": IntRange(1, 8, 1, True), "d": Choice((0, 1, 2))}
    dists = to_optuna(space)
    assert dists["a"] == FloatDistribution(0.1, 0.9)
    assert dists["b"] == FloatDistribution(0.01, 1.0, log=True)
    assert dists["c"] == IntDistribution(1, 8, log=True)
    assert dists["d"] == CategoricalDistribution((0, 1, 2))
    assert boundary_values(space["a"]) == [0.1, 0.9] and boundary_values(space["d"]) == [0, 1, 2]
