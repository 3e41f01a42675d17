"""Search-space distributions and applying sampled values to a typed config.

Parameters are named by their dotted path in the experiment's base config
(`model.ind`, `train.clean_coef`), the same names the YAML uses and MLflow
shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union


@dataclass(frozen=True)
class Condition:
    """Sample a parameter only when an earlier parameter took one of `values`;
    otherwise the base config's value stays (and the parameter is not logged)."""

    parent: str
    values: tuple[Any, ...]

    def holds(self, sampled: Mapping[str, Any]) -> bool:
        return self.parent in sampled and sampled[self.parent] in self.values


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    when: Optional[Condition] = None


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float
    when: Optional[Condition] = None


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False
    when: Optional[Condition] = None


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]
    when: Optional[Condition] = None


@dataclass(frozen=True)
class Grid:
    """Values that a grid sampler enumerates exhaustively (other samplers treat them as a choice)."""

    values: tuple[Any, ...]
    when: Optional[Condition] = None


ParamSpec = Union[Uniform, LogUniform, IntRange, Choice, Grid]


def grid_size(space: Mapping[str, ParamSpec]) -> int:
    """Configurations of a grid over categorical parameters (choice or grid)."""
    n = 1
    for spec in space.values():
        n *= len(spec.values)  # type: ignore[union-attr]
    return n


def optuna_distribution(spec: ParamSpec) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(spec, Uniform):
        return FloatDistribution(spec.low, spec.high)
    if isinstance(spec, LogUniform):
        return FloatDistribution(spec.low, spec.high, log=True)
    if isinstance(spec, IntRange):
        return IntDistribution(spec.low, spec.high, step=spec.step, log=spec.log)
    return CategoricalDistribution(spec.values)


def boundary_values(spec: ParamSpec) -> list[Any]:
    """Values every config in the space must accept: both ends, or every choice."""
    if isinstance(spec, (Choice, Grid)):
        return list(spec.values)
    return [spec.low, spec.high]


def to_optuna(space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Optuna distributions, keyed by the dotted parameter names."""
    return {name: optuna_distribution(spec) for name, spec in space.items()}


def field_paths(config: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a nested dataclass instance."""
    paths: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            paths += field_paths(value, f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The sampled values, without the sweep's bookkeeping keys (`_trial`, the trial number)."""
    return {k: v for k, v in params.items() if not k.startswith("_")}


def apply_params(config: Any, params: Mapping[str, Any]) -> Any:
    """Return `config` with each dotted path set, rebuilt with dataclasses.replace.

    Every rebuilt dataclass re-runs its own validation.
    """
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    for path, value in public_params(params).items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = apply_params(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)
